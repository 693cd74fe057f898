"""Model files: network weights in safetensors, the settings needed to use them in its metadata.

safetensors holds tensors and strings only, so loading a file never executes code from it.
torch is imported only inside the functions that build torch networks: segmenting reads the
weights as numpy arrays for ONNX Runtime (``onnx_network``) and never pays torch's 1.5 s import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open

from .errors import ModelFileError
from .io import atomic_output
from .preprocessing import VIEW_AXES, ModelFrame

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .network import UNet2D

# Format 2: one network per slicing view, tensors named "VIEW.parameter".
FORMAT = "leftatriumseg-model-2"
# Tensors holding a view's int8 ONNX graph (optional): INT8_PREFIX + view.
INT8_PREFIX = "int8_onnx."
# What safetensors raises for a file that is missing, truncated, not safetensors or has a bad header.
SAFETENSORS_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class ModelConfig:
    """Everything beside the weights that inference needs, stored in the model file.

    Attributes
    ----------
    name, version : str
        How results name the model (``label``).
    slices : int
        Neighbouring slices given to each network as channels; odd, a stack around a centre slice.
    features : tuple of int
        Channels per U-Net level.
    frame : ModelFrame
        Orientation and spacing the networks were trained in.
    views : tuple of str
        Slicing directions (keys of ``preprocessing.VIEW_AXES``), one network each.

    Raises
    ------
    ValueError
        For settings no model could have: no views, unknown or repeated views, a ``slices`` that
        is not a positive odd number, no or non-positive channel counts.
    """

    name: str = "LeftAtriumSeg"
    version: str = "0"
    slices: int = 5  # neighbouring slices given to the network as channels
    # Channels per level: few enough that 4,800 iterations train within the hour on a 2-core CPU
    # without bfloat16 instructions; twice as many cost four times the arithmetic for little
    # accuracy (docs/model-development.md, "Versions").
    features: tuple[int, ...] = (8, 16, 32, 64, 128)
    frame: ModelFrame = field(default_factory=ModelFrame)
    # One network per slicing direction (keys of VIEW_AXES); their probabilities are averaged.
    # The first view also localises the atrium.
    views: tuple[str, ...] = ("axial", "coronal", "sagittal")

    def __post_init__(self) -> None:
        # Settings come from model files, which may be damaged or made by anyone: refuse here what
        # would otherwise fail deep inside inference with a traceback.
        unknown = [view for view in self.views if view not in VIEW_AXES]
        if unknown or not self.views or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must be distinct names among {sorted(VIEW_AXES)}, got {list(self.views)}")
        if not _is_count(self.slices) or self.slices % 2 == 0:
            raise ValueError(f"slices must be a positive odd number (a stack around a centre slice), got {self.slices!r}")
        if not self.features or not all(_is_count(channels) for channels in self.features):
            raise ValueError(f"features must be positive channel counts, got {list(self.features)}")

    @property
    def label(self) -> str:
        """How results name the model that made them: ``NAME VERSION``."""
        return f"{self.name} {self.version}"

    @property
    def size_multiple(self) -> int:
        """Slice height and width must be multiples of this (the U-Net's pooling)."""
        return 2 ** (len(self.features) - 1)

    def build_network(self) -> UNet2D:
        """One view's network: a freshly initialised ``UNet2D`` of these settings."""
        from .network import UNet2D  # noqa: PLC0415 - torch, see the module docstring

        return UNet2D(in_channels=self.slices, features=self.features)

    def build_networks(self) -> nn.ModuleDict:
        """A network for each of ``views``, keyed by view."""
        from torch import nn  # noqa: PLC0415

        return nn.ModuleDict({view: self.build_network() for view in self.views})

    def to_json(self) -> str:
        """The settings as JSON text, as the model file's metadata stores them."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Settings from ``to_json``'s text.

        Raises
        ------
        ValueError
            For text that is not JSON, or settings out of range.
        KeyError, TypeError, AttributeError
            For settings missing or of the wrong kind.
        """
        values = json.loads(text)
        frame = values.pop("frame")
        return cls(
            frame=ModelFrame(frame["orientation"], tuple(frame["spacing_mm"])),
            features=tuple(values.pop("features")),
            views=tuple(values.pop("views")),
            **values,
        )


def save_model(path: str | Path, networks: nn.ModuleDict, config: ModelConfig) -> None:
    """Write the views' networks and config to ``path`` (written beside it first, then renamed).

    An existing file at ``path`` is replaced: training rewrites its checkpoints.

    Parameters
    ----------
    path : str or Path
        The ``.safetensors`` file.
    networks : torch.nn.ModuleDict
        One network per view, keyed and ordered as ``config.views``.
    config : ModelConfig

    Raises
    ------
    ValueError
        For networks whose views are not the config's, in its order.
    """
    path = Path(path)
    if list(networks) != list(config.views):
        raise ValueError(f"networks for {list(networks)} do not match the config's views {list(config.views)}")
    from safetensors.torch import save_file  # noqa: PLC0415

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in networks.state_dict().items()}
    with atomic_output(path, overwrite=True) as partial:
        save_file(state, str(partial), metadata={"format": FORMAT, "config": config.to_json()})


