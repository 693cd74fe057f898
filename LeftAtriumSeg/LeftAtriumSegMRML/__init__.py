"""The MRML half of the module's logic: volume nodes to images, masks to segments, tables.

Uses only MRML and VTK calls that both the Slicer application and the ``slicer-core``
package provide (no ``slicer.app``, ``slicer.modules``, ``slicer.util`` or Qt), so it is
tested outside the application. The scene is always taken from the nodes given.

Arrays are indexed ``[z, y, x]`` (``[k, j, i]``) as in ``slicer.util.arrayFromVolume``.
SimpleITK images are in LPS; MRML is in RAS.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from LeftAtriumSegLib.io import LEFT_ATRIUM_SEGMENT, LEFT_ATRIUM_TERMINOLOGY
from LeftAtriumSegLib.measurements import ASE_2005_LAVI_GRADES, ASE_2005_SOURCE, measure_atrium

LEFT_ATRIUM_SEGMENT_ID = LEFT_ATRIUM_SEGMENT["id"]
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# What the worker said of the segmentation it made, kept on the segmentation node so that the
# table shows it after every edit: the model that made it, its quality flag and the reasons.
RESULT_ATTRIBUTES = {"model": "LeftAtriumSeg.Model", "qc": "LeftAtriumSeg.QualityCheck",
                     "qcReasons": "LeftAtriumSeg.QualityReasons"}
# The volume a segmentation's "Left atrium" segment, or a table's measurement, was made from: a node
# reference, which a saved scene keeps and an imported one remaps to the imported nodes
# (vtkMRMLScene.cxx v5.10.0 L894, UpdateNodeReferences).
MADE_FROM_ROLE = "LeftAtriumSeg.madeFrom"
# The segment's mask on that volume's grid as the module put it there, to tell an edited one.
MASK_DIGEST_ATTRIBUTE = "LeftAtriumSeg.MaskSHA256"
# The segmentation a table's measurement was made of: a table follows the segmentation chosen.
MEASURED_ROLE = "LeftAtriumSeg.measured"
# What a segmentation fires when a segment is edited: Segment Editor's strokes change the source
# representation (SourceRepresentationModified); SegmentModified comes only with a change of the
# segment itself, such as its name or tags; SegmentRemoved when one is deleted (vtkSegmentation.h:
# docs/slicer-api.md).
SEGMENT_EDIT_EVENTS = (slicer.vtkSegmentation.SourceRepresentationModified, slicer.vtkSegmentation.SegmentModified,
                       slicer.vtkSegmentation.SegmentRemoved)


LABELMAP = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()


def register_segmentation_converters() -> None:
    """Register the labelmap/surface converter rules once; the Slicer application does this
    itself at start-up, plain ``slicer-core`` needs it before any segmentation is displayed
    as a surface."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {rule.GetName() for rule in factory.GetConverterRules()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(),
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule()):
        if rule.GetName() not in registered:
            factory.RegisterConverterRule(rule)


def _ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def image_from_volume_node(volume_node) -> sitk.Image:
    """A SimpleITK image (LPS) with the voxels and exact geometry of a scalar volume node."""
    image_data = volume_node.GetImageData() if volume_node is not None else None
    if image_data is None:
        raise ValueError("no input volume selected, or the volume has no image data")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"{volume_node.GetName()}: has {image_data.GetNumberOfScalarComponents()} components per voxel, a scalar volume is needed")
    dimensions = image_data.GetDimensions()
    scalars = image_data.GetPointData().GetScalars()
    if scalars is None or scalars.GetNumberOfTuples() != np.prod(dimensions) or not all(dimensions):
        raise ValueError(f"{volume_node.GetName()}: the volume has no image data")
    voxels = numpy_support.vtk_to_numpy(scalars).reshape(dimensions[::-1])
    image = sitk.GetImageFromArray(voxels.copy())
    ijk_to_ras = _ijk_to_ras(volume_node)
    spacing = np.array(volume_node.GetSpacing())
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((RAS_TO_LPS @ ijk_to_ras[:3, 3]).tolist())
    image.SetDirection((RAS_TO_LPS @ (ijk_to_ras[:3, :3] / spacing)).ravel().tolist())
    return image


