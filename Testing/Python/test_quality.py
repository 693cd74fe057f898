"""The quality flag: each signal beyond its threshold flags the result with its reason; a clean
phantom passes, a phantom whose atrium the field of view cuts off is flagged, end to end."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ellipsoid_phantom
from test_inference import CentreSliceLogits

from LeftAtriumSegLib.inference import voxels_on_faces
from LeftAtriumSegLib.model_file import ModelConfig
from LeftAtriumSegLib.pipeline import Segmenter, edge_contact
from LeftAtriumSegLib.postprocessing import CleanupSettings
from LeftAtriumSegLib.preprocessing import VIEW_AXES
from LeftAtriumSegLib.quality import (
    FLATTEST_PLAUSIBLE_ATRIUM,
    LOWEST_VIEW_AGREEMENT,
    MOST_BOX_CONTACT_VOXELS,
    MOST_EDGE_CONTACT_VOXELS,
    MOST_FAINT_SHARE,
    MOST_UNCERTAIN_SHARE,
    SMALLEST_PLAUSIBLE_VOLUME_ML,
    QualitySignals,
    check_quality,
    reason_counts,
)


def test_contact_counts_each_voxel_on_the_faces_once():
    assert edge_contact(np.ones((3, 3, 3), bool)) == 26  # all but the centre
    assert edge_contact(np.ones((1, 1, 1), bool)) == 1
    assert edge_contact(np.ones((2, 5, 5), bool)) == 50
    corner = np.zeros((4, 4, 4), bool)
    corner[0, 0, 0] = True
    assert edge_contact(corner) == 1
    assert voxels_on_faces(np.ones((4, 4, 4), bool), [(0, 1), (2, 0)]) == 16 + 16 - 4
    assert voxels_on_faces(np.ones((4, 4, 4), bool), []) == 0


def test_signals_within_their_thresholds_pass():
    check = check_quality(QualitySignals(60.0, 1.0, 0, 0))
    assert (check.flag, check.reasons, str(check)) == ("ok", (), "ok")


@pytest.mark.parametrize("signals, reason", [
    (QualitySignals(SMALLEST_PLAUSIBLE_VOLUME_ML - 0.1), "atrium probably missed"),
    (QualitySignals(60.0, view_agreement=LOWEST_VIEW_AGREEMENT - 0.01), "the three views' networks disagree"),
    (QualitySignals(60.0, box_contact=MOST_BOX_CONTACT_VOXELS + 1), "the edge of the region the networks searched"),
    (QualitySignals(60.0, edge_contact=MOST_EDGE_CONTACT_VOXELS + 1), "the edge of the scan"),
    (QualitySignals(60.0, uncertain_share=MOST_UNCERTAIN_SHARE + 0.01), "the networks are unsure of much of the atrium"),
    (QualitySignals(60.0, faint_share=MOST_FAINT_SHARE + 0.01), "the networks half believe much of the mask"),
    (QualitySignals(60.0, si_rl_extent_ratio=FLATTEST_PLAUSIBLE_ATRIUM - 0.01), "are the header's slice spacing and orientation right?"),
])
def test_each_signal_beyond_its_threshold_flags_the_result_with_its_reason(signals, reason):
    check = check_quality(signals)
    assert check.flag == "review" and len(check.reasons) == 1 and reason in check.reasons[0]
    assert str(check).startswith("review (")


def test_a_small_flat_mask_is_called_missed_alone():
    small = check_quality(QualitySignals(SMALLEST_PLAUSIBLE_VOLUME_ML - 1, si_rl_extent_ratio=0.3))
    assert len(small.reasons) == 1 and "atrium probably missed" in small.reasons[0]


@pytest.mark.parametrize("signals, shown", [
    (QualitySignals(60.0, si_rl_extent_ratio=0.4972), "extent 0.497 of the right-left, under 0.5"),
    (QualitySignals(60.0, si_rl_extent_ratio=0.29), "extent 0.29 of the right-left, under 0.5"),
    (QualitySignals(60.0, faint_share=0.2404), "(0.2404 of its voxels have probability under 0.8, over 0.24)"),
    (QualitySignals(60.0, view_agreement=0.7996), "(agreement 0.7996, under 0.8)"),
    (QualitySignals(60.0, uncertain_share=0.61), "(0.61 voxels of probability 0.2-0.5 per voxel segmented, over 0.45)"),
])
def test_a_signal_beyond_its_threshold_is_never_shown_at_it(signals, shown):
    [reason] = check_quality(signals).reasons
    assert shown in reason


def test_an_empty_mask_is_flagged_as_missed_without_a_share_of_nothing():
    """Its uncertain voxels were given 'per voxel segmented': 281248.00 of them, for none segmented."""
    check = check_quality(QualitySignals(0.0, uncertain_share=281248.0, faint_share=1.0, si_rl_extent_ratio=0.0))
    assert len(check.reasons) == 1 and "atrium probably missed" in check.reasons[0]


def _phantom_segmenter() -> Segmenter:
    """The pipeline with stand-in networks that see the phantom's bright ellipsoid (z-score over 1) and not its noise."""
    config = ModelConfig(views=tuple(VIEW_AXES))
    return Segmenter({view: CentreSliceLogits(config.slices, offset=-4.0) for view in config.views}, config, CleanupSettings(),
                     model_path=None, model_sha256="")


