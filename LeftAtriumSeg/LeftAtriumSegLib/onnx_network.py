"""The model file's U-Nets run by ONNX Runtime: segmenting needs neither torch nor a GPU.

The graph of each view's network is built here from the safetensors weights (no second model
file to keep in step). It mirrors ``network.UNet2D`` layer for layer, with each BatchNorm folded
into the convolution before it; ``test_onnx_network.py`` checks that both give the same logits.
The graph is written in ONNX's protobuf wire format by the few lines of ``_Message`` rather than
with the ``onnx`` package, whose import took 0.6 s of a 3.5 s ``segment`` run (its ml_dtypes
dependency alone 0.58 s); the tests check the bytes with ``onnx.checker``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from .errors import ModelFileError
from .model_file import ModelConfig, read_int8_graphs, read_model

OPSET = 17
IR_VERSION = 8  # what every onnxruntime since 1.10 reads
BATCH_NORM_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default, which UNet2D uses


class _Message:
    """One protobuf message being written: fields are appended in the wire format (varint keys,
    length-delimited strings, bytes and sub-messages); see protobuf's encoding documentation."""

    def __init__(self):
        self.data = bytearray()

    @staticmethod
    def _varint(value: int) -> bytes:
        value &= (1 << 64) - 1  # negative int64s take ten bytes, as protobuf writes them
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def integer(self, field: int, value: int) -> _Message:
        self.data += self._varint(field << 3) + self._varint(value)
        return self

    def raw(self, field: int, value: bytes) -> _Message:
        self.data += self._varint(field << 3 | 2) + self._varint(len(value)) + value
        return self

    def text(self, field: int, value: str) -> _Message:
        return self.raw(field, value.encode("utf-8"))

    def message(self, field: int, value: _Message) -> _Message:
        return self.raw(field, bytes(value.data))


# Field numbers and enum values of onnx/onnx.proto (IR version 8).
_FLOAT, _ATTRIBUTE_INT, _ATTRIBUTE_INTS = 1, 2, 7


def _tensor(name: str, array: np.ndarray) -> _Message:
    """TensorProto: dims 1, data_type 2, name 8, raw_data 9 (little-endian float32)."""
    tensor = _Message()
    for size in array.shape:
        tensor.integer(1, size)
    return tensor.integer(2, _FLOAT).text(8, name).raw(9, np.ascontiguousarray(array, dtype="<f4").tobytes())


def _value_info(name: str, shape: list[int | str]) -> _Message:
    """ValueInfoProto (name 1, type 2) of a float tensor: TypeProto.tensor_type 1 {elem_type 1,
    shape 2 {dim 1 {dim_value 1 | dim_param 2}}}."""
    dimensions = _Message()
    for size in shape:
        dimensions.message(1, _Message().text(2, size) if isinstance(size, str) else _Message().integer(1, size))
    tensor_type = _Message().integer(1, _FLOAT).message(2, dimensions)
    return _Message().text(1, name).message(2, _Message().message(1, tensor_type))


def _node(op: str, inputs: list[str], output: str, **attributes: int | list[int]) -> _Message:
    """NodeProto: input 1, output 2, name 3, op_type 4, attribute 5 (AttributeProto: name 1, i 3,
    ints 8, type 20)."""
    node = _Message()
    for name in inputs:
        node.text(1, name)
    node.text(2, output).text(3, output).text(4, op)
    for name, value in attributes.items():
        attribute = _Message().text(1, name)
        if isinstance(value, list):
            for item in value:
                attribute.integer(8, item)
            attribute.integer(20, _ATTRIBUTE_INTS)
        else:
            attribute.integer(3, value).integer(20, _ATTRIBUTE_INT)
        node.message(5, attribute)
    return node


