"""Training machinery on synthetic data: folds by image, and a loss that falls."""

import json
import os
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ellipsoid_phantom, rewrite_safetensors

from LeftAtriumSegLib.datasets import DataFolders, read_decathlon_cases, task02_to_anatomical
from LeftAtriumSegLib.errors import InputImageError, LeftAtriumSegError
from LeftAtriumSegLib.model_card import write_model_card
from LeftAtriumSegLib.model_file import ModelConfig, model_file_sha256, read_model
from LeftAtriumSegLib.preprocessing import ModelFrame
from LeftAtriumSegLib.training import (
    TrainingSettings, make_folds, prepare_case, prepare_cases, sample_batch, train_model, train_network,
    training_presentations,
)
from LeftAtriumSegLib.training.augmentation import _random_flips, random_gamma
from LeftAtriumSegLib.training.record import write_record


# A one-view network small enough to train in milliseconds.
TINY_CONFIG = ModelConfig(slices=3, features=(4, 8), views=("coronal",))


def _write_dataset(folder, count, duplicate_of=None):
    """Decathlon-layout folder of ellipsoid phantoms; optionally one image repeated."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    entries = []
    for index in range(count):
        seed = duplicate_of if (duplicate_of is not None and index == count - 1) else index
        radii = (10 + seed % 3, 8 + seed % 2, 7.0)
        image, mask, _ = ellipsoid_phantom(size=(48, 48, 24), radii_mm=radii, seed=seed,
                                           spacing=(1.25, 1.25, 1.25), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        label = sitk.GetImageFromArray(mask.astype(np.uint8))
        label.CopyInformation(image)
        name = f"case_{index:03d}.nii.gz"
        sitk.WriteImage(image, str(folder / "imagesTr" / name))
        sitk.WriteImage(label, str(folder / "labelsTr" / name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (folder / "dataset.json").write_text(json.dumps({"training": entries}))


def test_every_name_the_training_package_exports_is_there():
    """The package imports its stages when a name is first used: a misspelt stage would fail only then."""
    import LeftAtriumSegLib.training as training

    assert all(getattr(training, name) is not None for name in training.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_stage'"):
        training.no_such_stage  # noqa: B018


def test_folds_keep_identical_images_together(tmp_path):
    _write_dataset(tmp_path, 9, duplicate_of=2)  # case_008 repeats case_002's image
    folds = make_folds(read_decathlon_cases(tmp_path), 4)
    names = [{case.case_id for case in fold} for fold in folds]
    assert sorted(len(fold) for fold in folds) == [2, 2, 2, 3]
    assert any({"case_002", "case_008"} <= fold for fold in names)
    assert set().union(*names) == {f"case_{i:03d}" for i in range(9)}


def test_more_folds_than_distinct_images_are_refused_before_training(tmp_path):
    _write_dataset(tmp_path / "data", 3, duplicate_of=0)  # two distinct images among three cases
    with pytest.raises(LeftAtriumSegError, match="--folds 3: there are only 2 distinct images to hold out"):
        make_folds(read_decathlon_cases(tmp_path / "data"), 3)
    with pytest.raises(LeftAtriumSegError, match="--folds 4: there are only 3 cases"):
        train_model([tmp_path / "data"], tmp_path / "run", TINY_CONFIG, TrainingSettings(iterations=1), folds=4)
    assert not (tmp_path / "run").exists()
    # Found once the images are read: the folder stays empty, and the same command with --folds 2 may go on in it.
    with pytest.raises(LeftAtriumSegError, match="--folds 3: there are only 2 distinct images"):
        train_model([tmp_path / "data"], tmp_path / "run", TINY_CONFIG, TrainingSettings(iterations=1), folds=3,
                    show_progress=False)
    assert list((tmp_path / "run").iterdir()) == []


def test_one_data_folder_given_twice_is_refused_however_it_is_given(tmp_path):
    """A check by identity let the same object (argv's one-character strings are one) through."""
    _write_dataset(tmp_path / "d", 2)
    for twice in ([tmp_path / "d", tmp_path / "d"], [str(tmp_path / "d"), str(tmp_path / "d") + "/"]):
        with pytest.raises(LeftAtriumSegError, match="given twice among the data folders"):
            DataFolders(twice)
    with pytest.raises(LeftAtriumSegError, match="given twice as a respaced folder"):
        DataFolders([tmp_path / "d"], respaced={tmp_path / "d": (1.0, 1.0, 1.0), str(tmp_path / "d"): (2.0, 2.0, 2.0)})


def test_one_case_id_in_two_data_folders_is_refused(tmp_path):
    _write_dataset(tmp_path / "a", 2)
    _write_dataset(tmp_path / "b", 1)  # case_000 again: its maps and folds would be confused
    with pytest.raises(LeftAtriumSegError, match=r"case case_000 is listed twice: .*a/imagesTr/case_000.nii.gz and "
                                                 r".*b/imagesTr/case_000.nii.gz"):
        DataFolders([tmp_path / "a", tmp_path / "b"]).read_cases()


def test_tiny_training_run_lowers_the_loss(tmp_path):
    _write_dataset(tmp_path, 3)
    config = ModelConfig(slices=3, features=(8, 16, 32), frame=ModelFrame(spacing_mm=(1.25, 1.25, 1.25)))
    prepared = [prepare_case(case, config) for case in read_decathlon_cases(tmp_path)]
    assert all(case.label.any() for case in prepared)
    losses = []
    settings = TrainingSettings(iterations=150, batch_size=8, crop_size=32, warmup_iterations=5, learning_rate=1e-2)
    train_network(prepared, config, settings, show_progress=False, on_iteration=lambda _, loss: losses.append(loss))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])


