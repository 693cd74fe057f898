"""The module's MRML logic against real MRML (the slicer-core package), outside the Slicer app, and
the route of Apply as far as it runs here: the volume written by its own storage node as Slicer's
CLI logic writes it, the worker run with the arguments Slicer builds from its XML, the label map
read back by a storage node, the result put into a segment and measured."""

import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPOSITORY, SAMPLE_IMAGE, ellipsoid_phantom

slicer = pytest.importorskip("slicer", reason="slicer-core is installed by `make test`")
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

sys.path.insert(0, str(REPOSITORY / "LeftAtriumSeg"))
import LeftAtriumSegMRML as mrml  # noqa: E402

from LeftAtriumSegLib.cli import main  # noqa: E402
from LeftAtriumSegLib.io import LEFT_ATRIUM_TERMINOLOGY, read_mask  # noqa: E402
from LeftAtriumSegLib.metrics import dice  # noqa: E402

mrml.register_segmentation_converters()


def add_volume_node(scene, image: sitk.Image, name="volume"):
    """A scalar volume node holding ``image``'s voxels on its exact geometry (LPS -> RAS)."""
    voxels = sitk.GetArrayFromImage(image)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*voxels.shape[::-1])
    image_data.AllocateScalars(numpy_support.get_vtk_array_type(voxels.dtype), 1)
    numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())[:] = voxels.ravel()
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = mrml.RAS_TO_LPS @ np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    ijk_to_ras[:3, 3] = mrml.RAS_TO_LPS @ np.array(image.GetOrigin())
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(ijk_to_ras.ravel())
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image_data)
    node.SetIJKToRASMatrix(matrix)
    return node


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def phantom():
    return ellipsoid_phantom(size=(80, 72, 48), radii_mm=(20.0, 16.0, 14.0))


def test_volume_node_becomes_an_image_on_the_same_geometry(scene, phantom):
    image, _, _ = phantom
    round_trip = mrml.image_from_volume_node(add_volume_node(scene, image))
    assert round_trip.GetSize() == image.GetSize()
    assert round_trip.GetSpacing() == pytest.approx(image.GetSpacing())
    assert round_trip.GetOrigin() == pytest.approx(image.GetOrigin())
    assert round_trip.GetDirection() == pytest.approx(image.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(round_trip), sitk.GetArrayViewFromImage(image))


def test_segment_lands_on_the_volume_grid_with_name_colour_and_terminology(scene, phantom):
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segment_id = mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "Left atrium"
    assert segment.GetTerminology() == LEFT_ATRIUM_TERMINOLOGY
    np.testing.assert_array_equal(mrml.mask_from_segment(segmentation_node, segment_id, volume_node), mask)
    # Setting it again replaces the segment rather than adding another.
    mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0


def _under_transform(scene, node, translate_mm=(20.0, -10.0, 5.0), rotate_z_deg=30.0):
    transform = vtk.vtkTransform()
    transform.Translate(*translate_mm)
    transform.RotateZ(rotate_z_deg)
    transform_node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform_node.SetMatrixTransformToParent(transform.GetMatrix())
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    return transform_node


def _stored_geometry(segmentation_node) -> np.ndarray:
    """The reference grid Segment Editor edits on, as the segmentation stores it (its frame)."""
    serialized = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    grid = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, grid, False)
    matrix = vtk.vtkMatrix4x4()
    grid.GetImageToWorldMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_a_new_segmentation_of_a_transformed_volume_goes_under_its_transform_with_its_grid(scene, phantom):
    """The grid was stored mapped through the transform, then put under it: Segment Editor edited a
    copy of the scan rotated 30 degrees and shifted, the transform applied twice."""
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    transform_node = _under_transform(scene, volume_node)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")

    mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)

    assert segmentation_node.GetTransformNodeID() == transform_node.GetID()
    np.testing.assert_allclose(_stored_geometry(segmentation_node), mrml._ijk_to_ras(volume_node), atol=1e-6)
    np.testing.assert_array_equal(mrml.mask_from_segment(segmentation_node, mrml.LEFT_ATRIUM_SEGMENT_ID, volume_node),
                                  mask)