def test_a_clean_phantom_is_not_flagged():
    image, mask, radii = ellipsoid_phantom(size=(80, 72, 48), radii_mm=(20.0, 16.0, 14.0))
    result = _phantom_segmenter().segment(image)
    assert result.volume.volume_ml == pytest.approx(4 / 3 * np.pi * np.prod(radii) / 1000, rel=0.05)
    assert result.signals.si_rl_extent_ratio == pytest.approx(14.0 / 20.0, abs=0.1)
    assert result.signals.view_agreement > 0.95 and result.signals.box_contact == 0 == result.signals.edge_contact
    assert result.quality.flag == "ok"


def test_a_phantom_whose_atrium_the_field_of_view_cuts_off_is_flagged():
    image, _, _ = ellipsoid_phantom(size=(80, 72, 48), radii_mm=(20.0, 16.0, 14.0))
    cut = image[:, :, 18:]  # the scan's lower slices miss part of the ellipsoid
    result = _phantom_segmenter().segment(cut)
    assert result.signals.edge_contact > 0
    assert result.quality.flag == "review" and any("the edge of the scan" in reason for reason in result.quality.reasons)


def test_a_phantom_whose_header_states_half_its_slice_spacing_is_flagged():
    """Axial slices 3 mm apart stated as 1.5 mm: the atrium (radii 20 mm right-left, 14 mm superior-inferior)
    measures half as tall and half its volume, as la2018_lge's files do."""
    axial = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    scanned, _, radii = ellipsoid_phantom(size=(80, 72, 24), radii_mm=(20.0, 16.0, 14.0), spacing=(1.0, 1.0, 3.0),
                                          direction=axial)
    stated = sitk.Image(scanned)
    stated.SetSpacing((1.0, 1.0, 1.5))
    result = _phantom_segmenter().segment(stated)
    assert result.volume.volume_ml == pytest.approx(4 / 3 * np.pi * np.prod(radii) / 1000 / 2, rel=0.1)
    assert result.signals.si_rl_extent_ratio == pytest.approx(7.0 / 20.0, abs=0.1)
    assert result.quality.flag == "review" and any("slice spacing" in reason for reason in result.quality.reasons)
    assert _phantom_segmenter().segment(scanned).quality.flag == "ok"


def test_reasons_are_counted_by_their_headings_most_frequent_first():
    flat = check_quality(QualitySignals(60.0, si_rl_extent_ratio=0.3))
    flat_and_cut = check_quality(QualitySignals(60.0, edge_contact=4, si_rl_extent_ratio=0.42))
    assert reason_counts([flat.reasons_text, "", flat_and_cut.reasons_text]) == (
        "2 the mask is flat for its width, 1 the mask reaches the edge of the scan")
    assert reason_counts([]) == reason_counts(["", ""]) == ""
