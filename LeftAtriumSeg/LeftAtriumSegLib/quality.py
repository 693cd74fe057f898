"""The quality flag: whether a person must look at a segmentation before its volume is used.

A result is ``ok`` or ``review``; ``review`` comes with the reasons, in words a reader of
``volumes.csv``, the Slicer table or the report can act on. The signals are what the model says
of its own output (``inference.FramePrediction``, ``pipeline.edge_contact``) and the mask's
shape in the patient's axes, which betrays a header's mis-stated slice spacing; the thresholds
were set on cross-validation held-out cases only (the model card, "Quality flag", has the
cases, the signals and the command that measured them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# Adult left atria measure 20-200 mL; a mask under this has most likely missed the atrium
# (a scan in an orientation the model never saw, or no heart in the field of view).
SMALLEST_PLAUSIBLE_VOLUME_ML = 5.0
# Below this Dice between one view's mask and the three views' mean, the views disagree on the atrium.
LOWEST_VIEW_AGREEMENT = 0.80
# Mask voxels on the faces of the box the views predicted, after it grew: atrium cut off by the box.
MOST_BOX_CONTACT_VOXELS = 0
# Mask voxels on the scan's outer faces: atrium cut off by the field of view.
MOST_EDGE_CONTACT_VOXELS = 0
# Voxels the networks half see (probability 0.2-0.5) per voxel they segment: atrium half missed.
MOST_UNCERTAIN_SHARE = 0.45
# Share of the mask's voxels under probability 0.8: a mask the networks only half believe.
MOST_FAINT_SHARE = 0.24
# Superior-inferior over right-left extent below this: a mask squashed by a header that states
# half the slice spacing of axial slices (la2018_lge's files), which halves the volume too, or that
# calls another axis superior-inferior; or an atrium partly missed.
FLATTEST_PLAUSIBLE_ATRIUM = 0.5


@dataclass(frozen=True)
class QualitySignals:
    """What one segmentation says of its own reliability.

    volume_ml : the mask's volume
    view_agreement : the smallest Dice between one view's mask and the mean's (1: all agree)
    box_contact : mask voxels on the predicted box's faces inside the volume
    edge_contact : mask voxels on the scan's outer faces
    uncertain_share : voxels of probability 0.2-0.5 per mask voxel, in the model frame
    faint_share : the share of the mask's voxels under probability 0.8, in the model frame
    si_rl_extent_ratio : the mask's superior-inferior extent over its right-left one, in mm along the
        patient's axes as the header states them (``measurements.patient_axis_extents_mm``)
    """

    volume_ml: float
    view_agreement: float = 1.0
    box_contact: int = 0
    edge_contact: int = 0
    uncertain_share: float = 0.0
    faint_share: float = 0.0
    si_rl_extent_ratio: float = 1.0


# Between a result's reasons where they are one text: volumes.csv's qc_reasons, the Slicer table.
REASON_SEPARATOR = "; "


@dataclass(frozen=True)
class QualityCheck:
    """The reasons to review a result; none: ``ok``."""

    reasons: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """``review`` where there is a reason, else ``ok``."""
        return "review" if self.reasons else "ok"

    @property
    def reasons_text(self) -> str:
        """The reasons as one text, as ``volumes.csv`` and the Slicer table hold them."""
        return REASON_SEPARATOR.join(self.reasons)

    def __str__(self) -> str:
        return self.flag + (f" ({self.reasons_text})" if self.reasons else "")


def _beside(value: float, limit: float) -> str:
    """``value`` with two decimals, or as many more as it takes not to read as ``limit`` (0.2404
    is "over 0.24", not "0.24, over 0.24")."""
    for decimals in range(2, 7):
        if float(shown := f"{value:.{decimals}f}") != limit:
            return shown
    return shown


def check_quality(signals: QualitySignals) -> QualityCheck:
    """The quality flag of a segmentation, from its signals."""
    reasons = []
    if signals.volume_ml < SMALLEST_PLAUSIBLE_VOLUME_ML:
        reasons.append(f"under {SMALLEST_PLAUSIBLE_VOLUME_ML:g} mL: atrium probably missed (is the heart in the "
                       "field of view, in an orientation the model knows?)")
    if signals.view_agreement < LOWEST_VIEW_AGREEMENT:
        reasons.append(f"the three views' networks disagree (agreement {_beside(signals.view_agreement, LOWEST_VIEW_AGREEMENT)}, "
                       f"under {LOWEST_VIEW_AGREEMENT:g}): part of the atrium may be missed or added")
    if signals.box_contact > MOST_BOX_CONTACT_VOXELS:
        reasons.append(f"the mask reaches the edge of the region the networks searched ({signals.box_contact} voxels): "
                       "part of the atrium may be cut off")
    # Shares of an empty mask measure nothing (its uncertain voxels were counted per one voxel).
    if signals.uncertain_share > MOST_UNCERTAIN_SHARE and signals.volume_ml > 0:
        reasons.append(f"the networks are unsure of much of the atrium ({_beside(signals.uncertain_share, MOST_UNCERTAIN_SHARE)} voxels of "
                       f"probability 0.2-0.5 per voxel segmented, over {MOST_UNCERTAIN_SHARE:g}): part may be missed")
    if signals.faint_share > MOST_FAINT_SHARE and signals.volume_ml > 0:
        reasons.append(f"the networks half believe much of the mask ({_beside(signals.faint_share, MOST_FAINT_SHARE)} of its voxels have "
                       f"probability under 0.8, over {MOST_FAINT_SHARE:g}): part of the atrium may be missed or added")
    # A mask already called missed needs no second guess at why.
    if signals.si_rl_extent_ratio < FLATTEST_PLAUSIBLE_ATRIUM and signals.volume_ml >= SMALLEST_PLAUSIBLE_VOLUME_ML:
        reasons.append(f"the mask is flat for its width (superior-inferior extent "
                       f"{_beside(signals.si_rl_extent_ratio, FLATTEST_PLAUSIBLE_ATRIUM)} of the right-left, under "
                       f"{FLATTEST_PLAUSIBLE_ATRIUM:g}): are the header's slice spacing and orientation right? The "
                       "volume scales with the spacing. Else part of the atrium may be missed")
    if signals.edge_contact > MOST_EDGE_CONTACT_VOXELS:
        reasons.append(f"the mask reaches the edge of the scan ({signals.edge_contact} voxels): the atrium may "
                       "extend beyond the field of view")
    return QualityCheck(tuple(reasons))


def reason_counts(reasons_texts: Iterable[str]) -> str:
    """How many results give each reason, most frequent first: ``25 the mask is flat for its
    width, 4 the mask reaches the edge of the scan``. A reason most of a cohort shares points at
    its scans (a converter's header, a protocol's field of view) more than at the model.

    Parameters
    ----------
    reasons_texts : iterable of str
        Each result's reasons as one text (``QualityCheck.reasons_text``, ``volumes.csv``'s
        ``qc_reasons``), empty for none; each reason is counted by its heading, its words before
        the figures in brackets.
    """
    headings = Counter(reason.split(" (")[0] for text in reasons_texts if text
                       for reason in text.split(REASON_SEPARATOR))
    return ", ".join(f"{count} {heading}" for heading, count in headings.most_common())