def test_a_segmentation_holding_other_segments_keeps_its_place_and_takes_the_mask_in_its_frame(scene, phantom):
    """Put under the volume's transform, a picked segmentation's other segments moved with it."""
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    _under_transform(scene, volume_node, translate_mm=(50.0, 0.0, 0.0), rotate_z_deg=0.0)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation_node.GetSegmentation().SetSourceRepresentationName(mrml.LABELMAP)
    segmentation_node.GetSegmentation().AddEmptySegment("other")
    untransformed_volume = add_volume_node(scene, image, "untransformed")
    untransformed = mrml._oriented_labelmap(mask, untransformed_volume, segmentation_node)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        untransformed, segmentation_node, "other", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        untransformed.GetExtent())

    mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)

    assert segmentation_node.GetTransformNodeID() is None
    np.testing.assert_array_equal(mrml.mask_from_segment(segmentation_node, "other", untransformed_volume), mask)
    np.testing.assert_array_equal(mrml.mask_from_segment(segmentation_node, mrml.LEFT_ATRIUM_SEGMENT_ID, volume_node),
                                  mask)
    np.testing.assert_allclose(_stored_geometry(segmentation_node)[:3, 3],
                               mrml._ijk_to_ras(untransformed_volume)[:3, 3] + [50.0, 0.0, 0.0], atol=1e-6)


def test_a_segmentation_set_apart_by_a_non_linear_transform_is_refused_untouched(scene, phantom):
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "atlas")
    segmentation_node.GetSegmentation().AddEmptySegment("other")
    warp = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    volume_node.SetAndObserveTransformNodeID(warp.GetID())
    for call in (lambda: mrml.check_takes_mask(segmentation_node, volume_node),  # before the worker runs
                 lambda: mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)):
        with pytest.raises(ValueError, match="a non-linear transform lies between volume and atlas"):
            call()
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 1


def _made_by_the_module(scene, image, mask, name="volume"):
    """A volume, and a segmentation and table filled from it as Apply fills them."""
    volume_node = add_volume_node(scene, image, name)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} left atrium")
    mrml.import_result(mask, volume_node, segmentation_node, {"model": "LeftAtriumSeg 1.8", "qc": "ok", "qcReasons": ""})
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} left atrium volume")
    mrml.measure_left_atrium(segmentation_node, volume_node, table_node)
    return volume_node, segmentation_node, table_node


def test_what_a_result_was_made_from_survives_saving_and_adding_the_scene_to_another(scene, phantom):
    """The panel lets go of outputs made from another volume when the input changes: kept in the
    widget, that record was lost on reload, and an added scene's node IDs matched the current run's."""
    image, mask, _ = phantom
    saved = slicer.vtkMRMLScene()
    _made_by_the_module(saved, image, mask, "saved")
    saved.SetSaveToXMLString(1)
    saved.Commit()
    volume_node, segmentation_node, table_node = _made_by_the_module(scene, image, mask, "current")

    scene.SetLoadFromXMLString(1)
    scene.SetSceneXMLString(saved.GetSceneXMLString())
    scene.Import()

    added_volume = scene.GetFirstNodeByName("saved")
    added = [scene.GetFirstNodeByName("saved left atrium"), scene.GetFirstNodeByName("saved left atrium volume")]
    assert added_volume.GetID() != volume_node.GetID()
    for output in added:
        assert not mrml.made_from_another(output, added_volume)
        assert mrml.made_from_another(output, volume_node)
    for output in (segmentation_node, table_node):
        assert not mrml.made_from_another(output, volume_node)
        assert mrml.made_from_another(output, added_volume)
    assert not mrml.measures_another(added[1], added[0]) and mrml.measures_another(added[1], segmentation_node)
    assert not mrml.measures_another(table_node, segmentation_node) and mrml.measures_another(table_node, None)
    assert not mrml.made_from_another(scene.AddNewNodeByClass("vtkMRMLSegmentationNode"), volume_node)  # the user's


def test_a_segment_edited_since_it_was_made_holds_corrections_and_an_untouched_one_does_not(scene, phantom):
    """Apply into a segmentation replaces its "Left atrium" segment: edits would be lost without a word."""
    image, mask, _ = phantom
    volume_node, segmentation_node, _ = _made_by_the_module(scene, image, mask)
    other_volume = add_volume_node(scene, image, "another")
    assert not mrml.holds_corrections(segmentation_node, volume_node)
    assert mrml.holds_corrections(segmentation_node, other_volume)

    edited = mask.copy()
    edited[tuple(np.argwhere(mask)[0])] = False  # one voxel erased, as a stroke of Segment Editor's eraser
    mrml.set_left_atrium_segment(edited, volume_node, segmentation_node)
    assert mrml.holds_corrections(segmentation_node, volume_node)

    drawn = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")  # a "Left atrium" segment drawn by hand
    mrml.set_left_atrium_segment(mask, volume_node, drawn)
    assert mrml.holds_corrections(drawn, volume_node)
    assert not mrml.holds_corrections(scene.AddNewNodeByClass("vtkMRMLSegmentationNode"), volume_node)