class _GraphBuilder:
    """Collects ONNX nodes and initialisers, taking each weight by its ``UNet2D`` state-dict name
    and checking its shape, as ``load_state_dict`` would."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.used: set[str] = set()
        self.nodes: list[_Message] = []
        self.initializers: list[_Message] = []

    def weight(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.weights:
            raise ValueError(f"tensor {name!r} missing")
        array = self.weights[name]
        if tuple(array.shape) != shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(array.shape)}, the settings need {shape}")
        self.used.add(name)
        return array.astype(np.float32)

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(_tensor(name, array))
        return name

    def _node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(_node(op, inputs, output, **attributes))
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


def unet_model(weights: dict[str, np.ndarray], config: ModelConfig) -> bytes:
    """One view's ``UNet2D`` as a serialised ONNX model: input ``image`` float32
    ``(N, config.slices, H, W)``, output ``logits`` float32 ``(N, 1, H, W)``, H and W multiples of
    ``config.size_multiple``.

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
    # GraphProto: node 1, name 2, initializer 5, input 11, output 12.
    body = _Message()
    for node in graph.nodes:
        body.message(1, node)
    body.text(2, "unet2d")
    for initializer in graph.initializers:
        body.message(5, initializer)
    body.message(11, _value_info("image", ["batch", config.slices, "height", "width"]))
    body.message(12, _value_info("logits", ["batch", 1, "height", "width"]))
    # ModelProto: ir_version 1, graph 7, opset_import 8 (OperatorSetIdProto: domain 1, version 2).
    model = _Message().integer(1, IR_VERSION).message(7, body).message(8, _Message().text(1, "").integer(2, OPSET))
    return bytes(model.data)


class OnnxSliceNetwork:
    """A view's network as ``inference.predict_slices`` calls it: float32 ``(N, slices, H, W)``
    in, logits ``(N, 1, H, W)`` out."""

    def __init__(self, model: bytes, size_multiple: int, providers: list[str], threads: int = 0,
                 precision: str = "float32"):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
        options.log_severity_level = 3  # errors only: no warnings on the user's console
        # Without the arena a whole segment run peaked at 540-580 MB instead of 770, at the same speed.
        options.enable_cpu_mem_arena = False
        self.session = onnxruntime.InferenceSession(model, options, providers=providers)
        self.size_multiple = size_multiple
        self.precision = precision  # of the graph: float32, or int8 (model_file.add_int8_graphs)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(["logits"], {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]
        except MemoryError:
            raise
        except Exception as error:  # onnxruntime's own exceptions derive from Exception alone
            raise RuntimeError(f"ONNX Runtime failed: {error}") from None


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


def load_onnx_networks(path: str | Path, device: str = "auto", threads: int = 0, precision: str = "int8"
                       ) -> tuple[dict[str, OnnxSliceNetwork], ModelConfig]:
    """A model file's networks, one per view, ready for ``inference.predict_frame``.

    Parameters
    ----------
    path : str or Path
        A LeftAtriumSeg model file.
    device : str
        ``auto``, ``cpu`` or ``cuda`` (``execution_providers``).
    threads : int
        CPU threads per network; 0 for ONNX Runtime's default, one per physical core.
    precision : str
        ``int8``: the file's int8 graphs where it holds them and the networks run on the CPU
        (``model_file.add_int8_graphs``; about a fifth faster, the same masks within the
        cross-validation's noise, the model card), else the float32 weights; ``float32``: always
        the float32 weights.

    Raises
    ------
    ModelFileError
        Naming the file, for anything that is not a readable LeftAtriumSeg model.
    """
    if precision not in ("int8", "float32"):
        raise ValueError(f"unknown precision {precision!r} (int8 or float32)")
    config, weights = read_model(path)
    providers = execution_providers(device)
    strays = sorted(name for name in weights if name.split(".", 1)[0] not in config.views)
    if strays:
        raise ModelFileError(f"{path}: weights do not fit the model's settings (tensors of no view: {strays[:3]})")
    int8 = read_int8_graphs(path) if precision == "int8" and providers == ["CPUExecutionProvider"] else {}
    networks = {}
    for view in config.views:
        view_weights = {name[len(view) + 1 :]: array for name, array in weights.items() if name.startswith(f"{view}.")}
        try:
            model = unet_model(view_weights, config)  # also checks the weights against the settings
        except ValueError as error:
            raise ModelFileError(f"{path}: weights do not fit the model's settings ({view}: {error})") from None
        if view not in int8:
            networks[view] = OnnxSliceNetwork(model, config.size_multiple, providers, threads)
            continue
        try:
            networks[view] = OnnxSliceNetwork(int8[view], config.size_multiple, providers, threads, "int8")
        except Exception as error:  # noqa: BLE001 - ONNX Runtime raises a class per failure (InvalidProtobuf, ...)
            reason = " ".join(str(error).split())[:200]
            raise ModelFileError(f"{path}: the {view} network's int8 graph does not load ({reason})") from None
    return networks, config
