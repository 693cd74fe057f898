"""The model file's U-Nets run by ONNX Runtime: segmenting needs neither torch nor a GPU.

The graph of each view's network is built here from the safetensors weights (no second model
file to keep in step). It mirrors ``network.UNet2D`` layer for layer, with each BatchNorm folded
into the convolution before it; ``test_onnx_network.py`` checks that both give the same logits.
Importing onnxruntime and onnx takes about 0.3 s against 1.5 s for torch, so a whole ``segment``
run takes about 0.7 of the time it took with torch on a 2-core CPU
(``docs/model-development.md``, "Other measurements").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelFileError
from .model_file import ModelConfig, read_model

OPSET = 17
IR_VERSION = 8  # what every onnxruntime since 1.10 reads
BATCH_NORM_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default, which UNet2D uses


class _GraphBuilder:
    """Collects ONNX nodes and initialisers, taking each weight by its ``UNet2D`` state-dict name
    and checking its shape, as ``load_state_dict`` would."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.weights:
            raise ValueError(f"tensor {name!r} missing")
        array = self.weights[name]
        if tuple(array.shape) != shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(array.shape)}, the settings need {shape}")
        self.used.add(name)
        return array.astype(np.float32)

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def _node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def convolution(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray) -> str:
        kernel = weight.shape[-1]
        return self._node("Conv", [x, self._constant(f"{name}.weight", weight), self._constant(f"{name}.bias", bias)],
                          name, kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4)

    def conv_block(self, x: str, prefix: str, in_channels: int, out_channels: int) -> str:
        """UNet2D's ``_conv_block``, (Conv 3x3 + BatchNorm + ReLU) twice, each BatchNorm folded
        into its convolution (eval mode: running statistics)."""
        for convolution, batch_norm, channels in ((0, 1, in_channels), (3, 4, out_channels)):
            norm = f"{prefix}.{batch_norm}"
            scale = self.weight(f"{norm}.weight", (out_channels,)) / np.sqrt(
                self.weight(f"{norm}.running_var", (out_channels,)) + BATCH_NORM_EPSILON)
            weight = self.weight(f"{prefix}.{convolution}.weight", (out_channels, channels, 3, 3)) * scale[:, None, None, None]
            bias = self.weight(f"{norm}.bias", (out_channels,)) - self.weight(f"{norm}.running_mean", (out_channels,)) * scale
            self.used.add(f"{norm}.num_batches_tracked")
            x = self.convolution(x, f"{prefix}.{convolution}", weight, bias)
            x = self._node("Relu", [x], f"{prefix}.{convolution}.relu")
        return x

    def max_pool(self, x: str, name: str) -> str:
        return self._node("MaxPool", [x], name, kernel_shape=[2, 2], strides=[2, 2])

    def up_convolution(self, x: str, name: str, in_channels: int, out_channels: int) -> str:
        weight = self.weight(f"{name}.weight", (in_channels, out_channels, 2, 2))
        bias = self.weight(f"{name}.bias", (out_channels,))
        return self._node("ConvTranspose", [x, self._constant(f"{name}.weight", weight), self._constant(f"{name}.bias", bias)],
                          name, kernel_shape=[2, 2], strides=[2, 2])

    def concat(self, inputs: list[str], name: str) -> str:
        return self._node("Concat", inputs, name, axis=1)


def unet_model(weights: dict[str, np.ndarray], config: ModelConfig) -> onnx.ModelProto:
    """One view's ``UNet2D`` as an ONNX model: input ``image`` float32 ``(N, config.slices, H, W)``,
    output ``logits`` float32 ``(N, 1, H, W)``, H and W multiples of ``config.size_multiple``.

    ``weights``: that view's state dict (names without the view prefix) as numpy arrays; a
    missing, extra or misshapen tensor raises ``ValueError``.
    """
    graph = _GraphBuilder(weights)
    x, skips, channels = "image", [], config.slices
    for depth, width in enumerate(config.features):
        if depth > 0:
            x = graph.max_pool(x, f"pool{depth}")
        x = graph.conv_block(x, f"encoders.{depth}", channels, width)
        skips.append(x)
        channels = width
    skips.pop()
    for level, width in enumerate(reversed(config.features[:-1])):
        upsampled = graph.up_convolution(x, f"upsamplers.{level}", channels, width)
        joined = graph.concat([upsampled, skips.pop()], f"decoders.{level}.input")
        x = graph.conv_block(joined, f"decoders.{level}", 2 * width, width)
        channels = width
    x = graph.convolution(x, "logits", graph.weight("head.weight", (1, channels, 1, 1)), graph.weight("head.bias", (1,)))
    unused = sorted(set(weights) - graph.used)
    if unused:
        raise ValueError(f"unexpected tensors {unused[:3]}")
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", config.slices, "height", "width"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, "height", "width"])
    model = helper.make_model(helper.make_graph(graph.nodes, "unet2d", [image], [logits], graph.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


class OnnxSliceNetwork:
    """A view's network as ``inference.predict_slices`` calls it: float32 ``(N, slices, H, W)``
    in, logits ``(N, 1, H, W)`` out."""

    def __init__(self, model: onnx.ModelProto, size_multiple: int, providers: list[str], threads: int = 0):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
        options.log_severity_level = 3  # errors only: no warnings on the user's console
        # Without the arena a whole segment run peaked at 540-580 MB instead of 770, at the same speed.
        options.enable_cpu_mem_arena = False
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=providers)
        self.size_multiple = size_multiple

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def execution_providers(device: str) -> list[str]:
    """onnxruntime's providers for ``auto``, ``cpu`` or ``cuda``; asking for ``cuda`` where
    onnxruntime has no CUDA support (the plain ``onnxruntime`` package) is an error."""
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device == "cuda" and not cuda:
        raise ValueError("device 'cuda' requested but onnxruntime has no CUDA support here "
                         "(install onnxruntime-gpu, or use --device cpu)")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (auto, cpu or cuda)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device != "cpu" and cuda else ["CPUExecutionProvider"]


def load_onnx_networks(path: str | Path, device: str = "auto", threads: int = 0
                       ) -> tuple[dict[str, OnnxSliceNetwork], ModelConfig]:
    """A model file's networks, one per view, ready for ``inference.predict_frame_probabilities``.

    Raises ``ModelFileError`` naming the file for anything that is not a readable
    LeftAtriumSeg model.
    """
    config, weights = read_model(path)
    providers = execution_providers(device)
    strays = sorted(name for name in weights if name.split(".", 1)[0] not in config.views)
    if strays:
        raise ModelFileError(f"{path}: weights do not fit the model's settings (tensors of no view: {strays[:3]})")
    networks = {}
    for view in config.views:
        view_weights = {name[len(view) + 1 :]: array for name, array in weights.items() if name.startswith(f"{view}.")}
        try:
            model = unet_model(view_weights, config)
        except (ValueError, onnx.checker.ValidationError) as error:
            raise ModelFileError(f"{path}: weights do not fit the model's settings ({view}: {error})") from None
        networks[view] = OnnxSliceNetwork(model, config.size_multiple, providers, threads)
    return networks, config