def test_training_is_reproducible_with_a_fixed_seed(tmp_path):
    _write_dataset(tmp_path, 2)
    config = TINY_CONFIG
    prepared = [prepare_case(case, config) for case in read_decathlon_cases(tmp_path)]
    settings = TrainingSettings(iterations=4, batch_size=4, crop_size=16, warmup_iterations=1)

    def weights(seed):
        network = train_network(prepared, config, replace(settings, seed=seed), "coronal", show_progress=False)
        return torch.cat([tensor.flatten().float() for tensor in network.state_dict().values()])

    first = weights(0)
    assert torch.equal(first, weights(0))
    assert not torch.equal(first, weights(1))


def test_random_flips_give_all_sixteen_variants_and_keep_label_on_centre_slice():
    rng = np.random.default_rng(0)
    stack = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)  # no symmetry: every variant differs
    seen = set()
    for _ in range(400):
        image, label = _random_flips(stack, stack[1].copy(), rng)
        assert np.array_equal(image[1], label)
        seen.add(image.tobytes())
    assert len(seen) == 16  # 2 stack orders x 2 x 2 flips x 2 transposes


def test_gamma_bends_the_intensity_curve_and_keeps_each_crops_mean_and_spread():
    ramp = torch.linspace(-2, 3, 5 * 8 * 8).reshape(1, 5, 8, 8).repeat(200, 1, 1, 1)
    settings = TrainingSettings(gamma_probability=0.5)
    curved = random_gamma(ramp, settings, np.random.default_rng(0))
    changed = [i for i in range(200) if not torch.equal(curved[i], ramp[i])]
    assert 70 <= len(changed) <= 130  # about half of the crops
    for i in changed:
        crop = curved[i].double()
        assert abs(crop.mean() - ramp[i].double().mean()) < 1e-4
        assert abs(crop.std(unbiased=False) - ramp[i].double().std(unbiased=False)) < 1e-4
        assert torch.all(crop.flatten().diff() > 0)  # the order of intensities stays
    # A straight ramp comes out bent, one way or the other: its middle leaves the line (but for
    # gammas close to 1).
    bent = sum(abs(curved[i].flatten()[160] - curved[i].mean()) > 0.01 for i in changed)
    assert bent >= 0.8 * len(changed)
    bent_up = sum(curved[i].flatten()[160] > ramp[i].flatten()[160] for i in changed)
    assert 0 < bent_up < len(changed)  # gammas under 1 and over 1 both drawn


def test_training_without_gamma_draws_the_same_batches_as_before_it_existed(tmp_path):
    # Off, the sampler must not consume random numbers for it: the shipped model's command then
    # gives the shipped weights. Drawn after everything else, on, it changes only the intensities.
    _write_dataset(tmp_path, 1)
    case = prepare_case(read_decathlon_cases(tmp_path)[0], TINY_CONFIG)
    slicings = [[case.in_view("axial")]]
    off, on = TrainingSettings(batch_size=8, crop_size=16), TrainingSettings(batch_size=8, crop_size=16, gamma_probability=1.0)
    rng_off, rng_on = np.random.default_rng(3), np.random.default_rng(3)
    images_off, labels_off = sample_batch(slicings, TINY_CONFIG, off, rng_off)
    images_on, labels_on = sample_batch(slicings, TINY_CONFIG, on, rng_on)
    assert torch.equal(labels_off, labels_on) and not torch.equal(images_off, images_on)
    rng_off.random(3 * 8)  # what gamma drew
    assert rng_off.random() == rng_on.random()