def _volume_to_segmentation(volume_node, segmentation_node):
    """The matrix from the volume's frame to the segmentation's: identity under one transform; the
    same matrix with which ``SetReferenceImageGeometryParameterFromVolumeNode`` maps the volume's
    grid into the segmentation's frame (vtkMRMLSegmentationNode.cxx v5.10.0 L764-773).

    Raises
    ------
    ValueError
        Where a non-linear transform lies between them.
    """
    matrix = vtk.vtkMatrix4x4()
    volume_parent, segmentation_parent = volume_node.GetParentTransformNode(), segmentation_node.GetParentTransformNode()
    if volume_parent != segmentation_parent:
        between = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volume_parent, segmentation_parent, between)
        if not slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(between):
            raise ValueError(f"a non-linear transform lies between {volume_node.GetName()} and "
                             f"{segmentation_node.GetName()}; choose a segmentation under the volume's transform, "
                             "or none to have a new one made")
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(volume_parent, segmentation_parent, matrix)
    return matrix


def _oriented_labelmap(mask: np.ndarray, volume_node, segmentation_node):
    """``slicer.vtkOrientedImageData`` of a ``(Z, Y, X)`` mask on the volume node's grid, in the
    segmentation node's frame, where a segment's label map lies (``_volume_to_segmentation``)."""
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetDimensions(*mask.shape[::-1])
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    image_to_world = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(image_to_world)
    vtk.vtkMatrix4x4.Multiply4x4(_volume_to_segmentation(volume_node, segmentation_node), image_to_world,
                                 image_to_world)
    labelmap.SetImageToWorldMatrix(image_to_world)
    return labelmap


def check_takes_labelmaps(segmentation_node) -> None:
    """Raise ValueError for a segmentation that keeps its segments as another representation than
    label maps (surfaces made from models, say): a mask put into it would be lost, the segment left
    empty and measured as 0 mL (vtkSegmentationModifier.cxx v5.10.0 L90, "Failed to get binary
    labelmap representation"). One without segments takes label maps (``set_left_atrium_segment``)."""
    segmentation = segmentation_node.GetSegmentation()
    kept_as = segmentation.GetSourceRepresentationName()
    if kept_as != LABELMAP and segmentation.GetNumberOfSegments() > 0:
        raise ValueError(f"{segmentation_node.GetName()} keeps its segments as {kept_as}, not as label maps; "
                         "choose another segmentation, or none to have a new one made")


def _segments_besides_the_atrium(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
            if segmentation.GetNthSegmentID(i) != LEFT_ATRIUM_SEGMENT_ID]


def check_takes_mask(segmentation_node, volume_node) -> None:
    """Raise ValueError for a segmentation that ``set_left_atrium_segment`` would refuse: one that
    does not keep label maps, or holds other segments under a transform that is non-linear
    against the volume's."""
    check_takes_labelmaps(segmentation_node)
    if _segments_besides_the_atrium(segmentation_node):
        _volume_to_segmentation(volume_node, segmentation_node)


