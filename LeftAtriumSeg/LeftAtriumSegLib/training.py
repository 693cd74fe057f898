"""Training of the 2.5D U-Net, with case-wise k-fold cross-validation.

Data come as folders in the Medical Segmentation Decathlon layout (``dataset.json``,
``imagesTr/``, ``labelsTr/``). Every case is brought into the model frame once and kept in
memory; each view's network is trained on its own slicing of it (or, with
``random_orientation``, on every slicing, transposed and flipped), with batches of random crops
of slice stacks, rotated, scaled and intensity-jittered.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from .errors import InputImageError, LeftAtriumSegError
from .evaluation import same_grid
from .inference import predict_probability_map
from .io import atomic_output, create_output_folder, read_image, read_mask
from .model_file import (
    SAFETENSORS_READ_ERRORS,
    ModelConfig,
    parameter_count,
    save_model,
)
from .network import UNet2D
from .onnx_network import load_onnx_networks
from .preprocessing import (
    VIEW_AXES,
    ModelFrame,
    normalise_intensity,
    task02_to_anatomical,
    to_model_frame,
    to_view,
)


@dataclass(frozen=True)
class Case:
    case_id: str
    image_path: Path
    label_path: Path
    # The image's header is Task02_Heart's, which mislabels the axes (preprocessing.task02_to_anatomical).
    task02_headers: bool = False
    # Voxel spacing (x, y, z mm) of the scan where its header states another; the case is also
    # trained on with it (la2018_lge's release writes 0.625 mm between slices where the scans'
    # are 1.25 mm apart: model card).
    respaced_mm: tuple[float, float, float] | None = None


@dataclass
class PreparedCase:
    """A normalised image and its label (0/1, or the mask's share of each voxel), both
    ``(slice, row, column)``: the model frame's ``(Z, Y, X)`` as prepared, a view's order after
    ``in_view``. Crops are centred on voxels whose label is non-zero."""

    case_id: str
    image: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        self.foreground_slices = np.flatnonzero(self.label.any(axis=(1, 2)))  # slices holding atrium

    def in_view(self, view: str) -> PreparedCase:
        """The case sliced along ``view``'s axis (a contiguous copy: crops are read often)."""
        return PreparedCase(self.case_id, np.ascontiguousarray(to_view(self.image, view)),
                            np.ascontiguousarray(to_view(self.label, view)))

    def turned_to_anatomy(self) -> PreparedCase:
        """A Task02_Heart case (model frame) as its anatomy lies: as a scan with correct geometry shows it
        (no copy: training slices every case with ``in_view``, which makes the contiguous arrays)."""
        return PreparedCase(f"{self.case_id} (anatomical)", task02_to_anatomical(self.image),
                            task02_to_anatomical(self.label))


@dataclass(frozen=True)
class TrainingSettings:
    iterations: int = 4800
    batch_size: int = 16
    crop_size: int = 96
    learning_rate: float = 2e-3
    warmup_iterations: int = 100
    foreground_fraction: float = 2 / 3  # share of crops centred on atrium
    max_rotation_deg: float = 15.0
    max_scaling: float = 0.15
    # Intensity jitter: x U(1 - g, 1 + g), then + U(-o, o) in z-score units. The z-score depends
    # on the field of view; cropping a volume from 224 to 160 voxels shifted it by gains of
    # 0.87-0.96 and offsets down to -0.52 (la_003, la_007, la_010), hence the wide offset.
    max_gain_change: float = 0.2
    max_offset: float = 0.6
    # Present each crop in one of the 48 axis orders and flips of the model frame (slicing axis,
    # in-plane transpose, three flips): a header may orient the anatomy any way (Task02_Heart's
    # call sagittal slices axial), and a network that saw one order misses the others. Off:
    # at 2,400 iterations it cut cross-validated Dice from 0.920 to 0.776
    # (docs/model-development.md, "Training variants").
    random_orientation: bool = False
    # Forward pass in bfloat16 where autocast allows (convolutions). Off: the trained model then
    # does not depend on the CPU's instructions (on an AVX2-only CPU autocast emulates bfloat16,
    # 10-14x slower than float32), and 1.6 trained in bfloat16 cross-validated slightly worse.
    bfloat16: bool = False
    # Targets from the mask's share of each model-frame voxel, cut at 0.5 only after each crop's
    # rotation and scaling, where exact halves are rare. Off (1.5): cut when the case is
    # prepared, which keeps all exact halves of la2018_lge's 0.625 mm masks
    # (docs/model-development.md, "Training targets").
    fractional_labels: bool = False
    seed: int = 0
    checkpoint_every: int = 500


# One place in the training list: a case, or presentations of one case that share its place, each
# drawn alike when it comes up.
TrainingEntry = PreparedCase | tuple[PreparedCase, ...]


def _alternatives(entry: TrainingEntry) -> tuple[PreparedCase, ...]:
    return entry if isinstance(entry, tuple) else (entry,)


def resolve_device(device: str) -> torch.device:
    """Where to train: ``auto`` picks CUDA when present; asking for ``cuda`` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    return torch.device(device)


def read_decathlon_cases(folder: str | Path, task02_headers: bool = False,
                         respaced_mm: tuple[float, float, float] | None = None) -> list[Case]:
    """Cases listed under ``training`` in ``folder/dataset.json``; ``task02_headers``: the
    folder's images carry Task02_Heart's headers, which mislabel the axes; ``respaced_mm``: the
    spacing (x, y, z mm) of the scans, where their headers state another."""
    folder = Path(folder)
    if not (folder / "dataset.json").is_file():
        raise LeftAtriumSegError(f"{folder}: no dataset.json (expected the Decathlon layout: dataset.json, imagesTr/, labelsTr/)")
    listing = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    cases = []
    for entry in listing["training"]:
        image_path = (folder / entry["image"]).resolve()
        cases.append(Case(image_path.name.split(".")[0], image_path, (folder / entry["label"]).resolve(),
                          task02_headers, respaced_mm))
    return cases


def label_in_frame(label: sitk.Image, frame: ModelFrame) -> sitk.Image:
    """A mask's non-zero voxels, linearly interpolated into ``frame``: float32, the share of
    each frame voxel inside (0-1)."""
    return to_model_frame(sitk.Cast(label > 0, sitk.sitkFloat32), frame)


def prepare_case(case: Case, config: ModelConfig, fractional_labels: bool = False,
                 respaced: bool = False) -> PreparedCase:
    """A case in the model frame: its normalised image, and its label as 0/1 (uint8), or with
    ``fractional_labels`` as the mask's share of each voxel (float32, 0-1); with ``respaced``,
    read with ``case.respaced_mm`` as its spacing. A file that is missing, corrupt or no usable
    image or mask raises ``InputImageError`` naming it."""
    image, mask = read_image(case.image_path), read_mask(case.label_path)
    if not same_grid(mask, image):
        raise InputImageError(f"{case.label_path}: not on the grid of its image {case.image_path}")
    if respaced:
        image.SetSpacing(case.respaced_mm)
        mask.SetSpacing(case.respaced_mm)
    image = to_model_frame(image, config.frame)
    # Labels go through linear interpolation: smoother than nearest neighbour. A cut at 0.5
    # here keeps every voxel that is exactly half inside, which grows la2018_lge's masks by
    # 2.0 mL (docs/model-development.md, "Training targets"); fractions are cut only after
    # augmentation (``sample_batch``).
    fraction = sitk.GetArrayFromImage(label_in_frame(mask, config.frame))
    label = fraction.clip(0, 1) if fractional_labels else (fraction >= 0.5).astype(np.uint8)
    case_id = f"{case.case_id} (respaced)" if respaced else case.case_id
    return PreparedCase(case_id, normalise_intensity(sitk.GetArrayViewFromImage(image)), label)


def case_groups(cases: Sequence[Case]) -> list[list[Case]]:
    """Group cases that share the same image voxels (la_005 and la_026 in msd_heart).

    Two masks of one image must land in one fold, or validation sees a training image.
    """
    groups: dict[str, list[Case]] = {}
    for case in cases:
        digest = hashlib.sha1(sitk.GetArrayFromImage(sitk.ReadImage(str(case.image_path))).tobytes()).hexdigest()
        groups.setdefault(digest, []).append(case)
    return sorted(groups.values(), key=lambda group: group[0].case_id)


def training_presentations(cases: Sequence[Case], prepared: dict[str, PreparedCase],
                           respaced: dict[str, PreparedCase] | None = None) -> list[TrainingEntry]:
    """What the networks train on: every case as prepared, paired with its ``respaced`` presentation
    (``prepare_case(..., respaced=True)``) where it has one, then every Task02_Heart case again,
    turned to its anatomy. So the model knows each data set both as it comes (mislabelled headers
    included) and as a scan with correct geometry presents it (``docs/model-development.md``). A
    respaced case keeps one place, so the data sets' shares of the crops stay as they were (a
    place of its own cost Task02_Heart's cases accuracy); a turned case has its own, as 1.7 was
    trained."""
    respaced = respaced or {}
    return ([(prepared[case.case_id], respaced[case.case_id]) if case.case_id in respaced else prepared[case.case_id]
             for case in cases]
            + [prepared[case.case_id].turned_to_anatomy() for case in cases if case.task02_headers])


def make_folds(cases: Sequence[Case], folds: int, seed: int = 0) -> list[list[Case]]:
    """Split cases into ``folds`` validation sets, keeping each group of identical images whole."""
    groups = case_groups(cases)
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # place big groups first so fold sizes stay even
    split: list[list[Case]] = [[] for _ in range(folds)]
    for group in groups:
        min(split, key=len).extend(group)
    return [sorted(fold, key=lambda case: case.case_id) for fold in split]


def _random_affine(batch_size: int, rng: np.random.Generator, settings: TrainingSettings, zoom: float) -> torch.Tensor:
    """``(N, 2, 3)`` affine for ``F.affine_grid``: rotation and isotropic scaling about the centre."""
    angles = np.deg2rad(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, batch_size))
    scales = zoom * rng.uniform(1 - settings.max_scaling, 1 + settings.max_scaling, batch_size)
    cos, sin = np.cos(angles) * scales, np.sin(angles) * scales
    zeros = np.zeros(batch_size)
    theta = np.stack([np.stack([cos, -sin, zeros], 1), np.stack([sin, cos, zeros], 1)], 1)
    return torch.from_numpy(theta.astype(np.float32))


def sample_batch(
    cases: Sequence[Sequence[PreparedCase]], config: ModelConfig, settings: TrainingSettings, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random augmented crops: images ``(N, slices, S, S)`` and labels ``(N, 1, S, S)``.

    ``cases[i]`` holds case i sliced one or more ways (``PreparedCase.in_view``); each crop is
    read from one of them at random.
    """
    # Read a larger window than the crop so that rotation and zoom-out find real image.
    window = int(math.ceil(settings.crop_size * math.sqrt(2) * (1 + settings.max_scaling))) + 1
    half_window, half_stack = window // 2, config.slices // 2
    images, labels = [], []
    for _ in range(settings.batch_size):
        slicings = cases[rng.integers(len(cases))]
        # No draw for a single slicing: seeds give the same runs as before random orientation.
        case = slicings[rng.integers(len(slicings))] if len(slicings) > 1 else slicings[0]
        depth, height, width = case.image.shape
        on_atrium = rng.random() < settings.foreground_fraction and len(case.foreground_slices) > 0
        if on_atrium:
            z = int(rng.choice(case.foreground_slices))
            ys, xs = np.nonzero(case.label[z])
            pick = rng.integers(len(ys))
            centre_y, centre_x = ys[pick], xs[pick]
        else:
            z, centre_y, centre_x = rng.integers(depth), rng.integers(height), rng.integers(width)
        z_indices = np.clip(np.arange(z - half_stack, z + half_stack + 1), 0, depth - 1)
        y_indices = np.clip(np.arange(centre_y - half_window, centre_y - half_window + window), 0, height - 1)
        x_indices = np.clip(np.arange(centre_x - half_window, centre_x - half_window + window), 0, width - 1)
        image, label = case.image[np.ix_(z_indices, y_indices, x_indices)], case.label[z][np.ix_(y_indices, x_indices)]
        if settings.random_orientation:
            image, label = _random_flips(image, label, rng)
        images.append(image)
        labels.append(label)
    image_batch = torch.from_numpy(np.stack(images))
    label_batch = torch.from_numpy(np.stack(labels)[:, None].astype(np.float32))
    theta = _random_affine(settings.batch_size, rng, settings, zoom=settings.crop_size / window)
    grid = F.affine_grid(theta, [settings.batch_size, 1, settings.crop_size, settings.crop_size], align_corners=False)
    image_batch = F.grid_sample(image_batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    label_batch = (F.grid_sample(label_batch, grid, mode="bilinear", align_corners=False) >= 0.5).float()
    # Contrast and brightness jitter: scanners and sequences differ in both.
    shape = (settings.batch_size, 1, 1, 1)
    gain = torch.from_numpy(rng.uniform(1 - settings.max_gain_change, 1 + settings.max_gain_change, shape).astype(np.float32))
    offset = torch.from_numpy(rng.uniform(-settings.max_offset, settings.max_offset, shape).astype(np.float32))
    return image_batch * gain + offset, label_batch


def _random_flips(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A stack ``(slices, H, W)`` and its centre slice's label ``(H, W)``, with the stack order,
    rows and columns each reversed or not, and rows and columns swapped or not, at random."""
    flip_stack, flip_rows, flip_columns, transpose = rng.random(4) < 0.5
    image = image[::-1 if flip_stack else 1, ::-1 if flip_rows else 1, ::-1 if flip_columns else 1]
    label = label[::-1 if flip_rows else 1, ::-1 if flip_columns else 1]
    if transpose:
        image, label = image.transpose(0, 2, 1), label.T
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the batch: Dice counters the ~1% foreground."""
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * target).sum()
    soft_dice = (2 * intersection + 1) / (probabilities.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - soft_dice)


def learning_rate_at(iteration: int, settings: TrainingSettings) -> float:
    """Linear warm-up, then cosine decay to zero: ends training at a settled point."""
    if iteration < settings.warmup_iterations:
        return settings.learning_rate * (iteration + 1) / settings.warmup_iterations
    progress = (iteration - settings.warmup_iterations) / max(1, settings.iterations - settings.warmup_iterations)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


CHECKPOINT_FORMAT = "leftatriumseg-checkpoint-1"


def save_checkpoint(path: Path, network: UNet2D, optimiser: torch.optim.Optimizer, rng: np.random.Generator,
                    iterations_done: int, seconds: float, config: ModelConfig, settings: TrainingSettings) -> None:
    """All that one view's training needs to go on exactly where it stopped: the weights, the
    optimiser's moments, the crop sampler's and torch's random states, the iterations done and
    the training seconds so far. Written beside ``path`` first, then renamed."""
    tensors = {f"network.{name}": tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    for index, state in optimiser.state_dict()["state"].items():
        tensors.update({f"optimiser.{index}.{key}": value.detach().cpu().contiguous() for key, value in state.items()})
    tensors["torch_rng_state"] = torch.get_rng_state()
    metadata = {"format": CHECKPOINT_FORMAT, "iterations_done": str(iterations_done), "seconds": f"{seconds:.1f}",
                "numpy_rng_state": json.dumps(rng.bit_generator.state), "config": config.to_json(),
                "settings": json.dumps(settings.__dict__)}
    with atomic_output(path, overwrite=True) as partial:
        save_file(tensors, str(partial), metadata=metadata)


def _checkpoint_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SAFETENSORS_READ_ERRORS as error:
        raise LeftAtriumSegError(f"{path}: not a readable checkpoint ({error}); train into a new folder") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise LeftAtriumSegError(f"{path}: not a checkpoint of this version (format {metadata.get('format')!r}); "
                                 "train into a new folder")
    return metadata


def _damaged_checkpoint(path: Path, error: Exception) -> LeftAtriumSegError:
    # Only a damaged or hand-edited checkpoint gets here; torch's and json's messages can run over lines.
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    return LeftAtriumSegError(f"{path}: damaged checkpoint ({reason}); train into a new folder")


def checkpoint_seconds(path: Path) -> float:
    """Training seconds a view had taken when its checkpoint was written."""
    metadata = _checkpoint_metadata(path)
    try:
        return float(metadata["seconds"])
    except (KeyError, ValueError) as error:
        raise _damaged_checkpoint(path, error) from None


def load_checkpoint(path: Path, network: UNet2D, optimiser: torch.optim.Optimizer, rng: np.random.Generator,
                    config: ModelConfig, settings: TrainingSettings) -> tuple[int, float]:
    """Restore a ``save_checkpoint`` into fresh ``network``, ``optimiser`` and ``rng`` built with the
    same config and settings; returns (iterations done, training seconds so far)."""
    metadata = _checkpoint_metadata(path)
    try:
        same_training = (ModelConfig.from_json(metadata["config"]) == config
                         and json.loads(metadata["settings"]) == json.loads(json.dumps(settings.__dict__)))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _damaged_checkpoint(path, error) from None
    if not same_training:
        raise LeftAtriumSegError(f"{path}: written by a training with other settings; resume needs the same ones")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        network.load_state_dict({name.removeprefix("network."): tensor for name, tensor in tensors.items()
                                 if name.startswith("network.")})
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in tensors.items():
            if name.startswith("optimiser."):
                _, index, key = name.split(".")
                moments.setdefault(int(index), {})[key] = tensor
        optimiser.load_state_dict({"state": moments, "param_groups": optimiser.state_dict()["param_groups"]})
        torch.set_rng_state(tensors["torch_rng_state"])
        rng.bit_generator.state = json.loads(metadata["numpy_rng_state"])
        return int(metadata["iterations_done"]), float(metadata["seconds"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _damaged_checkpoint(path, error) from None


def train_network(
    cases: Sequence[TrainingEntry],
    config: ModelConfig,
    settings: TrainingSettings,
    view: str = "axial",
    checkpoint_path: Path | None = None,
    description: str = "training",
    show_progress: bool = True,
    on_iteration: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
) -> UNet2D:
    """Train a fresh network for ``view`` on model-frame ``cases`` (entries of
    ``training_presentations``), on ``device``; return it in evaluation mode.

    With ``checkpoint_path``, the training state is saved every ``settings.checkpoint_every``
    iterations and at the end; with ``resume`` and a checkpoint there, training goes on from it
    and ends with the weights an uninterrupted run would have.
    """
    if settings.random_orientation:
        slicings = [[case.in_view(name) for case in _alternatives(entry) for name in VIEW_AXES] for entry in cases]
        # Every view then samples the same crops; its own seed makes its network differ.
        seed = settings.seed + list(VIEW_AXES).index(view)
    else:
        slicings, seed = [[case.in_view(view) for case in _alternatives(entry)] for entry in cases], settings.seed
    checkpoint_config = replace(config, views=(view,))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # channels_last: oneDNN's fast path for 2D convolutions on CPUs (1.4x per step here).
    network = config.build_network().to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    first_iteration, seconds_before = 0, 0.0
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        first_iteration, seconds_before = load_checkpoint(checkpoint_path, network, optimiser, rng,
                                                          checkpoint_config, settings)
    started = time.perf_counter() - seconds_before
    network.train()
    bar = tqdm(range(first_iteration, settings.iterations), desc=description, disable=not show_progress,
               dynamic_ncols=True, initial=first_iteration, total=settings.iterations)
    running_loss = None
    for iteration in bar:
        for group in optimiser.param_groups:
            group["lr"] = learning_rate_at(iteration, settings)
        images, labels = sample_batch(slicings, config, settings, rng)
        images = images.to(device, memory_format=torch.channels_last)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=settings.bfloat16):
            logits = network(images)
        loss = dice_bce_loss(logits.float(), labels.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        running_loss = loss.item() if running_loss is None else 0.98 * running_loss + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running_loss:.3f}")
        if on_iteration is not None:
            on_iteration(iteration, loss.item())
        done = iteration + 1
        if checkpoint_path is not None and (done % settings.checkpoint_every == 0 or done == settings.iterations):
            save_checkpoint(checkpoint_path, network, optimiser, rng, done, time.perf_counter() - started,
                            checkpoint_config, settings)
    return network.eval()


def train_networks(
    cases: Sequence[TrainingEntry],
    config: ModelConfig,
    settings: TrainingSettings,
    output_dir: Path,
    description: str = "",
    show_progress: bool = True,
    device: str | torch.device = "cpu",
    resume: bool = False,
) -> tuple[nn.ModuleDict, dict[str, float]]:
    """One network per view of ``config``, and each one's training time in seconds (over all
    the sittings of a resumed run)."""
    networks, seconds = nn.ModuleDict(), {}
    for view in config.views:
        checkpoint_path = output_dir / f"checkpoint_{view}.safetensors"
        networks[view] = train_network(
            cases, config, settings, view, checkpoint_path=checkpoint_path,
            description=f"{description}{view}", show_progress=show_progress, device=device, resume=resume,
        )
        seconds[view] = checkpoint_seconds(checkpoint_path)
    return networks, seconds


def train_model(
    data_folders: Sequence[str | Path],
    output_dir: str | Path,
    config: ModelConfig,
    settings: TrainingSettings,
    folds: int = 0,
    show_progress: bool = True,
    command: str = "",
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    resume: bool = False,
    task02_folders: Sequence[str | Path] = (),
    respaced_folders: dict[str | Path, tuple[float, float, float]] | None = None,
) -> dict:
    """Cross-validate (``folds`` >= 2) or train one model on every case (``folds`` = 0).

    ``task02_folders``: those of ``data_folders`` whose images carry Task02_Heart's headers; their
    cases are trained on as given and turned to their anatomy (``training_presentations``).
    ``respaced_folders``: data folder -> the spacing (x, y, z mm) of its scans, where their headers
    state another; their cases are trained on as given and with that spacing.

    Cross-validation writes, per fold, ``fold_K/model.safetensors`` and the held-out cases'
    probability maps on their own grids, ``probabilities/CASE.nii.gz``, for ``evaluate``
    and the cleanup ablation. Training on every case writes ``model.safetensors``.
    Returns a summary (cases, folds, wall times per view, ``command`` as given) that is also
    written as ``training.json``, first when training starts. ``output_dir`` must be new or
    empty unless ``overwrite`` (an earlier run's model and held-out maps are the user's) or
    ``resume``: go on with the interrupted run there, from its checkpoints, which needs the
    same cases, folds, Task02_Heart and respaced folders, config and settings.
    """
    data = {Path(folder).resolve() for folder in data_folders}
    task02 = {Path(folder).resolve() for folder in task02_folders}
    respaced_mm = {Path(folder).resolve(): tuple(spacing) for folder, spacing in (respaced_folders or {}).items()}
    for named, role in ((task02, "a Task02_Heart folder"), (set(respaced_mm), "a respaced folder")):
        if named - data:
            raise LeftAtriumSegError(f"{sorted(map(str, named - data))[0]}: given as {role} but not among the data folders")
    cases = [case for folder in data_folders
             for case in read_decathlon_cases(folder, task02_headers=Path(folder).resolve() in task02,
                                              respaced_mm=respaced_mm.get(Path(folder).resolve()))]
    output_dir = Path(output_dir)
    record_path = output_dir / "training.json"
    summary: dict = {
        "command": command,
        "data_folders": [str(folder) for folder in data_folders],
        "cases": [case.case_id for case in cases],
        "fold_count": folds,
        "task02_header_folders": [str(folder) for folder in data_folders if Path(folder).resolve() in task02],
        "respaced_folders": {str(folder): list(respaced_mm[Path(folder).resolve()])
                             for folder in data_folders if Path(folder).resolve() in respaced_mm},
        "settings": settings.__dict__,
        "config": json.loads(config.to_json()),
        "parameters": parameter_count(config.build_networks()),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if resume:
        summary = _resumed_summary(record_path, summary)
    else:
        create_output_folder(output_dir)
        if not overwrite and any(output_dir.iterdir()):
            raise LeftAtriumSegError(f"{output_dir}: --output-dir is not empty (use --overwrite to train into it)")
    start = time.perf_counter()
    # Every case is read and checked before the record is written: a bad file stops the run
    # before it writes anything.
    prepared = {case.case_id: prepare_case(case, config, settings.fractional_labels)
                for case in tqdm(cases, desc="preparing", disable=not show_progress)}
    respaced = {case.case_id: prepare_case(case, config, settings.fractional_labels, respaced=True)
                for case in cases if case.respaced_mm}
    summary["preparation_seconds"] = round(time.perf_counter() - start, 1)
    record_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if folds == 0:
        networks, seconds = train_networks(training_presentations(cases, prepared, respaced), config, settings, output_dir,
                                           show_progress=show_progress, device=device, resume=resume)
        save_model(output_dir / "model.safetensors", networks, config)
        summary["training_seconds"] = seconds
    else:
        summary["folds"] = []
        probability_dir = output_dir / "probabilities"
        probability_dir.mkdir(exist_ok=True)
        for index, validation in enumerate(make_folds(cases, folds, settings.seed)):
            held_out = {case.case_id for case in validation}
            fold_dir = output_dir / f"fold_{index}"
            fold_dir.mkdir(exist_ok=True)
            networks, seconds = train_networks(
                training_presentations([case for case in cases if case.case_id not in held_out], prepared, respaced),
                config, settings, fold_dir, description=f"fold {index + 1}/{folds} ", show_progress=show_progress,
                device=device, resume=resume,
            )
            save_model(fold_dir / "model.safetensors", networks, config)
            # The held-out maps come from the saved file, run as segment runs it.
            held_out_networks, _ = load_onnx_networks(fold_dir / "model.safetensors", "cpu")
            for case in validation:
                probability_map = predict_probability_map(sitk.ReadImage(str(case.image_path)), held_out_networks, config)
                sitk.WriteImage(probability_map, str(probability_dir / f"{case.case_id}.nii.gz"), useCompression=True)
            summary["folds"].append({"validation": sorted(held_out), "training_seconds": seconds})
            record_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    # A resumed run's earlier sittings ended unrecorded: only the views' training seconds add them all.
    summary["last_sitting_seconds" if resume else "total_seconds"] = round(time.perf_counter() - start, 1)
    record_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _resumed_summary(record_path: Path, summary: dict) -> dict:
    """The interrupted run's record, with this command added, once it is sure to be the same training."""
    if not record_path.is_file():
        raise LeftAtriumSegError(f"{record_path.parent}: no training.json of an earlier run to resume")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LeftAtriumSegError(f"{record_path}: not a readable training record ({error})") from None
    # Runs recorded before these folders could be named had none.
    record.setdefault("task02_header_folders", [])
    record.setdefault("respaced_folders", {})
    for key in ("cases", "fold_count", "task02_header_folders", "respaced_folders", "config", "settings"):
        if record.get(key) != json.loads(json.dumps(summary[key])):
            raise LeftAtriumSegError(f"{record_path.parent}: the run there had other {key.replace('_', ' ')}; "
                                     "resume needs the same data and options (or train into a new folder)")
    record = {key: value for key, value in record.items() if key not in ("total_seconds", "last_sitting_seconds")}
    return {**record, "resumed_by": [*record.get("resumed_by", []), summary["command"]],
            **{key: summary[key] for key in ("torch_threads", "device")}}