def test_random_orientation_crops_keep_image_and_label_aligned(tmp_path):
    _write_dataset(tmp_path, 1)
    config = TINY_CONFIG
    case = prepare_case(read_decathlon_cases(tmp_path)[0], config)
    case.image = case.label.astype(np.float32)  # the image is its own label
    settings = TrainingSettings(batch_size=64, crop_size=16, random_orientation=True, max_rotation_deg=0.0,
                                max_scaling=0.0, max_gain_change=0.0, max_offset=0.0)
    slicings = [[case.in_view(view) for view in ("axial", "coronal", "sagittal")]]
    images, labels = sample_batch(slicings, config, settings, np.random.default_rng(0))
    assert images.shape == (64, 3, 16, 16) and labels.shape == (64, 1, 16, 16)
    assert labels.sum() > 0
    assert torch.equal((images[:, 1:2] >= 0.5).float(), labels)


def test_fractional_labels_keep_the_mask_volume_and_give_binary_targets(tmp_path):
    # A 0.625 mm mask brought into the 1.25 mm frame: the voxels' shares of the mask add up to
    # its volume; a cut at 0.5 keeps the voxels that are exactly half inside, and overshoots.
    image, mask, radii_mm = ellipsoid_phantom(size=(96, 96, 64), spacing=(0.625, 0.625, 0.625),
                                              direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    label = sitk.GetImageFromArray(mask.astype(np.uint8))
    label.CopyInformation(image)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    sitk.WriteImage(image, str(tmp_path / "imagesTr" / "case.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "labelsTr" / "case.nii.gz"))
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [
        {"image": "./imagesTr/case.nii.gz", "label": "./labelsTr/case.nii.gz"}]}))
    case = read_decathlon_cases(tmp_path)[0]
    config = TINY_CONFIG  # the shipped frame: 1.25 mm
    cut, fractional = prepare_case(case, config), prepare_case(case, config, fractional_labels=True)
    voxel_mm3 = float(np.prod(config.frame.spacing_mm))
    analytic_mm3 = 4 / 3 * np.pi * np.prod(radii_mm)
    assert fractional.label.dtype == np.float32 and cut.label.dtype == np.uint8
    assert 0 <= fractional.label.min() and fractional.label.max() <= 1
    assert (fractional.label == 0.5).any()
    assert abs(fractional.label.sum() * voxel_mm3 - analytic_mm3) < 0.01 * analytic_mm3
    assert cut.label.sum() * voxel_mm3 > 1.02 * analytic_mm3
    assert np.array_equal(cut.label, (fractional.label >= 0.5).astype(np.uint8))
    settings = TrainingSettings(batch_size=8, crop_size=16, fractional_labels=True)
    _, labels = sample_batch([[fractional.in_view("axial")]], config, settings, np.random.default_rng(0))
    assert set(torch.unique(labels).tolist()) == {0.0, 1.0}


def test_training_into_a_file_is_refused_before_any_work(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    not_a_folder = tmp_path / "run"
    not_a_folder.write_text("the user's notes")
    with pytest.raises(LeftAtriumSegError, match=r"run: --output-dir exists and is not a folder$"):
        train_model([tmp_path / "data"], not_a_folder, ModelConfig(), TrainingSettings(iterations=1), show_progress=False)
    assert not_a_folder.read_text() == "the user's notes"


def test_training_into_a_folder_with_files_is_refused_before_any_work(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("the user's notes")
    with pytest.raises(LeftAtriumSegError, match=r"run: --output-dir is not empty \(use --overwrite to train into it\)$"):
        train_model([tmp_path / "data"], run, ModelConfig(), TrainingSettings(iterations=1), show_progress=False)
    assert [path.name for path in run.iterdir()] == ["notes.txt"]


def _run_files(run):
    return sorted(str(path.relative_to(run)) for path in run.rglob("*") if path.is_file())


def test_overwrite_replaces_an_earlier_runs_files_and_keeps_the_users(tmp_path):
    """The earlier run's model and checkpoints stayed beside a cross-validation's record, and its folds
    beside a model's; an interrupted --overwrite could then not be resumed (their checkpoints differ)."""
    _write_dataset(tmp_path / "data", 2)
    settings = TrainingSettings(iterations=2, batch_size=2, crop_size=16, warmup_iterations=1)
    run = tmp_path / "run"
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, folds=2, show_progress=False)
    (run / "MODEL_CARD.md").write_text("the card train writes")
    (run / "notes.txt").write_text("the user's notes")
    (run / "fold_0" / "MODEL_CARD.md").write_text("the user's notes on fold 0")
    with pytest.raises(LeftAtriumSegError, match=r"run: holds an earlier run \(training.json\): --resume goes on with "
                                                 r"it if it was interrupted, --overwrite replaces it$"):
        train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False)

    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False, overwrite=True)

    assert _run_files(run) == ["checkpoint_coronal.safetensors", "fold_0/MODEL_CARD.md", "model.safetensors",
                               "notes.txt", "training.json"]
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, folds=2, show_progress=False, overwrite=True)
    assert "model.safetensors" not in _run_files(run) and "fold_1/model.safetensors" in _run_files(run)

    # Only what the record says the run wrote goes: not another tool's files of the same names, nor
    # anything through a link, which may lead out of the run folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "case_000.nii.gz").write_text("another tool's map")
    shutil.rmtree(run / "probabilities")
    (run / "probabilities").symlink_to(elsewhere)
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False, overwrite=True)
    assert (elsewhere / "case_000.nii.gz").read_text() == "another tool's map"
    (run / "probabilities").unlink()
    (run / "training.json").unlink()  # no run recorded: nothing of one is known to remove
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, folds=2, show_progress=False, overwrite=True)
    assert "model.safetensors" in _run_files(run) and "fold_1/model.safetensors" in _run_files(run)

    # A record edited by hand names nothing outside its folders.
    record = json.loads((run / "training.json").read_text())
    (run / "training.json").write_text(json.dumps({**record, "cases": [*record["cases"], "../../victim"]}))
    (tmp_path / "victim.nii.gz").write_text("the user's scan")
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, folds=2, show_progress=False, overwrite=True)
    assert (tmp_path / "victim.nii.gz").read_text() == "the user's scan"

    # An --overwrite refused for its data leaves the earlier run as it was.
    before = {path: (run / path).read_bytes() for path in _run_files(run)}
    (tmp_path / "data" / "labelsTr" / "case_001.nii.gz").write_text("not an image")
    with pytest.raises(InputImageError, match="case_001.nii.gz: file is truncated"):
        train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False, overwrite=True)
    assert {path: (run / path).read_bytes() for path in _run_files(run)} == before