def test_a_column_the_user_added_to_the_table_is_kept_through_measurements(scene, phantom):
    image, mask, _ = phantom
    volume_node, segmentation_node, table_node = _made_by_the_module(scene, image, mask)
    notes = table_node.AddColumn()
    notes.SetName("Notes")
    table_node.SetCellText(0, table_node.GetNumberOfColumns() - 1, "veins trimmed by hand")
    edited = mask.copy()
    edited[: mask.shape[0] // 2] = False
    mrml.set_left_atrium_segment(edited, volume_node, segmentation_node)
    row = mrml.measure_left_atrium(segmentation_node, volume_node, table_node)
    names = [table_node.GetColumnName(i) for i in range(table_node.GetNumberOfColumns())]
    assert names == [*(column.name for column in mrml.MEASUREMENT_COLUMNS), "Notes"]
    assert table_node.GetNumberOfRows() == 1 and table_node.GetCellText(0, names.index("Notes")) == "veins trimmed by hand"
    assert row["Voxel count"] == np.count_nonzero(edited) == int(table_node.GetCellText(0, names.index("Voxel count")))

    segmentation_node.GetSegmentation().RemoveSegment(mrml.LEFT_ATRIUM_SEGMENT_ID)
    with pytest.raises(ValueError, match="has no 'Left atrium' segment"):
        mrml.measure_left_atrium(segmentation_node, volume_node, table_node)
    assert table_node.GetNumberOfRows() == 1 and table_node.GetCellText(0, names.index("Notes")) == "veins trimmed by hand"
    assert table_node.GetCellText(0, names.index("Volume [mL]")) == ""  # no stale measurement beside the note


def test_another_modules_table_is_refused_and_a_removed_segment_leaves_no_stale_row(scene, phantom):
    image, mask, _ = phantom
    volume_node, segmentation_node, table_node = _made_by_the_module(scene, image, mask)
    statistics = scene.AddNewNodeByClass("vtkMRMLTableNode", "Segment statistics")
    for name in ("Segment", "Number of voxels", "Surface area mm2", "Roundness"):
        statistics.AddColumn().SetName(name)
    with pytest.raises(ValueError, match=r"Segment statistics holds another table \(columns Segment, Number of "
                                         r"voxels, Surface area mm2, \.\.\.\); choose another table"):
        mrml.measure_left_atrium(segmentation_node, volume_node, statistics)
    assert statistics.GetNumberOfColumns() == 4

    unrelated = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "heart")  # no atrium; the table measured another
    with pytest.raises(ValueError, match="heart: has no 'Left atrium' segment"):
        mrml.measure_left_atrium(unrelated, volume_node, table_node)
    assert table_node.GetNumberOfRows() == 1

    segmentation_node.GetSegmentation().RemoveSegment(mrml.LEFT_ATRIUM_SEGMENT_ID)
    with pytest.raises(ValueError, match="has no 'Left atrium' segment"):
        mrml.measure_left_atrium(segmentation_node, volume_node, table_node)
    assert table_node.GetNumberOfRows() == 0


def test_a_volume_whose_image_data_holds_no_voxels_is_refused_in_words(scene):
    volume_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    volume_node.SetAndObserveImageData(vtk.vtkImageData())
    with pytest.raises(ValueError, match="^empty: the volume has no image data$"):
        mrml.image_from_volume_node(volume_node)


def test_a_segmentation_of_surfaces_is_refused_and_an_empty_one_takes_the_mask(scene, phantom):
    """Put into a segmentation kept as surfaces, the mask was lost and the segment measured 0 mL."""
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    surfaces = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "heart model")
    surfaces.GetSegmentation().SetSourceRepresentationName("Closed surface")
    surfaces.GetSegmentation().AddEmptySegment("ventricle")
    with pytest.raises(ValueError, match="heart model keeps its segments as Closed surface, not as label maps"):
        mrml.set_left_atrium_segment(mask, volume_node, surfaces)
    assert surfaces.GetSegmentation().GetNumberOfSegments() == 1

    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    empty.GetSegmentation().SetSourceRepresentationName("Closed surface")
    segment_id = mrml.set_left_atrium_segment(mask, volume_node, empty)
    np.testing.assert_array_equal(mrml.mask_from_segment(empty, segment_id, volume_node), mask)


