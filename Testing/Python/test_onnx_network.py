"""ONNX Runtime runs the model file's networks as torch does, and segmenting never loads torch."""

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE_IMAGE
from LeftAtriumSegLib.errors import ModelFileError
from LeftAtriumSegLib.inference import predict
from LeftAtriumSegLib.metrics import dice
from LeftAtriumSegLib.model_file import ModelConfig, load_model, save_model
from LeftAtriumSegLib.network import TorchSliceNetwork
from LeftAtriumSegLib.onnx_network import execution_providers, load_onnx_networks
from LeftAtriumSegLib.models import model_path
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask
from safetensors.torch import save_file


def _trained_looking_networks(config: ModelConfig) -> torch.nn.ModuleDict:
    """Random networks whose BatchNorms have non-trivial statistics and affine parameters, so
    that folding them into the convolutions is exercised."""
    torch.manual_seed(0)
    networks = config.build_networks()
    for module in networks.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return networks.eval()


@pytest.mark.parametrize("features, slices", [((4, 8), 3), ((4, 8, 16, 32), 5)])
def test_onnx_logits_match_torch(tmp_path, features, slices):
    config = ModelConfig(slices=slices, features=features, views=("coronal", "axial"))
    networks = _trained_looking_networks(config)
    path = tmp_path / "model.safetensors"
    save_model(path, networks, config)
    onnx_networks, loaded_config = load_onnx_networks(path, "cpu")
    assert loaded_config == config and list(onnx_networks) == ["coronal", "axial"]
    batch = np.random.default_rng(1).standard_normal((3, slices, 32, 48)).astype(np.float32)
    for view in config.views:
        assert onnx_networks[view].size_multiple == networks[view].size_multiple
        with torch.no_grad():
            expected = networks[view](torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(onnx_networks[view](batch), expected, atol=1e-4, rtol=1e-4)
    assert not np.allclose(onnx_networks["coronal"](batch), onnx_networks["axial"](batch))


def test_shipped_model_segments_the_sample_as_torch_does(sample_image):
    # The float32 graphs; the int8 ones are compared with them below.
    onnx_networks, config = load_onnx_networks(model_path(), "cpu", precision="float32")
    torch_networks, _ = load_model(model_path())
    masks = []
    for networks in (onnx_networks, {view: TorchSliceNetwork(network) for view, network in torch_networks.items()}):
        probability_map = predict(sample_image, networks, config).probability_map
        masks.append(clean_mask(sitk.GetArrayViewFromImage(probability_map), sample_image.GetSpacing(), CleanupSettings()))
    assert masks[0].sum() > 10_000
    # Float rounding differs between the two runtimes: at most a few voxels may flip at 0.5.
    assert np.count_nonzero(masks[0] != masks[1]) <= 20
    assert dice(masks[0], masks[1]) >= 0.999


@pytest.mark.parametrize("damage", ["missing", "misshapen", "extra", "no view"])
def test_weights_that_do_not_fit_the_settings_are_refused(tmp_path, damage):
    config = ModelConfig(features=(4, 8), views=("axial",))
    state = {name: tensor.clone() for name, tensor in config.build_networks().state_dict().items()}
    if damage == "missing":
        del state["axial.head.weight"]
    elif damage == "misshapen":
        state["axial.encoders.0.0.weight"] = torch.zeros(4, 2, 3, 3)
    elif damage == "extra":
        state["axial.spare.weight"] = torch.zeros(3)
    else:
        state["coronal.head.bias"] = torch.zeros(1)
    path = tmp_path / f"{damage.replace(' ', '_')}.safetensors"
    save_file(state, str(path), metadata={"format": "leftatriumseg-model-2", "config": config.to_json()})
    with pytest.raises(ModelFileError, match=f"{path}: weights do not fit"):
        load_onnx_networks(path, "cpu")
    with pytest.raises(ModelFileError, match=str(path)):
        load_model(path)


def test_cuda_without_onnxruntime_gpu_is_a_clear_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    assert execution_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        execution_providers("cuda")


def test_segment_and_metrics_import_neither_torch_nor_scipy_nor_skimage_nor_onnx(tmp_path):
    # torch is for training only; scipy, scikit-image and onnx would add their imports to every run,
    # and the Slicer module installs none of them.
    arguments = ["segment", str(SAMPLE_IMAGE), "--output-dir", str(tmp_path), "--quiet", "--device", "cpu", "--threads", "1"]
    script = (
        "import sys\n"
        "from LeftAtriumSegLib.cli import main\n"
        f"status = main({arguments!r})\n"
        "assert status == 0, status\n"
        "import LeftAtriumSegLib.metrics\n"  # the Slicer module's self-test scores with it
        "imported = sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'scipy', 'skimage', 'onnx'})\n"
        "assert not imported, imported\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "la_022_crop.seg.nrrd").is_file()


def test_the_graphs_written_without_the_onnx_package_are_valid_onnx():
    """segment writes the protobuf itself (importing onnx cost 0.6 s); the official checker reads it."""
    import onnx

    from LeftAtriumSegLib.model_file import read_model
    from LeftAtriumSegLib.onnx_network import unet_model

    config, weights = read_model(model_path())
    for view in config.views:
        model = onnx.load_from_string(unet_model({name[len(view) + 1:]: array for name, array in weights.items()
                                                  if name.startswith(f"{view}.")}, config))
        onnx.checker.check_model(model, full_check=True)
        assert [node.op_type for node in model.graph.node].count("Conv") == 2 * (2 * len(config.features) - 1) + 1
        assert {i.name for i in model.graph.input} == {"image"} and {o.name for o in model.graph.output} == {"logits"}


def test_the_shipped_model_runs_its_own_int8_graphs_on_the_cpu(sample_image, sample_label):
    networks, config = load_onnx_networks(model_path(), "cpu")
    assert {network.precision for network in networks.values()} == {"int8"}
    float_networks, _ = load_onnx_networks(model_path(), "cpu", precision="float32")
    int8_mask, float_mask = (clean_mask(sitk.GetArrayViewFromImage(predict(sample_image, nets, config).probability_map),
                                        sample_image.GetSpacing(), CleanupSettings()) for nets in (networks, float_networks))
    assert dice(int8_mask, float_mask) >= 0.98
    assert dice(int8_mask, sample_label) >= 0.85


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory, sample_image):
    """The shipped model with int8 graphs calibrated on the sample, as training adds them."""
    from LeftAtriumSegLib.model_file import read_model_config
    from LeftAtriumSegLib.training.data import PreparedCase
    from LeftAtriumSegLib.training.quantization import quantize_model_file
    from LeftAtriumSegLib.preprocessing import normalise_intensity, to_model_frame

    path = tmp_path_factory.mktemp("int8") / "model.safetensors"
    path.write_bytes(model_path().read_bytes())
    framed = to_model_frame(sample_image, read_model_config(path).frame)
    image = normalise_intensity(sitk.GetArrayFromImage(framed))
    quantize_model_file(path, [PreparedCase("sample", image, (image > 1.0).astype(np.uint8))])
    return path


def test_int8_graphs_are_used_on_the_cpu_and_segment_as_float32_does(int8_model, sample_image, sample_label):
    from LeftAtriumSegLib.model_file import read_int8_graphs, read_model

    assert set(read_int8_graphs(int8_model)) == {"axial", "coronal", "sagittal"}
    float_weights, int8_weights = read_model(model_path())[1], read_model(int8_model)[1]
    assert float_weights.keys() == int8_weights.keys()  # the float32 weights stay as they were
    assert all(np.array_equal(float_weights[name], int8_weights[name]) for name in float_weights)
    networks, config = load_onnx_networks(int8_model, "cpu")
    assert {network.precision for network in networks.values()} == {"int8"}
    float_networks, _ = load_onnx_networks(int8_model, "cpu", precision="float32")
    assert {network.precision for network in float_networks.values()} == {"float32"}
    masks = []
    for nets in (networks, float_networks):
        probability_map = predict(sample_image, nets, config).probability_map
        masks.append(clean_mask(sitk.GetArrayViewFromImage(probability_map), sample_image.GetSpacing(), CleanupSettings()))
    assert dice(masks[0], masks[1]) >= 0.98
    assert dice(masks[0], sample_label) >= 0.85


def test_a_damaged_int8_graph_is_refused_naming_the_file(int8_model, tmp_path):
    from LeftAtriumSegLib.model_file import add_int8_graphs, read_int8_graphs

    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(int8_model.read_bytes())
    graphs = read_int8_graphs(damaged)
    add_int8_graphs(damaged, {**graphs, "coronal": graphs["coronal"][:1000]})
    with pytest.raises(ModelFileError, match=r"damaged.safetensors: the coronal network's int8 graph does not load"):
        load_onnx_networks(damaged, "cpu")
    load_onnx_networks(damaged, "cpu", precision="float32")  # the float32 weights still load


def test_a_failure_inside_onnx_runtime_is_a_runtime_error_a_batch_fails_its_case_on():
    networks, config = load_onnx_networks(model_path(), "cpu")
    network = next(iter(networks.values()))
    wrong_slices = np.zeros((1, config.slices + 2, 32, 32), dtype=np.float32)
    with pytest.raises(RuntimeError, match="ONNX Runtime failed: .*image"):
        network(wrong_slices)