def test_a_run_folder_among_the_scans_is_refused_and_a_resume_on_other_data_folders_too(tmp_path):
    """Maps written among the scans could take their names; the same case names in another folder are
    other scans, which the card of the earlier run would describe."""
    _write_dataset(tmp_path / "data", 2)
    settings = TrainingSettings(iterations=2, batch_size=2, crop_size=16, warmup_iterations=1)
    for inside in (tmp_path / "data", tmp_path / "data" / "run", tmp_path):
        with pytest.raises(LeftAtriumSegError, match="--output-dir must lie apart from the data folder"):
            train_model([tmp_path / "data"], inside, TINY_CONFIG, settings, show_progress=False, overwrite=True)
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    run = tmp_path / "runs" / "a"
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False)
    shutil.copytree(tmp_path / "data", tmp_path / "other")
    with pytest.raises(LeftAtriumSegError, match=r"a: the run there trained on other data folders \(\S*data there, "
                                                 r"\S*other now\)"):
        train_model([tmp_path / "other"], run, TINY_CONFIG, settings, show_progress=False, resume=True)


def test_a_resume_cleans_up_after_a_killed_run_and_refuses_a_foreign_checkpoint_before_recording(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    settings = TrainingSettings(iterations=2, batch_size=2, crop_size=16, warmup_iterations=1)
    run = tmp_path / "run"
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, folds=2, show_progress=False)
    killed = [folder / f".partial-{socket.gethostname()}-{2**22 + 1}-0-{name}"  # no such process
              for folder, name in ((run / "fold_0", "checkpoint_coronal.safetensors"),
                                   (run / "probabilities", "case_000.nii.gz"))]
    for path in killed:
        path.write_bytes(b"half a file")
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, folds=2, show_progress=False, resume=True)
    assert not any(path.exists() for path in killed)

    foreign = tmp_path / "foreign"
    train_model([tmp_path / "data"], foreign, TINY_CONFIG, replace(settings, seed=1), folds=2, show_progress=False)
    (run / "fold_0" / "checkpoint_coronal.safetensors").write_bytes(
        (foreign / "fold_0" / "checkpoint_coronal.safetensors").read_bytes())
    record = (run / "training.json").read_text()
    with pytest.raises(LeftAtriumSegError, match=r"checkpoint_coronal.safetensors: written by a training with other "
                                                 r"settings; resume needs the same ones$"):
        train_model([tmp_path / "data"], run, TINY_CONFIG, settings, folds=2, show_progress=False, resume=True)
    assert (run / "training.json").read_text() == record  # the refused sitting is not recorded


def test_an_empty_label_and_one_all_atrium_are_trained_on_with_a_warning(tmp_path, capsys):
    _write_dataset(tmp_path / "data", 3)
    for name, value in (("case_001.nii.gz", 0), ("case_002.nii.gz", 1)):
        path = tmp_path / "data" / "labelsTr" / name
        label = sitk.ReadImage(str(path))
        label = sitk.Cast(label * 0 + value, label.GetPixelID())
        sitk.WriteImage(label, str(path))
    prepare_cases(read_decathlon_cases(tmp_path / "data"), TINY_CONFIG, show_progress=False)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        f"warning: {tmp_path / 'data' / 'labelsTr' / 'case_001.nii.gz'}: no voxel is atrium (an empty label): the case "
        "trains as background only",
        f"warning: {tmp_path / 'data' / 'labelsTr' / 'case_002.nii.gz'}: every voxel is atrium: is it the label?"]


