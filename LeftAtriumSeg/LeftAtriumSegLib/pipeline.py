"""From an image to a cleaned left-atrium mask and its volume: what ``segment`` and Slicer run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .inference import ProgressCallback, SliceNetwork, predict_probability_map
from .measurements import VolumeMeasurement, measure_volume
from .model_file import ModelConfig, model_file_sha256
from .onnx_network import load_onnx_networks
from .postprocessing import CleanupSettings, clean_mask

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "leftatriumseg.safetensors"


@dataclass
class Segmenter:
    """A loaded model plus cleanup settings, ready to segment any number of images."""

    networks: dict[str, SliceNetwork]  # one network per view of the config
    config: ModelConfig
    cleanup: CleanupSettings
    model_path: Path
    model_sha256: str

    @classmethod
    def load(cls, model_path: str | Path = DEFAULT_MODEL_PATH, device: str = "auto",
             cleanup: CleanupSettings | None = None, threads: int = 0) -> "Segmenter":
        """``device``: ``auto`` (CUDA where onnxruntime has it, else CPU), ``cpu`` or ``cuda``;
        ``threads``: CPU threads for the networks, 0 for one per physical core."""
        networks, config = load_onnx_networks(model_path, device, threads)
        return cls(networks, config, cleanup or CleanupSettings(), Path(model_path), model_file_sha256(model_path))

    @property
    def model_label(self) -> str:
        return f"{self.config.name} {self.config.version}"

    def segment(self, image: sitk.Image, progress: ProgressCallback | None = None) -> np.ndarray:
        """Boolean ``(Z, Y, X)`` left-atrium mask on exactly ``image``'s grid."""
        probability_map = predict_probability_map(image, self.networks, self.config, progress)
        return clean_mask(sitk.GetArrayViewFromImage(probability_map), image.GetSpacing(), self.cleanup)

    def segment_and_measure(self, image: sitk.Image, progress: ProgressCallback | None = None
                            ) -> tuple[np.ndarray, VolumeMeasurement]:
        mask = self.segment(image, progress)
        return mask, measure_volume(mask, image.GetSpacing())