def test_table_reports_the_analytic_volume_and_follows_an_edit(scene, phantom):
    image, mask, radii = phantom
    volume_node = add_volume_node(scene, image)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)

    segmentation_node.SetAttribute(mrml.RESULT_ATTRIBUTES["model"], "LeftAtriumSeg 1")
    row = mrml.measure_left_atrium(segmentation_node, volume_node, table_node, 180, 80)
    assert row["Model"] == "LeftAtriumSeg 1" and row["Quality check"] == ""
    voxel_ml = np.prod(image.GetSpacing()) / 1000
    assert row["Volume [mL]"] == pytest.approx(4 / 3 * math.pi * np.prod(radii) / 1000, rel=0.02)
    assert row["Voxel count"] == np.count_nonzero(mask)
    assert row["Volume [mL]"] == pytest.approx(np.count_nonzero(mask) * voxel_ml)
    assert row["BSA [m2]"] == pytest.approx(2.0)
    assert row["LA volume index [mL/m2]"] == round(row["Volume [mL]"] / 2.0, 1)
    assert table_node.GetCellText(0, 0) == "Left atrium"
    assert float(table_node.GetCellText(0, 3)) == pytest.approx(row["Volume [mL]"], rel=1e-5)
    assert table_node.GetColumnUnitLabel("Volume [mL]") == "mL"

    # An edit: erase the upper half of the atrium, as a Segment Editor stroke would.
    edited = mask.copy()
    edited[mask.shape[0] // 2:] = False
    mrml.set_left_atrium_segment(edited, volume_node, segmentation_node)
    row = mrml.measure_left_atrium(segmentation_node, volume_node, table_node)
    assert row["Voxel count"] == np.count_nonzero(edited)
    assert float(table_node.GetCellText(0, 3)) == pytest.approx(np.count_nonzero(edited) * voxel_ml, rel=1e-5)
    assert table_node.GetCellText(0, 4) == ""  # no height or weight: no BSA
    with pytest.raises(ValueError, match="height 2 cm is outside"):  # 1.72 m typed into a whole-cm box
        mrml.measure_left_atrium(segmentation_node, volume_node, table_node, height_cm=2, weight_kg=70)

    # Erased entirely, it measures 0 mL; removed, it is named as missing.
    mrml.set_left_atrium_segment(np.zeros_like(mask), volume_node, segmentation_node)
    assert mrml.measure_left_atrium(segmentation_node, volume_node, table_node)["Volume [mL]"] == 0
    segmentation_node.SetName("atrium seg")
    segmentation_node.GetSegmentation().RemoveSegment(mrml.LEFT_ATRIUM_SEGMENT_ID)
    with pytest.raises(ValueError, match=r"^atrium seg: has no 'Left atrium' segment to measure"):
        mrml.measure_left_atrium(segmentation_node, volume_node, table_node)


def test_segmentation_saves_to_seg_nrrd_and_loads_back_identically(scene, phantom, tmp_path):
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segment_id = mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)
    path = str(tmp_path / "atrium.seg.nrrd")
    writer = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    writer.SetFileName(path)
    assert writer.WriteData(segmentation_node)

    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(path)
    assert reader.ReadData(loaded)
    segment = loaded.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "Left atrium"
    assert segment.GetTerminology() == LEFT_ATRIUM_TERMINOLOGY
    np.testing.assert_array_equal(mrml.mask_from_segment(loaded, segment_id, volume_node), mask)


def test_segment_output_loads_in_slicers_storage_node_as_its_mask(scene, sample_image, tmp_path):
    """What `segment` writes is what a Slicer user opens: one "Left atrium" segment, its terminology,
    the mask's voxels on the scan's grid."""
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(tmp_path), "--quiet"]) == 0
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(tmp_path / "la_022_crop.seg.nrrd"))
    assert reader.ReadData(loaded)
    segmentation = loaded.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "Left atrium" and segment.GetTerminology() == LEFT_ATRIUM_TERMINOLOGY
    volume_node = add_volume_node(scene, sample_image)
    mask = mrml.mask_from_segment(loaded, segmentation.GetNthSegmentID(0), volume_node)
    written = sitk.GetArrayFromImage(read_mask(tmp_path / "la_022_crop.seg.nrrd")) > 0
    assert mask.sum() > 10_000
    np.testing.assert_array_equal(mask, written)