def _corrupt_label(data):
    (data / "labelsTr" / "case_001.nii.gz").write_text("not an image")
    return "labelsTr/case_001.nii.gz: file is truncated, corrupt or not gzip-compressed"


def _missing_image(data):
    (data / "imagesTr" / "case_001.nii.gz").unlink()
    return "imagesTr/case_001.nii.gz: file not found"


def _label_on_another_grid(data):
    path = data / "labelsTr" / "case_001.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(path))[:, :, :-2], str(path))
    return "labelsTr/case_001.nii.gz: not on the grid of its image"


def _image_as_label(data):
    path = data / "labelsTr" / "case_001.nii.gz"
    path.write_bytes((data / "imagesTr" / "case_001.nii.gz").read_bytes())
    return "labelsTr/case_001.nii.gz: is not a mask"


@pytest.mark.parametrize("damage", [_corrupt_label, _missing_image, _label_on_another_grid, _image_as_label],
                         ids=["corrupt-label", "missing-image", "label-off-grid", "image-as-label"])
def test_a_bad_training_case_stops_the_run_in_one_line_before_it_writes_anything(tmp_path, damage):
    _write_dataset(tmp_path / "data", 3)
    problem = damage(tmp_path / "data")
    run = tmp_path / "run"
    with pytest.raises(InputImageError) as raised:
        train_model([tmp_path / "data"], run, ModelConfig(), TrainingSettings(iterations=1), show_progress=False)
    assert problem in str(raised.value) and "\n" not in str(raised.value)
    assert list(run.iterdir()) == []


class _Interrupted(Exception):
    pass


def _interrupt_after(iterations_run):
    def on_iteration(iteration, _loss):
        if iteration + 1 == iterations_run:
            raise _Interrupted

    return on_iteration


def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    config = TINY_CONFIG
    prepared = [prepare_case(case, config) for case in read_decathlon_cases(tmp_path / "data")]
    settings = TrainingSettings(iterations=9, batch_size=4, crop_size=16, warmup_iterations=2, checkpoint_every=3)

    def weights(network):
        return [tensor.clone() for tensor in network.state_dict().values()]

    uninterrupted = weights(train_network(prepared, config, settings, "coronal", tmp_path / "a.safetensors",
                                          show_progress=False))
    checkpoint = tmp_path / "b.safetensors"
    with pytest.raises(_Interrupted):  # stopped after 5 iterations; the checkpoint holds 3
        train_network(prepared, config, settings, "coronal", checkpoint, show_progress=False,
                      on_iteration=_interrupt_after(5))
    iterations_run = []
    resumed = train_network(prepared, config, settings, "coronal", checkpoint, show_progress=False, resume=True,
                            on_iteration=lambda iteration, _: iterations_run.append(iteration))
    assert iterations_run == list(range(3, 9))
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, weights(resumed), strict=True))

    started_afresh = train_network(prepared, config, settings, "coronal", checkpoint, show_progress=False)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, weights(started_afresh), strict=True))



