"""From an image to a cleaned left-atrium mask, its volume and its quality flag: the segmentation
of one image, which ``segment``'s batch and the Slicer module's worker both run."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .inference import ProgressCallback, SliceNetwork, predict, voxels_on_faces
from .measurements import VolumeMeasurement, measure_volume, patient_axis_extents_mm
from .model_file import ModelConfig, model_file_sha256
from .models import model_path
from .onnx_network import load_onnx_networks
from .postprocessing import CleanupSettings, clean_mask
from .quality import QualityCheck, QualitySignals, check_quality


def available_cores() -> int:
    """CPU cores this process may run on (a SLURM job's allocation, not the whole node's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def capped_threads(threads: int) -> int:
    """``--threads``, at most one per core this process may use: more only makes the threads
    queue for the cores (each of the three networks starts its own)."""
    cores = available_cores()
    if threads > cores:
        print(f"note: --threads {threads} capped at the {cores} cores this process may use", file=sys.stderr)
        return cores
    return threads


def edge_contact(mask: np.ndarray) -> int:
    """Voxels of a ``(Z, Y, X)`` mask on the outer faces of its array, each counted once: atrium the
    scan's field of view may have cut off."""
    return voxels_on_faces(mask, [(axis, side) for axis in range(3) for side in (0, 1)])


def si_rl_extent_ratio(mask: np.ndarray, image: sitk.Image) -> float:
    """The superior-inferior extent of a ``(Z, Y, X)`` mask on ``image``'s grid over its right-left
    extent, along the patient's axes as the header states them (0 for an empty mask): a flat
    mask's header may state half the slice spacing."""
    right_left_mm, _, superior_inferior_mm = patient_axis_extents_mm(mask, image.GetSpacing(), image.GetDirection())
    return superior_inferior_mm / right_left_mm if right_left_mm else 0.0


@dataclass(frozen=True)
class Segmentation:
    """The segmentation of one image."""

    mask: np.ndarray  # bool (Z, Y, X), on exactly the image's grid
    volume: VolumeMeasurement
    signals: QualitySignals
    quality: QualityCheck


@dataclass
class Segmenter:
    """A loaded model plus cleanup settings, ready to segment any number of images."""

    networks: dict[str, SliceNetwork]  # one network per view of the config
    config: ModelConfig
    cleanup: CleanupSettings
    model_path: Path
    model_sha256: str

    @classmethod
    def load(cls, model: str | Path | None = None, device: str = "auto",
             cleanup: CleanupSettings | None = None, threads: int = 0) -> Segmenter:
        """Load a model.

        Parameters
        ----------
        model : a LeftAtriumSeg model file (safetensors), a model id of the catalogue
            (``models.read_catalogue``; downloaded on first use), or None for the catalogue's default
        device : ``auto`` (CUDA where onnxruntime has it, else CPU), ``cpu`` or ``cuda``
        cleanup : cleanup settings; ``CleanupSettings()`` when None
        threads : CPU threads for the networks, 0 for one per physical core

        Raises
        ------
        ModelFileError
            For a file that is not a usable LeftAtriumSeg model.
        ValueError
            For a device onnxruntime cannot use here.
        """
        path = model_path(model)
        networks, config = load_onnx_networks(path, device, threads)
        return cls(networks, config, cleanup or CleanupSettings(), path, model_file_sha256(path))

    def segment(self, image: sitk.Image, progress: ProgressCallback | None = None) -> Segmentation:
        """Segment the left atrium of a checked 3D image (``io.read_image``, ``io.check_image``).

        ``progress``, if given, is called with the fraction done (0-1).
        """
        prediction = predict(image, self.networks, self.config, progress)
        mask = clean_mask(sitk.GetArrayViewFromImage(prediction.probability_map), image.GetSpacing(), self.cleanup)
        volume = measure_volume(mask, image.GetSpacing())
        frame = prediction.frame
        signals = QualitySignals(volume.volume_ml, frame.view_agreement, frame.box_contact, edge_contact(mask),
                                 frame.uncertain_share, frame.faint_share, si_rl_extent_ratio(mask, image))
        return Segmentation(mask, volume, signals, check_quality(signals))