def model_file_sha256(path: str | Path) -> str:
    """SHA-256 of a model file: the model's identity, whatever its name and version say."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_model_config(path: str | Path) -> ModelConfig:
    """The settings stored in a model file, without reading its weights.

    Raises
    ------
    ModelFileError
        Naming the file, for anything that is not a readable LeftAtriumSeg model file: a folder,
        a missing file, not safetensors, another format than ``FORMAT``, unreadable settings.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder; give the model file in it (e.g. model.safetensors)")
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except SAFETENSORS_READ_ERRORS as error:
        raise ModelFileError(f"{path}: not a readable safetensors model file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: not a LeftAtriumSeg model in format {FORMAT!r} (found {metadata.get('format')!r})")
    try:
        return ModelConfig.from_json(metadata["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(f"{path}: unreadable model settings ({error})") from None


def read_model(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A model file's settings and tensors, as numpy arrays, without torch.

    Returns
    -------
    config : ModelConfig
    weights : dict of str to ndarray
        Tensors by name, ``VIEW.parameter``.

    Raises
    ------
    ModelFileError
        Naming the file, for anything that is not a readable LeftAtriumSeg model; among them a
        tensor holding NaN or infinite weights (a damaged model would report 0 mL for every scan).
    """
    config = read_model_config(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except SAFETENSORS_READ_ERRORS as error:
        raise ModelFileError(f"{path}: weights do not load ({error})") from None
    # A network with a NaN weight outputs NaN everywhere, which thresholds to an empty mask: a
    # damaged model would report 0 mL for every scan.
    weights = {name: array for name, array in weights.items() if not name.startswith(INT8_PREFIX)}
    broken = [name for name, array in weights.items() if not np.isfinite(array).all()]
    if broken:
        raise ModelFileError(f"{path}: damaged model: tensor {broken[0]!r} holds NaN or infinite weights")
    return config, weights


def read_int8_graphs(path: str | Path) -> dict[str, bytes]:
    """The int8 ONNX graphs a model file holds, by view (``add_int8_graphs``); none: empty.

    Raises
    ------
    ModelFileError
        Naming the file, for a file whose tensors do not load.
    """
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name[len(INT8_PREFIX):]: handle.get_tensor(name).tobytes() for name in handle.keys()
                    if name.startswith(INT8_PREFIX)}
    except SAFETENSORS_READ_ERRORS as error:
        raise ModelFileError(f"{path}: weights do not load ({error})") from None


def add_int8_graphs(path: str | Path, graphs: dict[str, bytes]) -> None:
    """Store int8 ONNX graphs of the views' networks in a model file, beside the float32 weights
    (as uint8 tensors ``int8_onnx.VIEW``); the file is written beside itself first, then renamed.

    Parameters
    ----------
    path : str or Path
        A model file (``save_model``).
    graphs : dict of str to bytes
        One serialised ONNX graph per view (``training.quantization.int8_graphs``).
    """
    from safetensors.numpy import save_file  # noqa: PLC0415

    path = Path(path)
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys() if not name.startswith(INT8_PREFIX)}
    tensors.update({INT8_PREFIX + view: np.frombuffer(graph, dtype=np.uint8) for view, graph in graphs.items()})
    with atomic_output(path, overwrite=True) as partial:
        save_file(tensors, str(partial), metadata=metadata)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.ModuleDict, ModelConfig]:
    """Read a model file into torch networks ready for inference, one per view.

    ``segment`` uses ``onnx_network.load_onnx_networks`` instead; this serves GPU benchmarks.
    Their BatchNorms are folded into the convolutions (``network.fold_batch_norms``), so they are
    for prediction only, not for further training or saving.

    Parameters
    ----------
    path : str or Path
        The model file.
    device : str or torch.device, optional
        Where the networks run.

    Returns
    -------
    networks : torch.nn.ModuleDict
        One ``UNet2D`` per view, in eval mode, channels-last.
    config : ModelConfig

    Raises
    ------
    ModelFileError
        Naming the file, for anything that is not a readable LeftAtriumSeg model.
    """
    import torch  # noqa: PLC0415

    from .network import fold_batch_norms  # noqa: PLC0415

    config, weights = read_model(path)
    networks = config.build_networks()
    try:
        networks.load_state_dict({name: torch.from_numpy(array) for name, array in weights.items()})
    except RuntimeError as error:  # missing, unexpected or misshapen tensors
        raise ModelFileError(f"{path}: weights do not load ({error})") from None
    for network in networks.values():
        fold_batch_norms(network)
    # channels_last: oneDNN's fast path for 2D convolutions on CPUs (about 2x at inference).
    return networks.to(device, memory_format=torch.channels_last).eval(), config


def parameter_count(network: nn.Module) -> int:
    """Number of parameters of a torch network (buffers, such as BatchNorm statistics, not counted)."""
    return sum(p.numel() for p in network.parameters())