@pytest.mark.parametrize(("damage", "reason"), [
    (lambda metadata, tensors: metadata.update(config=json.dumps({**json.loads(metadata["config"]), "slices": 4})),
     "slices"),
    (lambda metadata, tensors: metadata.pop("config"), "KeyError: 'config'"),
    (lambda metadata, tensors: metadata.update(settings="{ not json"), "JSONDecodeError"),
    (lambda metadata, tensors: metadata.update(numpy_rng_state="[]"), "TypeError"),
    (lambda metadata, tensors: metadata.update(iterations_done="three"), "ValueError"),
    (lambda metadata, tensors: tensors.pop("network.head.weight"), "Missing key"),
    (lambda metadata, tensors: tensors.pop("torch_rng_state"), "KeyError: 'torch_rng_state'"),
], ids=["impossible-settings", "no-settings", "settings-not-json", "bad-sampler-state", "bad-iteration-count",
        "missing-weight", "missing-torch-state"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, damage, reason):
    _write_dataset(tmp_path / "data", 1)
    config = TINY_CONFIG
    prepared = [prepare_case(case, config) for case in read_decathlon_cases(tmp_path / "data")]
    settings = TrainingSettings(iterations=2, batch_size=2, crop_size=16, warmup_iterations=1)
    checkpoint = tmp_path / "view.safetensors"
    train_network(prepared, config, settings, "coronal", checkpoint, show_progress=False)
    rewrite_safetensors(checkpoint, damage)

    with pytest.raises(LeftAtriumSegError) as refused:
        train_network(prepared, config, settings, "coronal", checkpoint, show_progress=False, resume=True)
    message = str(refused.value)
    assert message.startswith(f"{checkpoint}: damaged checkpoint (") and reason in message
    assert message.endswith("; train into a new folder") and "\n" not in message

def test_resume_goes_on_only_with_the_same_training(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    config = TINY_CONFIG
    settings = TrainingSettings(iterations=4, batch_size=4, crop_size=16, warmup_iterations=1)
    run = tmp_path / "run"
    with pytest.raises(LeftAtriumSegError, match=r"run: no training.json of an earlier run to resume$"):
        train_model([tmp_path / "data"], run, config, settings, show_progress=False, resume=True)
    assert not run.exists()

    run.mkdir()
    for damaged in ("{ not json", "[]"):
        (run / "training.json").write_text(damaged)
        with pytest.raises(LeftAtriumSegError, match=r"training.json: not a readable training record \("):
            train_model([tmp_path / "data"], run, config, settings, show_progress=False, resume=True)
    (run / "training.json").unlink()

    first = train_model([tmp_path / "data"], run, config, settings, show_progress=False, command="first")
    model = model_file_sha256(run / "model.safetensors")
    with pytest.raises(LeftAtriumSegError, match=r"run: the run there had other settings \(iterations 4 there, 8 now\); "
                                                 r"resume needs"):
        train_model([tmp_path / "data"], run, config, replace(settings, iterations=8), show_progress=False, resume=True)
    assert model_file_sha256(run / "model.safetensors") == model  # refused before any work

    _, weights = read_model(run / "model.safetensors")
    summary = train_model([tmp_path / "data"], run, config, settings, show_progress=False, resume=True, command="again")
    _, resumed_weights = read_model(run / "model.safetensors")  # finished views are not trained again
    assert all(np.array_equal(weights[name], resumed_weights[name]) for name in weights)
    assert summary["command"] == "first" and summary["resumed_by"] == ["again"]
    # The training time is the checkpoints' record of the first sitting, not this sitting's few milliseconds;
    # the finished run's wall time stands beside this sitting's.
    assert summary["training_seconds"] == first["training_seconds"]
    assert summary["total_seconds"] == first["total_seconds"] and "last_sitting_seconds" in summary

    label = tmp_path / "data" / "labelsTr" / f"{first['cases'][1]}.nii.gz"
    corrected = sitk.ReadImage(str(label))
    corrected[0, 0, 0] = 1 - corrected[0, 0, 0]
    sitk.WriteImage(corrected, str(label))
    with pytest.raises(LeftAtriumSegError, match=rf"run: the image or label of {first['cases'][1]} changed since the run "
                                                 r"there started; resume needs the same data"):
        train_model([tmp_path / "data"], run, config, settings, show_progress=False, resume=True)
    record = json.loads((run / "training.json").read_text())
    (run / "training.json").write_text(json.dumps({**record, "case_files_sha256": {"case_000": None}}))
    with pytest.raises(LeftAtriumSegError, match=r"training.json: not a readable training record \(case_files_sha256 "):
        train_model([tmp_path / "data"], run, config, settings, show_progress=False, resume=True)
    # A run recorded before the digests were kept cannot tell, and is not given today's as if it started on them.
    (run / "training.json").write_text(json.dumps({key: value for key, value in record.items()
                                                   if key != "case_files_sha256"}))
    summary = train_model([tmp_path / "data"], run, config, settings, show_progress=False, resume=True)
    assert "case_files_sha256" not in summary
    assert "case_files_sha256" not in json.loads((run / "training.json").read_text())


def _without_gamma(settings_json: str) -> str:
    """Settings as an earlier package stored them, before the gamma settings existed."""
    return json.dumps({name: value for name, value in json.loads(settings_json).items() if "gamma" not in name})


def test_a_run_folder_another_train_is_running_in_is_refused_untouched(tmp_path):
    """A job requeued while the first still runs, or an --overwrite of a run not yet ended."""
    _write_dataset(tmp_path / "data", 2)
    settings = TrainingSettings(iterations=4, batch_size=4, crop_size=16, warmup_iterations=1)
    run = tmp_path / "run"
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False)
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    fcntl = pytest.importorskip("fcntl")
    other_train = os.open(run, os.O_RDONLY)  # as the other process's hold on the folder
    fcntl.flock(other_train, fcntl.LOCK_EX)
    try:
        for how in ({"overwrite": True}, {"resume": True}, {}):
            with pytest.raises(LeftAtriumSegError, match=r"run: another train is running in this folder; wait for it"):
                train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False, **how)
    finally:
        os.close(other_train)
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before
    train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False, resume=True)  # once it has ended


