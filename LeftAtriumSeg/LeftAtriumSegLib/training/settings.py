"""The training settings: one frozen record of every choice that shapes the trained weights.

``training.json`` and every checkpoint store them; a resumed run must have the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingSettings:
    """How each view's network is trained.

    Attributes
    ----------
    iterations : int
        Optimiser steps per network.
    batch_size : int
        Crops per step.
    crop_size : int
        Height and width of each crop, in model-frame voxels.
    learning_rate : float
        Peak learning rate of AdamW (``loop.learning_rate_at``).
    warmup_iterations : int
        Steps of linear warm-up before the cosine decay.
    foreground_fraction : float
        Share of crops centred on a voxel of the atrium; the others are centred anywhere.
    max_rotation_deg : float
        In-plane rotation of each crop, uniform in +-this many degrees.
    max_scaling : float
        Isotropic scaling of each crop, uniform in 1 +- this.
    max_gain_change, max_offset : float
        Intensity jitter: x U(1 - gain, 1 + gain), then + U(-offset, offset) in z-score units.
    gamma_probability : float
        Share of crops whose intensities go through a gamma curve (``augmentation.random_gamma``).
    min_gamma, max_gamma : float
        The gamma's range; half of the gammas drawn lie under 1, half over.
    random_orientation : bool
        Present each crop in one of the 48 axis orders and flips of the model frame.
    bfloat16 : bool
        Run the forward pass in bfloat16 where autocast allows (convolutions).
    fractional_labels : bool
        Targets from the mask's share of each model-frame voxel, cut at 0.5 only after each
        crop's rotation and scaling; otherwise cut when the case is prepared.
    seed : int
        Seeds torch (initial weights) and the crop sampler.
    checkpoint_every : int
        Steps between checkpoints.
    """

    iterations: int = 4800
    batch_size: int = 16
    crop_size: int = 96
    learning_rate: float = 2e-3
    warmup_iterations: int = 100
    foreground_fraction: float = 2 / 3
    max_rotation_deg: float = 15.0
    max_scaling: float = 0.15
    # The z-score depends on the field of view; cropping a volume from 224 to 160 voxels shifted
    # it by gains of 0.87-0.96 and offsets down to -0.52 (la_003, la_007, la_010), hence the
    # wide offset.
    max_gain_change: float = 0.2
    max_offset: float = 0.6
    # Gain and offset are linear; a sequence or a scanner also bends the intensity curve (gamma
    # 1.6 over a scan cost bSSFP 0.07 Dice, docs/model-development.md, "Presentations a scan may
    # come in"). The range is nnU-Net's GammaTransform's, which it applies to 30 % of samples
    # (its second, inverted-image gamma is not done here). Off (0) for 1.8.
    gamma_probability: float = 0.0
    min_gamma: float = 0.7
    max_gamma: float = 1.5
    # A header may orient the anatomy any way (Task02_Heart's call sagittal slices axial), and a
    # network that saw one order misses the others. Off: at 2,400 iterations it cut
    # cross-validated Dice from 0.920 to 0.776 (docs/model-development.md, "Training variants").
    random_orientation: bool = False
    # Off: the trained model then does not depend on the CPU's instructions (on an AVX2-only CPU
    # autocast emulates bfloat16, 10-14x slower than float32), and bfloat16 training
    # cross-validated slightly worse (docs/model-development.md, "Training variants").
    bfloat16: bool = False
    # Off: a cut when the case is prepared keeps every voxel that is exactly half inside, which
    # grows la2018_lge's 0.625 mm masks by 2.0 mL, but fractions did not lower the three-view
    # model's volume error (docs/model-development.md, "Training targets").
    fractional_labels: bool = False
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        # Checked before any work: a zero count or a gain that flips intensities would otherwise
        # fail, or train on nonsense, an hour in.
        limits = {"iterations": (1 <= self.iterations <= 1_000_000, "between 1 and 1000000"),
                  "batch_size": (self.batch_size >= 1, "at least 1"),
                  "crop_size": (self.crop_size >= 1, "at least 1"),
                  "checkpoint_every": (self.checkpoint_every >= 1, "at least 1"),
                  "max_gain_change": (0 <= self.max_gain_change < 1, "at least 0 and under 1"),
                  "max_offset": (0 <= self.max_offset <= 5, "between 0 and 5 (z-score units)"),
                  "gamma_probability": (0 <= self.gamma_probability <= 1, "a share between 0 and 1"),
                  "min_gamma": (0 < self.min_gamma <= 1, "over 0 and at most 1"),
                  "max_gamma": (1 <= self.max_gamma <= 10, "between 1 and 10"),
                  "seed": (0 <= self.seed < 2**32, "a whole number from 0 to 4294967295")}
        for name, (valid, rule) in limits.items():
            if not valid:
                raise ValueError(f"training setting {name} must be {rule}, not {getattr(self, name)!r}")


# Settings added since runs were first recorded, with the value those runs trained with: a record
# or checkpoint that lacks one still describes the same training, and can be resumed.
ADDED_SETTINGS = {"gamma_probability": 0.0, "min_gamma": 0.7, "max_gamma": 1.5}


def as_recorded_now(stored: dict) -> dict:
    """Settings as a record or checkpoint stored them, completed with ``ADDED_SETTINGS``: comparable
    with ``TrainingSettings.__dict__``."""
    return {**ADDED_SETTINGS, **stored}