def set_left_atrium_segment(mask: np.ndarray, volume_node, segmentation_node) -> str:
    """Put a ``(Z, Y, X)`` mask on ``volume_node``'s grid into the "Left atrium" segment.

    The segment is created (name, colour, SNOMED terminology) if missing, replaced if
    present; other segments are left alone, and so is the transform of a segmentation that holds
    them: one that holds none is put under the volume's. Returns the segment ID.

    Raises
    ------
    ValueError
        For a mask off the volume's grid, a segmentation that does not keep label maps
        (``check_takes_labelmaps``), or one a non-linear transform sets apart from the volume.
    """
    image_data = volume_node.GetImageData()
    if mask.shape != image_data.GetDimensions()[::-1]:
        raise ValueError(f"mask shape {mask.shape} does not match the volume {image_data.GetDimensions()[::-1]}")
    check_takes_mask(segmentation_node, volume_node)
    segmentation = segmentation_node.GetSegmentation()
    if not _segments_besides_the_atrium(segmentation_node):  # it moves with the volume; others' stay put
        segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    labelmap = _oriented_labelmap(mask, volume_node, segmentation_node)
    segmentation.SetSourceRepresentationName(LABELMAP)  # so it was, or it has no segment
    # After the transform: Segment Editor edits on this grid, the volume's mapped into the
    # segmentation's frame (vtkMRMLSegmentationNode.cxx v5.10.0 L764-773).
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if segmentation.GetSegment(LEFT_ATRIUM_SEGMENT_ID) is None:
        segmentation.AddEmptySegment(LEFT_ATRIUM_SEGMENT_ID, LEFT_ATRIUM_SEGMENT["name"], LEFT_ATRIUM_SEGMENT["color"])
    segment = segmentation.GetSegment(LEFT_ATRIUM_SEGMENT_ID)
    segment.SetTag(segment.GetTerminologyEntryTagName(), LEFT_ATRIUM_TERMINOLOGY)
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, segmentation_node, LEFT_ATRIUM_SEGMENT_ID,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, labelmap.GetExtent()):
        raise RuntimeError(f"the left atrium could not be put into {segmentation_node.GetName()} (see the log)")
    return LEFT_ATRIUM_SEGMENT_ID


def mask_from_labelmap_node(labelmap_node, volume_node) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask of a label map node that lies on ``volume_node``'s grid (the
    worker's output, which Slicer reads back from the file the worker wrote)."""
    image_data = labelmap_node.GetImageData() if labelmap_node is not None else None
    if image_data is None:
        raise ValueError("the segmentation worker returned no label map")
    shape = image_data.GetDimensions()[::-1]
    if shape != volume_node.GetImageData().GetDimensions()[::-1] or not np.allclose(
            _ijk_to_ras(labelmap_node), _ijk_to_ras(volume_node), atol=1e-3):
        raise ValueError(f"the segmentation worker's label map ({shape}) does not lie on the grid of "
                         f"{volume_node.GetName()}; was the volume changed during segmentation?")
    return numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(shape) > 0


def import_result(mask: np.ndarray, volume_node, segmentation_node, result: dict) -> None:
    """Put the worker's mask (``mask_from_labelmap_node``) into the "Left atrium" segment and keep
    what it said of it.

    ``result``: the worker's return parameters (``model``, ``qc``, ``qcReasons``).
    """
    set_left_atrium_segment(mask, volume_node, segmentation_node)
    for key, attribute in RESULT_ATTRIBUTES.items():
        segmentation_node.SetAttribute(attribute, result.get(key, ""))
    segmentation_node.SetNodeReferenceID(MADE_FROM_ROLE, volume_node.GetID())
    # As read back (a segmentation under another transform holds it resampled), not as given.
    segmentation_node.SetAttribute(MASK_DIGEST_ATTRIBUTE, _mask_digest(
        mask_from_segment(segmentation_node, LEFT_ATRIUM_SEGMENT_ID, volume_node)))


def _mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(repr(mask.shape).encode() + np.packbits(mask).tobytes()).hexdigest()


def made_from_another(node, volume_node) -> bool:
    """Whether a segmentation's "Left atrium" segment, or a table's measurement, was made by the
    module from another volume than ``volume_node`` (False for a node it did not make)."""
    made_from = node.GetNodeReferenceID(MADE_FROM_ROLE)
    return made_from is not None and made_from != (volume_node.GetID() if volume_node is not None else None)