def test_a_run_recorded_before_the_gamma_settings_existed_resumes(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    config = TINY_CONFIG
    prepared = [prepare_case(case, config) for case in read_decathlon_cases(tmp_path / "data")]
    settings = TrainingSettings(iterations=6, batch_size=4, crop_size=16, warmup_iterations=1, checkpoint_every=3)
    uninterrupted = train_network(prepared, config, settings, "coronal", tmp_path / "a.safetensors", show_progress=False)
    checkpoint = tmp_path / "b.safetensors"
    with pytest.raises(_Interrupted):
        train_network(prepared, config, settings, "coronal", checkpoint, show_progress=False,
                      on_iteration=_interrupt_after(4))
    rewrite_safetensors(checkpoint, lambda metadata, tensors: metadata.update(settings=_without_gamma(metadata["settings"])))
    resumed = train_network(prepared, config, settings, "coronal", checkpoint, show_progress=False, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))

    run = tmp_path / "run"
    train_model([tmp_path / "data"], run, config, settings, show_progress=False)
    record = json.loads((run / "training.json").read_text())
    (run / "training.json").write_text(json.dumps({**record, "settings": json.loads(_without_gamma(json.dumps(record["settings"])))}))
    for path in run.glob("checkpoint_*.safetensors"):
        rewrite_safetensors(path, lambda metadata, tensors: metadata.update(settings=_without_gamma(metadata["settings"])))
    summary = train_model([tmp_path / "data"], run, config, settings, show_progress=False, resume=True)
    assert summary["settings"] == record["settings"]


def test_task02_cases_are_trained_on_also_turned_to_their_anatomy(tmp_path):
    _write_dataset(tmp_path, 2)
    config = TINY_CONFIG
    for task02_headers, turned in ((False, 0), (True, 2)):
        cases = read_decathlon_cases(tmp_path, task02_headers=task02_headers)
        prepared = {case.case_id: prepare_case(case, config) for case in cases}
        presentations = training_presentations(cases, prepared)
        assert len(presentations) == len(cases) + turned
        assert presentations[: len(cases)] == list(prepared.values())  # as given first: seeds give the same runs
    for case, anatomical in zip(cases, presentations[len(cases):]):
        np.testing.assert_array_equal(anatomical.image, task02_to_anatomical(prepared[case.case_id].image))
        np.testing.assert_array_equal(anatomical.label, task02_to_anatomical(prepared[case.case_id].label))
        assert len(anatomical.foreground_slices) > 0


