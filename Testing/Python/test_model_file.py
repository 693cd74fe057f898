"""Model files load without executing code and fail with one clear line."""

import json
import os
import pickle
import stat

import pytest
import torch
from conftest import rewrite_safetensors
from safetensors.torch import save_file

from LeftAtriumSegLib.errors import ModelFileError
from LeftAtriumSegLib.model_file import ModelConfig, load_model, read_model_config, save_model
from LeftAtriumSegLib.onnx_network import load_onnx_networks
from LeftAtriumSegLib.models import model_path


@pytest.fixture(params=["torch", "onnxruntime"])
def load(request):
    """Both ways a model file is read: torch networks (benchmarks) and ONNX Runtime (segment)."""
    return load_model if request.param == "torch" else (lambda path: load_onnx_networks(path, "cpu"))


def test_save_and_load_round_trip(tmp_path):
    config = ModelConfig(name="tiny", version="7", slices=3, features=(4, 8), views=("sagittal", "axial"))
    networks = config.build_networks().eval()
    path = tmp_path / "tiny.safetensors"
    save_model(path, networks, config)
    loaded, loaded_config = load_model(path)
    assert loaded_config == config == read_model_config(path)
    assert list(loaded) == ["sagittal", "axial"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for view in config.views:
            torch.testing.assert_close(loaded[view](x), networks[view](x))
        assert not torch.allclose(loaded["sagittal"](x), loaded["axial"](x))  # each view has its own weights
    assert sorted(tmp_path.iterdir()) == [path]  # no temporary file left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # readable by others, as any file the user writes


def test_networks_must_match_the_views(tmp_path):
    config = ModelConfig(features=(4, 8), views=("axial",))
    with pytest.raises(ValueError, match="do not match"):
        save_model(tmp_path / "m.safetensors", ModelConfig(features=(4, 8), views=("coronal",)).build_networks(), config)
    with pytest.raises(ValueError, match="views must be"):
        ModelConfig(views=("oblique",))


def _model_with_settings(path, edit) -> None:
    """A small model file at ``path`` whose stored settings (a dict from its JSON) ``edit`` changed."""
    config = ModelConfig(features=(4, 8), views=("axial",))
    save_model(path, config.build_networks(), config)
    rewrite_safetensors(
        path, lambda metadata, _: metadata.update(config=json.dumps(edit(json.loads(metadata["config"])))))


# Settings no model could have been trained with, and what the refusal names. Before they were
# checked, some failed deep inside inference with a traceback (an even number of slices, a zero
# spacing) and others were blamed on every input image (an invalid orientation code).
IMPOSSIBLE_SETTINGS = {
    "unknown view": (lambda s: {**s, "views": ["oblique"]}, "views must be"),
    "even slices": (lambda s: {**s, "slices": 4}, "slices must be a positive odd number"),
    "slices as text": (lambda s: {**s, "slices": "5"}, "slices must be"),
    "no levels": (lambda s: {**s, "features": []}, "features must be"),
    "zero spacing": (lambda s: {**s, "frame": {"orientation": "LPS", "spacing_mm": [0, 0, 0]}}, "frame spacing"),
    "tiny spacing": (lambda s: {**s, "frame": {"orientation": "LPS", "spacing_mm": [0.01] * 3}}, "frame spacing"),
    "2D spacing": (lambda s: {**s, "frame": {"orientation": "LPS", "spacing_mm": [1.25, 1.25]}}, "frame spacing"),
    "orientation": (lambda s: {**s, "frame": {"orientation": "LPP", "spacing_mm": [1.25] * 3}}, "orientation must"),
    "not an object": (lambda s: "LeftAtriumSeg", "unreadable model settings"),
}


@pytest.mark.parametrize("edit, problem", IMPOSSIBLE_SETTINGS.values(), ids=IMPOSSIBLE_SETTINGS)
def test_model_with_impossible_settings_is_refused(tmp_path, load, edit, problem):
    path = tmp_path / "m.safetensors"
    _model_with_settings(path, edit)
    with pytest.raises(ModelFileError, match="unreadable model settings") as refusal:
        load(path)
    message = str(refusal.value)
    assert message.startswith(str(path)) and problem in message and "\n" not in message


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_model_is_refused_without_running_its_code(tmp_path, load):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    torch.save({"weights": _Exploit(marker)}, path)
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load(path)
    assert not marker.exists()
    pickled = tmp_path / "evil.pkl"
    pickled.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ModelFileError):
        load(pickled)
    assert not marker.exists()


def test_truncated_model_file_is_refused(tmp_path, load):
    data = model_path().read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=str(path)):
        load(path)


def test_foreign_safetensors_file_is_refused(tmp_path, load):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelFileError, match="not a LeftAtriumSeg model"):
        load(path)


def test_missing_model_file(tmp_path, load):
    with pytest.raises(ModelFileError, match="not found"):
        load(tmp_path / "nothing.safetensors")
    with pytest.raises(ModelFileError, match="is a folder; give the model file in it"):
        load(tmp_path)  # a training run's folder rather than its model.safetensors


def test_shipped_model_loads():
    networks, config = load_model(model_path())
    assert config.frame.spacing_mm == (1.25, 1.25, 1.25)
    assert list(networks) == list(config.views)
    assert not networks.training