def test_real_model_segments_the_sample_on_an_oblique_grid(scene, sample_image, sample_label, segmenter):
    """The sample, resampled onto an oblique anisotropic grid, is segmented on that grid."""
    rotation = sitk.VersorRigid3DTransform((0.0, 0.0, 0.0, 1.0))
    rotation.SetRotation((0.3, 0.2, 1.0), 0.35)
    direction = tuple(np.array(rotation.GetMatrix()).reshape(3, 3).ravel())
    spacing = (1.1, 1.3, 1.6)
    size = [int(n * s / t) for n, s, t in zip(sample_image.GetSize(), sample_image.GetSpacing(), spacing)]
    centre = np.array(sample_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in sample_image.GetSize()]))
    origin = centre - np.array(direction).reshape(3, 3) @ ((np.array(size) - 1) / 2 * np.array(spacing))
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(direction)
    oblique_image = sitk.Resample(sample_image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    label_image = sitk.GetImageFromArray(sample_label.astype(np.uint8))
    label_image.CopyInformation(sample_image)
    oblique_label = sitk.GetArrayFromImage(sitk.Resample(label_image, grid, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0

    volume_node = add_volume_node(scene, oblique_image)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    mask = segmenter.segment(mrml.image_from_volume_node(volume_node)).mask
    segment_id = mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)
    predicted = mrml.mask_from_segment(segmentation_node, segment_id, volume_node)
    assert predicted.shape == oblique_label.shape
    assert dice(predicted, oblique_label) >= 0.85


def test_show_table_switches_to_a_layout_with_a_table_view_and_shows_the_table_there(scene):
    """The conventional layout has no table view: a table selected for none is shown nowhere."""
    application_logic = slicer.vtkMRMLApplicationLogic()
    application_logic.SetMRMLScene(scene)
    layout_logic = slicer.vtkMRMLLayoutLogic()  # makes the view nodes a layout needs, as in the application
    layout_logic.SetMRMLScene(scene)
    layout_node = layout_logic.GetLayoutNode()
    layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode")
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableViewNode") == 0

    mrml.show_table(table_node, application_logic)
    assert layout_node.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView
    [table_view] = [scene.GetNthNodeByClass(i, "vtkMRMLTableViewNode")
                    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableViewNode"))]
    assert table_view.GetTableNodeID() == table_node.GetID()

    # A layout that already shows a table view (the layout manager maps it) is kept.
    layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayout3DTableView)
    table_view.SetMappedInLayout(True)
    other_table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml.show_table(other_table, application_logic)
    assert layout_node.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayout3DTableView
    assert table_view.GetTableNodeID() == other_table.GetID()


WORKER = REPOSITORY / "LeftAtriumSegCLI" / "LeftAtriumSegCLI.py"


def _worker_arguments(values: dict) -> list:
    """The worker's command line as Slicer's CLI logic builds it from the module's XML: each
    parameter with a value as ``--longflag value``; return parameters through --returnparameterfile."""
    root = ElementTree.parse(WORKER.with_suffix(".xml")).getroot()
    arguments = []
    for parameter in root.iter():
        name, flag = parameter.findtext("name"), parameter.findtext("longflag")
        if name in values and flag:
            arguments += [f"--{flag}", str(values[name])]
    return arguments


def _return_parameters(path) -> dict:
    """The return parameter file read as ModuleDescription::ReadParameterFile reads it: ``key = value``."""
    parameters = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        parameters[key.strip()] = value.strip()
    return parameters


def test_apply_route_segments_the_sample_through_the_worker(scene, tmp_path, sample_label):
    from conftest import SAMPLE_IMAGE

    volume_reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    volume_reader.SetFileName(str(SAMPLE_IMAGE))
    volume_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sample")
    assert volume_reader.ReadData(volume_node)
    # The CLI logic writes each input node with its default storage node, configured for data exchange.
    writer = volume_node.CreateDefaultStorageNode()
    writer.ConfigureForDataExchange()
    writer.SetFileName(str(tmp_path / "input.nrrd"))
    assert writer.WriteData(volume_node)

    returned = tmp_path / "returned.params"
    arguments = _worker_arguments({"inputVolume": tmp_path / "input.nrrd", "outputLabel": tmp_path / "label.nrrd",
                                   "device": "cpu", "cleanupOptions": "--threshold 0.5"})
    result = subprocess.run([sys.executable, str(WORKER), *arguments, "--returnparameterfile", str(returned)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # Slicer reads the last <filter-progress>...</filter-progress> it has seen as the fraction done.
    fractions = [float(value) for value in re.findall(r"<filter-progress>([^<]*)</filter-progress>", result.stdout)]
    assert len(fractions) >= 5 and fractions == sorted(fractions) and fractions[-1] == 1.0
    said = _return_parameters(returned)
    assert said["qc"] == "ok" and said["qcReasons"] == "" and said["model"].startswith("LeftAtriumSeg ")

    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    label_reader = labelmap_node.CreateDefaultStorageNode()
    label_reader.SetFileName(str(tmp_path / "label.nrrd"))
    assert label_reader.ReadData(labelmap_node)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    mrml.import_result(mrml.mask_from_labelmap_node(labelmap_node, volume_node), volume_node, segmentation_node, said)
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode")
    row = mrml.measure_left_atrium(segmentation_node, volume_node, table_node)
    predicted = mrml.mask_from_segment(segmentation_node, mrml.LEFT_ATRIUM_SEGMENT_ID, volume_node)
    assert dice(predicted, sample_label) >= 0.85
    assert row["Quality check"] == "ok" and row["Model"] == said["model"]
    assert row["Volume [mL]"] == pytest.approx(np.count_nonzero(predicted) * np.prod(volume_node.GetSpacing()) / 1000)


def test_worker_fails_with_one_line_and_a_non_zero_status(tmp_path):
    """Slicer marks a run CompletedWithErrors on a non-zero exit and keeps its standard error; the
    module shows the last 'error:' line."""
    constant = sitk.Image((40, 40, 40), sitk.sitkInt16)
    sitk.WriteImage(constant, str(tmp_path / "input.nrrd"))
    arguments = _worker_arguments({"inputVolume": tmp_path / "input.nrrd", "outputLabel": tmp_path / "label.nrrd"})
    result = subprocess.run([sys.executable, str(WORKER), *arguments], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'input.nrrd'}: image has constant intensity, "
                                                  "there is nothing to segment"]
    assert not (tmp_path / "label.nrrd").exists()


def test_worker_takes_what_its_panel_may_send_and_says_each_refusal_in_one_line(tmp_path):
    """The worker's own panel in Slicer (or slicer.cli.run) can send what the module never does: a
    one-word cleanup option was taken for an option of the worker's (five lines of usage), 64
    threads on two cores ran 25 times slower, a return-parameter file that cannot be written gave
    Python's words without its name."""
    from conftest import SAMPLE_IMAGE

    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_IMAGE)), str(tmp_path / "input.nrrd"))
    returned = tmp_path / "gone" / "returned.params"
    arguments = _worker_arguments({"inputVolume": tmp_path / "input.nrrd", "outputLabel": tmp_path / "label.nrrd",
                                   "cleanupOptions": "--no-fill-holes", "threads": 64})
    result = subprocess.run([sys.executable, str(WORKER), *arguments, "--returnparameterfile", str(returned)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {returned}: the return parameters cannot be written (No such file or directory)")
    assert "note: --threads 64 capped at the" in result.stderr and (tmp_path / "label.nrrd").is_file()

    for values, error in (({"threads": -1}, "error: argument --threads: a count >= 0 (0: ONNX Runtime's default), "
                                             "not -1"),
                          ({"outputLabel": tmp_path / "input.nrrd" / "label.nrrd"},
                           f"error: {tmp_path / 'input.nrrd'}: not a folder; the label map cannot be written there")):
        arguments = _worker_arguments({"inputVolume": tmp_path / "input.nrrd", "outputLabel": tmp_path / "l.nrrd",
                                       **values})
        result = subprocess.run([sys.executable, str(WORKER), *arguments], capture_output=True, text=True, timeout=300)
        assert result.returncode in (1, 2) and result.stderr.strip().splitlines() == [error]


def test_worker_label_map_off_the_volume_grid_is_refused(scene, phantom):
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    shifted = sitk.Image(image)
    shifted.SetOrigin([o + 5 for o in image.GetOrigin()])
    labelmap_node = add_volume_node(scene, sitk.Cast(shifted > 200, sitk.sitkUInt8), "label")
    with pytest.raises(ValueError, match="does not lie on the grid of volume"):
        mrml.mask_from_labelmap_node(labelmap_node, volume_node)


def test_an_edit_of_the_segment_fires_an_event_the_module_measures_again_on(scene, phantom):
    """Segment Editor's strokes change the segment's labelmap (SetBinaryLabelmapToSegment here, as
    the editor's effects do): SegmentModified alone never fired for them, so the table stayed as it
    was after the first stroke."""
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)
    fired = []
    segmentation = segmentation_node.GetSegmentation()
    for event in mrml.SEGMENT_EDIT_EVENTS:
        segmentation.AddObserver(event, lambda caller, event_name: fired.append(event_name))
    for stroke in range(3):
        edited = mask.copy()
        edited[: 5 + stroke] = False
        mrml.set_left_atrium_segment(edited, volume_node, segmentation_node)
    assert len(fired) >= 3
    fired.clear()
    segmentation.RemoveSegment(mrml.LEFT_ATRIUM_SEGMENT_ID)  # then the table must say it has nothing to measure
    assert fired


def test_the_workers_label_map_goes_with_its_display_and_storage_nodes(scene, phantom, tmp_path):
    image, mask, _ = phantom
    path = tmp_path / "label.nrrd"
    label = sitk.GetImageFromArray(mask.astype(np.uint8))
    label.CopyInformation(image)
    sitk.WriteImage(label, str(path))
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    reader = labelmap_node.CreateDefaultStorageNode()  # as the CLI logic reads an output back
    scene.AddNode(reader)
    labelmap_node.SetAndObserveStorageNodeID(reader.GetID())
    reader.SetFileName(str(path))
    assert reader.ReadData(labelmap_node)
    labelmap_node.CreateDefaultDisplayNodes()
    mrml.remove_with_its_nodes(labelmap_node)
    for node_class in ("vtkMRMLLabelMapVolumeNode", "vtkMRMLVolumeArchetypeStorageNode", "vtkMRMLLabelMapVolumeDisplayNode"):
        assert scene.GetNumberOfNodesByClass(node_class) == 0, node_class


def test_a_segmentation_and_a_table_go_with_their_display_nodes(scene, phantom):
    """What the logic's failed import calls (LeftAtriumSeg.py _importResult) on the segmentation and
    table it made: nothing of them is left in the scene. The failure path itself needs slicer.app."""
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation_node.CreateDefaultDisplayNodes()
    mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml.measure_left_atrium(segmentation_node, volume_node, table_node)
    for node in (segmentation_node, table_node):
        mrml.remove_with_its_nodes(node)
    for node_class in ("vtkMRMLSegmentationNode", "vtkMRMLSegmentationDisplayNode", "vtkMRMLTableNode"):
        assert scene.GetNumberOfNodesByClass(node_class) == 0, node_class


def test_measuring_leaves_no_node_behind(scene, phantom):
    """The table re-measures after every burst of edits: each export of the segment must take its
    label map, display node and the colour table Slicer's export adds with it away again."""
    image, mask, _ = phantom
    volume_node = add_volume_node(scene, image)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segment_id = mrml.set_left_atrium_segment(mask, volume_node, segmentation_node)
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml.measure_left_atrium(segmentation_node, volume_node, table_node)  # makes the display and hierarchy nodes once
    before = scene.GetNumberOfNodes()
    for _ in range(3):
        mrml.mask_from_segment(segmentation_node, segment_id, volume_node)
        mrml.measure_left_atrium(segmentation_node, volume_node, table_node)
    added = [scene.GetNthNode(i).GetClassName() for i in range(before, scene.GetNumberOfNodes())]
    assert added == [], added


class WorkerEnding:
    """Plays the end of Slicer's CLI logic thread for one run of the worker, a command-line module
    (``vtkSlicerCLIModuleLogic::ApplyTask``, v5.10.0), which slicer-core cannot run
    (docs/slicer-api.md). Statuses are set without events from this thread, as the logic sets them.

    - ``"too late"``: the worker had ended and the logic had passed its check of *Completing*
      (L2058) when the cancel came: it queues the read-backs one by one, each recorded as the run's
      last request (L2090-2091): the return parameters into the CLI node and the label map
      (``nodesToReload`` is a map by node ID, L865, L1251), then the label map's place in the
      subject hierarchy (L2210-2211). The node is set *Completed* when the request just processed
      is the last one recorded (``ProcessMRMLLogicsEvents`` L2426-2443), here after the first when
      ``gap_s`` lets it run before the next is queued.
    - ``"overridden"``: a cancel that came while the input was written is lost: the logic sets
      *Running* (L1695-1698); cancelled again, the worker is killed (L1769-1776) and the node set
      *Cancelled* (L1879-1882), nothing read back.
    """

    def __init__(self, cli_node, application_logic, labelmap_node, input_node, path, how: str, gap_s: float = 0.0):
        import threading

        self.cli_node, self.application_logic, self.how, self.gap_s = cli_node, application_logic, how, gap_s
        self.labelmap_id, self.input_id, self.path = labelmap_node.GetID(), input_node.GetID(), str(path)
        self.queued = self.processed = 0
        application_logic.AddObserver(slicer.vtkSlicerApplicationLogic.RequestProcessedEvent, self._processed)
        self.thread = threading.Thread(target=self._end)

    def _processed(self, caller, event):
        self.processed += 1  # requests run in the order queued: this one is the last recorded when the counts agree
        if self.processed == self.queued and self.cli_node.IsBusy():
            self.cli_node.SetStatus(self.cli_node.Completed)

    def _end(self):
        import time

        node, logic = self.cli_node, self.application_logic
        time.sleep(0.1)
        if self.how == "overridden":
            node.SetStatus(node.Running, False)
            for _ in range(200):
                time.sleep(0.01)
                if node.GetStatus() == node.Cancelling:
                    node.SetStatus(node.Cancelled, False)
                    return
            return
        parameters = Path(self.path).with_suffix(".params")
        parameters.write_text("qc = ok\n")
        for request in (lambda: logic.RequestReadFile(node.GetID(), str(parameters), 0, 0),
                        lambda: logic.RequestReadFile(self.labelmap_id, self.path, 0, 0),
                        lambda: logic.RequestUpdateSubjectHierarchyLocation(self.labelmap_id, self.input_id)):
            self.queued += 1
            request()
            time.sleep(self.gap_s)


@pytest.fixture()
def worker_run(tmp_path):
    """A scene with Slicer's application logic, a CLI node, the input volume and the label map its
    worker writes."""
    scene = slicer.vtkMRMLScene()
    scene.SetCacheManager(slicer.vtkCacheManager())  # the read request asks it whether a file is remote
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    application_logic.CreateProcessingThread()  # opens the read-data queue
    input_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scan")
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "worker output")
    path = tmp_path / "label.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), str(path))
    cli_node = slicer.vtkMRMLCommandLineModuleNode()
    scene.AddNode(cli_node)
    yield application_logic, cli_node, labelmap_node, input_node, path
    application_logic.TerminateProcessingThread()