def test_task02_folders_are_recorded_and_must_be_data_folders(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    config = TINY_CONFIG
    settings = TrainingSettings(iterations=2, batch_size=2, crop_size=16, warmup_iterations=1)
    run = tmp_path / "run"
    with pytest.raises(LeftAtriumSegError, match=r"elsewhere: given as a Task02_Heart folder but not among the data folders$"):
        train_model(DataFolders([tmp_path / "data"], task02_headers=[tmp_path / "elsewhere"]), run, config, settings,
                    show_progress=False)
    assert not run.exists()
    summary = train_model(DataFolders([tmp_path / "data"], task02_headers=[tmp_path / "data"]), run, config, settings,
                          show_progress=False)
    assert summary["task02_header_folders"] == [str(tmp_path / "data")]
    assert json.loads((run / "training.json").read_text())["task02_header_folders"] == [str(tmp_path / "data")]
    assert "Cases of `data` (Task02_Heart's headers" in write_model_card(run).read_text()
    with pytest.raises(LeftAtriumSegError, match=r"run: the run there had other task02 header folders; resume needs"):
        train_model([tmp_path / "data"], run, config, settings, show_progress=False, resume=True)


def test_respaced_cases_are_trained_on_also_with_the_scans_spacing(tmp_path):
    # The phantoms' headers say 1.25 mm between slices; their "scans" had 2.5 mm, so each
    # ellipsoid's z radius, and its volume, doubles.
    _write_dataset(tmp_path, 2)
    config = TINY_CONFIG
    cases = read_decathlon_cases(tmp_path, respaced_mm=(1.25, 1.25, 2.5))
    prepared = {case.case_id: prepare_case(case, config) for case in cases}
    respaced = {case.case_id: prepare_case(case, config, respaced=True) for case in cases}
    # Each case keeps one place, drawn with either spacing: the data sets' shares stay as they were.
    presentations = training_presentations(cases, prepared, respaced)
    assert presentations == [(prepared[case.case_id], respaced[case.case_id]) for case in cases]
    for index, case in enumerate(cases):
        given, scan = prepared[case.case_id], respaced[case.case_id]
        assert scan.case_id == f"{case.case_id} (respaced)"
        assert scan.image.shape == (2 * given.image.shape[0], *given.image.shape[1:])
        radii_mm = (10 + index % 3, 8 + index % 2, 2 * 7.0)
        ellipsoid_ml = 4 / 3 * np.pi * np.prod(radii_mm) / 1000
        assert scan.label.sum() * 1.25**3 / 1000 == pytest.approx(ellipsoid_ml, rel=0.05)


def test_respaced_folders_are_recorded_and_must_be_data_folders(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    settings = TrainingSettings(iterations=2, batch_size=2, crop_size=16, warmup_iterations=1)
    run = tmp_path / "run"
    with pytest.raises(LeftAtriumSegError, match=r"elsewhere: given as a respaced folder but not among the data folders$"):
        train_model(DataFolders([tmp_path / "data"], respaced={tmp_path / "elsewhere": (1.25, 1.25, 2.5)}), run,
                    TINY_CONFIG, settings, show_progress=False)
    assert not run.exists()
    summary = train_model(DataFolders([tmp_path / "data"], respaced={tmp_path / "data": (1.25, 1.25, 2.5)}), run,
                          TINY_CONFIG, settings, show_progress=False)
    assert summary["respaced_folders"] == {str(tmp_path / "data"): [1.25, 1.25, 2.5]}
    assert json.loads((run / "training.json").read_text())["respaced_folders"] == summary["respaced_folders"]
    assert "Cases of `data` were trained on as given and with a voxel spacing of 1.25 x 1.25 x 2.5 mm" \
        in write_model_card(run).read_text()
    with pytest.raises(LeftAtriumSegError, match=r"run: the run there had other respaced folders \(\S*data "
                                                 r"\[1.25, 1.25, 2.5\] there, None now\); resume needs"):
        train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False, resume=True)


def test_a_trained_model_file_holds_int8_graphs_that_segment_uses(tmp_path):
    """Training ends by quantizing each view's network, calibrated on its training presentations."""
    from LeftAtriumSegLib.model_file import read_int8_graphs
    from LeftAtriumSegLib.onnx_network import load_onnx_networks

    _write_dataset(tmp_path / "data", 2)
    train_model([tmp_path / "data"], tmp_path / "run", TINY_CONFIG,
                TrainingSettings(iterations=3, batch_size=4, crop_size=16, warmup_iterations=1), show_progress=False)
    model = tmp_path / "run" / "model.safetensors"
    assert set(read_int8_graphs(model)) == set(TINY_CONFIG.views)
    networks, _ = load_onnx_networks(model, "cpu")
    batch = np.random.default_rng(0).standard_normal((2, TINY_CONFIG.slices, 16, 16)).astype(np.float32)
    assert {network.precision for network in networks.values()} == {"int8"}
    assert networks["coronal"](batch).shape == (2, 1, 16, 16)


def test_a_record_that_fails_to_write_leaves_the_last_whole_one(tmp_path, monkeypatch):
    record_path = tmp_path / "training.json"
    write_record(record_path, {"folds": [1]})
    whole_write = Path.write_text

    def dies_halfway(path, text, *args, **kwargs):  # a kill or a full disk mid-write
        whole_write(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", dies_halfway)
    with pytest.raises(OSError):
        write_record(record_path, {"folds": [1, 2, 3]})
    monkeypatch.undo()
    assert json.loads(record_path.read_text()) == {"folds": [1]} and [p.name for p in tmp_path.iterdir()] == ["training.json"]


def test_an_overwrite_clears_what_lies_where_it_writes_before_it_records_itself(tmp_path, monkeypatch):
    """A checkpoint left where the run writes (by a removal that stopped, or another tool) was taken
    by a later --resume for the new run's: the model was another data set's."""
    from LeftAtriumSegLib.training import run as run_module

    _write_dataset(tmp_path / "data", 2)
    settings = TrainingSettings(iterations=2, batch_size=2, crop_size=16, warmup_iterations=1)
    earlier, run = tmp_path / "earlier", tmp_path / "run"
    train_model([tmp_path / "data"], earlier, TINY_CONFIG, replace(settings, seed=1), show_progress=False)
    run.mkdir()
    shutil.copy(earlier / "checkpoint_coronal.safetensors", run)  # no record names it

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train_networks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_model([tmp_path / "data"], run, TINY_CONFIG, settings, show_progress=False, overwrite=True)
    assert _run_files(run) == ["training.json"]

    (run / "fold_1").write_text("a file where a fold's folder goes")
    with pytest.raises(LeftAtriumSegError, match=r"fold_1: not a folder, where the run puts one; move it away$"):
        train_model([tmp_path / "data"], run, TINY_CONFIG, settings, folds=2, show_progress=False, overwrite=True)
    assert _run_files(run) == ["fold_1", "training.json"]
