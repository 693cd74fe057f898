"""int8 networks: each view's graph quantized by ONNX Runtime (QDQ: int8 weights per channel in 7 bits,
uint8 activations), its activations' ranges calibrated on slice stacks of the training presentations.

Needs the ``onnx`` package (ONNX Runtime's quantizer works on ONNX models), which ``segment`` and
the Slicer module never import: the quantized graphs are stored in the model file
(``model_file.add_int8_graphs``) and read from there.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..inference import slice_stacks
from ..model_file import add_int8_graphs, read_model
from ..onnx_network import unet_model
from .data import TrainingEntry, alternatives

CALIBRATION_BATCHES = 16  # per view
CALIBRATION_BATCH_SIZE = 4  # slice stacks, whole slices padded to the network's size multiple


def calibration_batches(training: Sequence[TrainingEntry], view: str, slices: int, size_multiple: int,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """float32 ``(CALIBRATION_BATCH_SIZE, slices, H, W)`` batches of whole slice stacks of the
    training presentations in ``view``, half of them through the atrium, each batch from one case."""
    batches = []
    for _ in range(CALIBRATION_BATCHES):
        entry = training[rng.integers(len(training))]
        choices = alternatives(entry)
        case = choices[rng.integers(len(choices))].in_view(view)
        atrium = case.foreground_slices
        centres = [int(rng.choice(atrium)) if len(atrium) and rng.random() < 0.5 else int(rng.integers(case.image.shape[0]))
                   for _ in range(CALIBRATION_BATCH_SIZE)]
        stacks = slice_stacks(case.image, slices, centres)
        height, width = stacks.shape[2:]
        pad = [(0, 0), (0, 0), (0, (-height) % size_multiple), (0, (-width) % size_multiple)]
        batches.append(np.ascontiguousarray(np.pad(stacks, pad, mode="edge"), dtype=np.float32))
    return batches


def int8_graphs(model_path: str | Path, training: Sequence[TrainingEntry], seed: int = 0) -> dict[str, bytes]:
    """The model file's networks as int8 ONNX graphs, one per view.

    Parameters
    ----------
    model_path : str or Path
        A model file with float32 weights (``model_file.save_model``).
    training : sequence of TrainingEntry
        The presentations the networks were trained on (``training.data``): the calibration data.
    seed : int
        Which slices calibrate.

    Returns
    -------
    dict of str to bytes
        One serialised ONNX model per view.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: PLC0415

    class Batches(CalibrationDataReader):
        def __init__(self, batches: list[np.ndarray]):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    config, weights = read_model(model_path)
    rng = np.random.default_rng(seed)
    graphs = {}
    for view in config.views:
        batches = Batches(calibration_batches(training, view, config.slices, config.size_multiple, rng))
        with tempfile.TemporaryDirectory() as folder:
            float_graph, quantized = Path(folder) / "float32.onnx", Path(folder) / "int8.onnx"
            float_graph.write_bytes(unet_model({name[len(view) + 1:]: array for name, array in weights.items()
                                                if name.startswith(f"{view}.")}, config))
            # 7-bit weights (reduce_range): x86 CPUs without VNNI can saturate on uint8 x int8 products of
            # full-range weights (ONNX Runtime's quantize_static docstring, "Choosing parameters for CPU
            # inference"); the model file must run the same on every CPU.
            with _without_preprocessing_hint():
                quantize_static(str(float_graph), str(quantized), batches, quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                reduce_range=True)
            graphs[view] = quantized.read_bytes()
    return graphs


@contextmanager
def _without_preprocessing_hint() -> Iterator[None]:
    """Drop ONNX Runtime's "Please consider pre-processing before quantization" warnings, logged to
    the root logger on every call: train's output would read them as a fault, and the int8 accuracy
    in the model card was measured on graphs quantized without that step."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_model_file(model_path: str | Path, training: Sequence[TrainingEntry], seed: int = 0) -> None:
    """Add int8 graphs of the model file's networks to it, calibrated on ``training``."""
    add_int8_graphs(model_path, int8_graphs(model_path, training, seed))