def holds_corrections(segmentation_node, volume_node) -> bool:
    """Whether segmenting ``volume_node`` into ``segmentation_node`` would replace a "Left atrium"
    segment other than the one the module made from that volume: one edited since, made from
    another volume, or made by other means."""
    if not has_left_atrium_segment(segmentation_node):
        return False
    made = segmentation_node.GetAttribute(MASK_DIGEST_ATTRIBUTE)
    if not made or segmentation_node.GetNodeReferenceID(MADE_FROM_ROLE) != volume_node.GetID():
        return True
    return _mask_digest(mask_from_segment(segmentation_node, LEFT_ATRIUM_SEGMENT_ID, volume_node)) != made


def has_left_atrium_segment(segmentation_node) -> bool:
    return segmentation_node.GetSegmentation().GetSegment(LEFT_ATRIUM_SEGMENT_ID) is not None


def measures_another(table_node, segmentation_node) -> bool:
    """Whether a table holds the module's measurement of another segmentation than the one given
    (False for a table it did not write)."""
    measured = table_node.GetNodeReferenceID(MEASURED_ROLE)
    return measured is not None and measured != (segmentation_node.GetID() if segmentation_node is not None else None)


def check_takes_measurements(table_node) -> None:
    """Raise ValueError for a table that holds another table than the module's measurements (one of
    Segment Statistics, say): writing the measurement would erase it."""
    names = [table_node.GetColumnName(i) for i in range(table_node.GetNumberOfColumns())]
    if names and table_node.GetNodeReferenceID(MADE_FROM_ROLE) is None and \
            names != [column.name for column in MEASUREMENT_COLUMNS]:
        raise ValueError(f"{table_node.GetName()} holds another table (columns {', '.join(names[:3])}"
                         f"{', ...' if len(names) > 3 else ''}); choose another table, or none to have a new one made")


def remove_with_its_nodes(node) -> None:
    """Remove a node and the display and storage nodes it refers to, which the scene keeps otherwise
    (a CLI's output read back into a node gets both; a table has no display node)."""
    scene = node.GetScene()
    if scene is None:
        return
    helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
        if node.IsA("vtkMRMLDisplayableNode") else []
    if node.IsA("vtkMRMLStorableNode"):
        helpers.append(node.GetStorageNode())
    for helper in helpers:
        if helper is not None:
            scene.RemoveNode(helper)
    scene.RemoveNode(node)


def cancel_if_running(cli_node, event=None) -> None:
    """Cancel a CLI module's run that shows *Running*: the CLI logic sets *Running* after writing
    the input, over a cancel that came meanwhile (docs/slicer-api.md). Also a status observer."""
    if cli_node.GetStatus() == cli_node.Running:
        cli_node.Cancel()


def end_worker(cli_node, application_logic, timeout_s: float, settle_s: float = 0.25) -> bool:
    """Cancel a CLI module's run and wait until Slicer is done with it, reading back now whatever it
    queues for the run's nodes. Returns False if the run is still busy after ``timeout_s``.

    Slicer's CLI logic queues the read-backs of a run from its own thread once the worker has
    ended (``vtkSlicerCLIModuleLogic::ApplyTask``), and each read looks its node up by ID when it
    runs, with no check that the node is still there (``ReadDataRequestFile``): a read that runs
    after the run's nodes are removed, or after a scene close, crashes Slicer or fills another node
    (docs/slicer-api.md). A cancel may come too late (the worker has ended) or be overridden (the
    logic sets *Running* after writing the input); the run is cancelled again whenever it shows
    *Running*. The logic queues a run's reads one by one and may mark the run *Completed* when the
    first has run before it queues the next, so the queue is drained for ``settle_s`` more once
    the run is no longer busy. The application's event loop is not entered: called from a scene
    close, nothing else may run.
    """
    deadline = time.monotonic() + timeout_s
    cli_node.Cancel()
    settled = None  # when the run was first seen no longer busy
    while True:
        cancel_if_running(cli_node)
        while application_logic.GetReadDataQueueSize():
            application_logic.ProcessReadData()  # the CLI logic sets Completed once the last read queued has run
        now = time.monotonic()
        if cli_node.IsBusy():
            settled = None
            if now >= deadline:
                return False
        elif settled is None:
            settled = now
        elif now - settled >= settle_s:
            return True
        time.sleep(0.01)  # lets the CLI logic's thread move on