@pytest.mark.parametrize("gap_s", [0.0, 0.05], ids=["reads-queued-at-once", "completed-after-the-first-read"])
def test_a_cancelled_worker_is_waited_for_until_its_late_read_backs_have_run(worker_run, gap_s):
    """A cancel that comes after the worker ended: Slicer still queues the read-backs, later. Had the
    module removed the label map before its read ran, the read would have crashed Slicer (a null
    node, ReadDataRequestFile::Execute; checked under slicer-core: exit by SIGSEGV). ``gap_s``
    widens the moment in which the logic has marked the run done after its first read."""
    application_logic, cli_node, labelmap_node, input_node, path = worker_run
    cli_node.SetStatus(cli_node.Completing, False)
    ending = WorkerEnding(cli_node, application_logic, labelmap_node, input_node, path, "too late", gap_s)
    ending.thread.start()
    assert mrml.end_worker(cli_node, application_logic, timeout_s=10)
    assert ending.processed == ending.queued == 3  # every read-back ran while its nodes were there
    ending.thread.join()
    assert labelmap_node.GetImageData().GetDimensions() == (6, 5, 4)
    assert not cli_node.IsBusy() and application_logic.GetReadDataQueueSize() == 0
    mrml.remove_with_its_nodes(labelmap_node)  # what the module does next: nothing is left to read into it


def test_a_cancel_the_worker_overrode_is_sent_again(worker_run):
    application_logic, cli_node, labelmap_node, input_node, path = worker_run
    cli_node.SetStatus(cli_node.Scheduled, False)
    ending = WorkerEnding(cli_node, application_logic, labelmap_node, input_node, path, "overridden")
    ending.thread.start()
    assert mrml.end_worker(cli_node, application_logic, timeout_s=10)
    ending.thread.join()
    assert cli_node.GetStatus() == cli_node.Cancelled
    assert labelmap_node.GetImageData() is None  # killed: nothing read back


def test_a_worker_that_does_not_end_is_given_up_after_the_timeout(worker_run):
    application_logic, cli_node, labelmap_node, input_node, path = worker_run
    cli_node.SetStatus(cli_node.Running, False)
    assert not mrml.end_worker(cli_node, application_logic, timeout_s=0.2)
    assert cli_node.GetStatus() == cli_node.Cancelling
