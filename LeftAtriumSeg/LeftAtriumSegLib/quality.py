"""The quality flag: whether a person must look at a segmentation before its volume is used.

A result is ``ok`` or ``review``; ``review`` comes with the reasons, in words a reader of
``volumes.csv``, the Slicer table or the report can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

# Adult left atria measure 20-200 mL; a mask under this has most likely missed the atrium
# (a scan in an orientation the model never saw, or no heart in the field of view).
SMALLEST_PLAUSIBLE_VOLUME_ML = 5.0


@dataclass(frozen=True)
class QualityCheck:
    """The reasons to review a result; none: ``ok``."""

    reasons: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """``review`` where there is a reason, else ``ok``."""
        return "review" if self.reasons else "ok"

    def __str__(self) -> str:
        return self.flag + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def check_quality(volume_ml: float) -> QualityCheck:
    """The quality flag of a segmentation of ``volume_ml`` millilitres."""
    reasons = []
    if volume_ml < SMALLEST_PLAUSIBLE_VOLUME_ML:
        reasons.append(f"under {SMALLEST_PLAUSIBLE_VOLUME_ML:g} mL: atrium probably missed (is the heart in the "
                       "field of view, in an orientation the model knows?)")
    return QualityCheck(tuple(reasons))