def show_table(table_node, application_logic) -> None:
    """Show ``table_node`` in the table views of the layout, first switching to the four-up layout
    with a table (vtkMRMLLayoutNode.SlicerLayoutFourUpTableView) when no table view is shown: the
    conventional layout has none, and a table selected for no view is shown nowhere."""
    scene = table_node.GetScene()
    table_views = [scene.GetNthNodeByClass(i, "vtkMRMLTableViewNode")
                   for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableViewNode"))]
    if not any(view.IsMappedInLayout() for view in table_views):
        layout_node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layout_node is not None:
            layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    application_logic.GetSelectionNode().SetActiveTableID(table_node.GetID())
    application_logic.PropagateTableSelection()


def mask_from_segment(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask of a segment resampled onto ``volume_node``'s grid."""
    scene = segmentation_node.GetScene()
    colour_nodes_before = {scene.GetNthNodeByClass(i, "vtkMRMLColorNode").GetID()
                           for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorNode"))}
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        segment_ids = vtk.vtkStringArray()
        segment_ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, segment_ids, labelmap_node, volume_node):
            raise ValueError(f"segment {segment_id!r} could not be exported on the volume's grid")
        image_data = labelmap_node.GetImageData()
        voxels = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
        return voxels.reshape(image_data.GetDimensions()[::-1]) > 0
    finally:
        # The export gives the label map a display node and a new "_ColorTable" node of its own
        # (vtkSlicerSegmentationsModuleLogic.cxx v5.10.0 L1236-1245), which would pile up in the
        # scene with every measurement: both go with it, as in slicer.util.arrayFromSegmentBinaryLabelmap
        # (util.py v5.10.0 L2190), but never a colour node that was there before (the default labels).
        display_node = labelmap_node.GetDisplayNode()
        if display_node is not None:
            colour_node = display_node.GetColorNode()
            if colour_node is not None and colour_node.GetID() not in colour_nodes_before:
                scene.RemoveNode(colour_node)
            scene.RemoveNode(display_node)
        scene.RemoveNode(labelmap_node)


@dataclass(frozen=True)
class MeasurementColumn:
    name: str
    unit: str
    description: str


MEASUREMENT_COLUMNS = (
    MeasurementColumn("Segment", "", "Segment name"),
    MeasurementColumn("Voxel count", "voxels", "Number of voxels of the segment on the input volume's grid"),
    MeasurementColumn("Volume [mm3]", "mm3", "Segment volume: voxel count x voxel volume (SCT 118565006)"),
    MeasurementColumn("Volume [mL]", "mL", "Segment volume in millilitres (SCT 118565006)"),
    MeasurementColumn("BSA [m2]", "m2", "Body surface area, Mosteller: sqrt(height cm x weight kg / 3600)"),
    MeasurementColumn("LA volume index [mL/m2]", "mL/m2", "Left-atrial volume divided by body surface area"),
    MeasurementColumn("LAVI grade", "", "Grade of the LA volume index"),
    MeasurementColumn("Grade reference", "", "Source of the grading thresholds"),
    MeasurementColumn("Quality check", "", "The model's quality flag of its segmentation, before any edit: "
                                           "ok, or review (look at it before using its volume)"),
    MeasurementColumn("Reasons to review", "", "Why the model's segmentation is flagged for review"),
    MeasurementColumn("Model", "", "Model that produced the initial segmentation"),
)


def measure_left_atrium(
    segmentation_node, volume_node, table_node, height_cm: float = 0.0, weight_kg: float = 0.0,
    lavi_grades: tuple[tuple[float, str], ...] = ASE_2005_LAVI_GRADES, grade_source: str = ASE_2005_SOURCE,
) -> dict:
    """Measure the segment as it now stands and write one row into ``table_node``.

    BSA, LAVI and grade are filled when both height and weight are given (> 0); the quality flag
    and the model are what the worker said of the segmentation (``import_result``). Returns the
    row as a dict.

    Raises
    ------
    ValueError
        For a table that holds another table (``check_takes_measurements``), or a segmentation
        without the "Left atrium" segment; then a table that measured this segmentation is left
        with no row, not with the measurement of a segment that is gone (one that measured
        another is left alone).
    """
    check_takes_measurements(table_node)
    segment = segmentation_node.GetSegmentation().GetSegment(LEFT_ATRIUM_SEGMENT_ID)
    if segment is None:
        if table_node.GetNumberOfColumns() and not measures_another(table_node, segmentation_node):
            _write_table_row(table_node, None)
        raise ValueError(f"{segmentation_node.GetName()}: has no {LEFT_ATRIUM_SEGMENT['name']!r} segment to measure "
                         "(was it removed? Apply segments it again)")
    mask = mask_from_segment(segmentation_node, LEFT_ATRIUM_SEGMENT_ID, volume_node)
    measurement = measure_atrium(mask, volume_node.GetSpacing(), height_cm, weight_kg, lavi_grades)
    volume, index = measurement.volume, measurement.index
    said = {key: segmentation_node.GetAttribute(attribute) or "" for key, attribute in RESULT_ATTRIBUTES.items()}
    row = {"Segment": segment.GetName(), "Voxel count": volume.voxel_count,
           "Volume [mm3]": volume.volume_mm3, "Volume [mL]": volume.volume_ml,
           "BSA [m2]": "", "LA volume index [mL/m2]": "", "LAVI grade": "", "Grade reference": "",
           "Quality check": said["qc"], "Reasons to review": said["qcReasons"], "Model": said["model"]}
    if index is not None:
        row.update({"BSA [m2]": index.bsa_m2, "LA volume index [mL/m2]": index.ml_per_m2,
                    "LAVI grade": index.grade, "Grade reference": grade_source})
    _write_table_row(table_node, row)
    table_node.SetNodeReferenceID(MADE_FROM_ROLE, volume_node.GetID())
    table_node.SetNodeReferenceID(MEASURED_ROLE, segmentation_node.GetID())
    return row


def _write_table_row(table_node, row: dict | None) -> None:
    """The measurement columns with ``row``'s values, or with no row. Columns the user added (a
    note on the corrections, say) are kept with their values, after the measurement's; their rows
    keep the measurement's columns that many rows long, empty beyond the first."""
    table = table_node.GetTable()
    ours = {column.name for column in MEASUREMENT_COLUMNS}
    kept = [table.GetColumn(i) for i in range(table.GetNumberOfColumns()) if table.GetColumnName(i) not in ours]
    rows = max([0 if row is None else 1, *(array.GetNumberOfTuples() for array in kept)])
    was_modifying = table_node.StartModify()
    table.Initialize()
    for column in MEASUREMENT_COLUMNS:
        value = row[column.name] if row is not None else ""
        array, empty = (vtk.vtkDoubleArray(), math.nan) if isinstance(value, float) else (
            (vtk.vtkIntArray(), 0) if isinstance(value, int) else (vtk.vtkStringArray(), ""))
        array.SetName(column.name)
        for index in range(rows):
            array.InsertNextValue(value if index == 0 else empty)
        table.AddColumn(array)
        table_node.SetColumnUnitLabel(column.name, column.unit)
        table_node.SetColumnDescription(column.name, column.description)
    for array in kept:
        table.AddColumn(array)
    table_node.Modified()
    table_node.EndModify(was_modifying)
