import importlib.util
import logging
import tempfile
import time
import unittest
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Needs only numpy and SimpleITK, which Slicer ships: safe before the module's own packages are installed.
from LeftAtriumSegLib.postprocessing import CleanupSettings

MODULE_DIR = Path(__file__).resolve().parent
SAMPLE_IMAGE = MODULE_DIR / "Resources" / "SampleData" / "la_022_crop.nii.gz"
SAMPLE_LABEL = MODULE_DIR / "Resources" / "SampleData" / "la_022_crop_label.nii.gz"
DEFAULT_CLEANUP = CleanupSettings()
# How long a scene close waits for Slicer to end a cancelled worker: the process is killed within a
# tenth of a second, writing the input may take a few seconds.
ABANDON_WAIT_S = 10.0


#
# LeftAtriumSeg
#


class LeftAtriumSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Left Atrium Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LeftAtriumSeg developers"]
        self.parent.helpText = _(
            "Segments the left atrium in a 3D cardiac MRI with U-Nets, cleans the mask up and reports the "
            "atrial volume (mL, and indexed to body surface area), with a quality flag that says when a person "
            "must look before using the volume. Correct the result in Segment Editor, first where the "
            "pulmonary veins join the atrium, where the errors gather: the table follows every edit. "
            "The bundled model knows bSSFP and LGE scans in the orientations of its training data; check every "
            "result (model card, Limitations). See the README of the LeftAtriumSeg extension."
        )
        self.parent.acknowledgementText = _(
            "The bundled model is trained on the Medical Segmentation Decathlon Task02_Heart data "
            "(King's College London, CC-BY-SA 4.0) and on 30 LGE-MRIs of the 2018 Atrial Segmentation "
            "Challenge (Xiong et al., Medical Image Analysis 67, 2021)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The bundled sample case (Decathlon Task02_Heart la_022, cropped) in Sample Data."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="LeftAtriumSeg",
        sampleName="LeftAtriumSegSample",
        thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "LeftAtriumSeg.png"),
        uris=SAMPLE_IMAGE.as_uri(),
        fileNames=SAMPLE_IMAGE.name,
        nodeNames="LeftAtriumSegSample",
        loadFileTypes="VolumeFile",
    )


#
# LeftAtriumSegParameterNode
#


@parameterNodeWrapper
class LeftAtriumSegParameterNode:
    """
    inputVolume - the cardiac MRI to segment.
    outputSegmentation - receives the "Left atrium" segment (created when empty).
    measurementTable - receives the volume measurements (created when empty).
    threshold, keepLargestComponent, componentGapMm, fillHoles, closingRadiusMm - cleanup.
    heightCm, weightKg - for body surface area and the LA volume index; 0 when unknown.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    measurementTable: vtkMRMLTableNode
    threshold: Annotated[float, WithinRange(0.05, 0.95)] = DEFAULT_CLEANUP.threshold
    keepLargestComponent: bool = DEFAULT_CLEANUP.keep_largest_component
    componentGapMm: Annotated[float, WithinRange(0.0, 50.0)] = DEFAULT_CLEANUP.component_gap_mm
    fillHoles: bool = DEFAULT_CLEANUP.fill_holes
    closingRadiusMm: Annotated[float, WithinRange(0.0, 10.0)] = DEFAULT_CLEANUP.closing_radius_mm
    heightCm: Annotated[float, WithinRange(0.0, 250.0)] = 0.0
    weightKg: Annotated[float, WithinRange(0.0, 400.0)] = 0.0

    def cleanup(self) -> CleanupSettings:
        return CleanupSettings(self.threshold, self.keepLargestComponent, self.componentGapMm, self.fillHoles,
                               self.closingRadiusMm)


#
# LeftAtriumSegWidget
#


class LeftAtriumSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedSegmentation = None
        self._segmentationTags = []  # its observers' tags (_observeSegmentation)
        # The input and segmentation the panel last saw: when another is chosen, outputs made from
        # another volume, and a table of another segmentation, are let go (_onParameterNodeModified).
        # IDs, not nodes: a deleted volume's data is not held on to.
        self._inputID = None
        self._segmentationID = None
        self._measureTimer = None
        # pip_install processes events after each line of pip's output (util.py logProcessOutput): a second
        # press of Apply while the packages install must not start another install or run.
        self._starting = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LeftAtriumSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LeftAtriumSegLogic()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.editButton.connect("clicked(bool)", self.onEditButton)
        self.ui.updateMeasurementsButton.connect("clicked(bool)", self.onUpdateMeasurements)
        self.ui.progressBar.hide()
        # Segment Editor modifies the segment on every stroke: measure once the edits settle.
        self._measureTimer = qt.QTimer()
        self._measureTimer.setSingleShot(True)
        self._measureTimer.setInterval(500)
        self._measureTimer.connect("timeout()", self._measureAfterEdits)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic:
            self.logic.cancel()
        self._releaseParameterNode()  # a reloaded module's old panel stays, hidden (util.py reloadScriptedModule)
        self._observeSegmentation(None)
        if self._measureTimer:
            self._measureTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._releaseParameterNode()

    def _releaseParameterNode(self) -> None:
        """Unbind the panel from the parameter node and stop observing it; the node stays set."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            # Already released by exit() before cleanup or a new node: removeObserver would warn
            # (util.py v5.10.0 hasObserver L2934).
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        wasRunning = self.logic.isRunning
        self.logic.abandon()  # also the workers of runs one stopped waiting for
        if wasRunning:
            self._finishRun(_("Cancelled: the scene was closed."))
        self._observeSegmentation(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A scene loaded or added brings its own choice of input and outputs, as it was saved. The
        parameter node takes them without a ModifiedEvent (vtkMRMLNode.cxx v5.10.0 CopyReferences
        L177-266), which its wrapper waits for to read them (wrapper.py v5.10.0 L99, L120): a new
        wrapper reads them."""
        if self._parameterNode is None:
            return
        if self.parent.isEntered:
            self.setParameterNode(self.logic.getParameterNode())
        else:  # measuring after edits still reads it
            self._parameterNode = self.logic.getParameterNode()
            self._takeChoices()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            # The selector lists plain scalar volumes only (showChildNodeTypes false in the .ui): not
            # label maps, vector or diffusion volumes (subclasses), nor hidden nodes. Given a node it
            # does not list, it shows none (qMRMLNodeComboBox.cxx v5.10.0 L914-926).
            scene = slicer.mrmlScene
            volumes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                       for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
            firstVolumeNode = next((node for node in volumes if node.GetClassName() == "vtkMRMLScalarVolumeNode"
                                    and not node.GetHideFromEditors()), None)
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[LeftAtriumSegParameterNode]) -> None:
        self._releaseParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            # After the wrapper's own observers, which keep what it reads up to date: VTK calls observers
            # of equal priority last-added first (vtkObject.cxx vtkSubjectHelper::AddObserver), so a
            # change made through another wrapper (the Python console's) would be read stale.
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified,
                             priority=-1.0)
            self._takeChoices()

    def _takeChoices(self) -> None:
        """Take the parameter node's input and outputs as they are, letting nothing go."""
        self._inputID = _nodeID(self._parameterNode.inputVolume)
        self._segmentationID = _nodeID(self._parameterNode.outputSegmentation)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        from LeftAtriumSegMRML import made_from_another, measures_another

        # A scene being added sets the node's references one by one, to IDs of its own until it maps
        # them to the nodes it adds (vtkMRMLScene.cxx v5.10.0 L1306, L894): judged once it is added.
        if slicer.mrmlScene.IsImporting():
            return
        p = self._parameterNode
        # Outputs are let go, so that the next Apply (or measurement) makes new ones rather than
        # overwrite them: those made from another volume when another input is chosen, a table of
        # another segmentation when another segmentation is. The user's own nodes, and outputs picked
        # after the input, stay. Each ID is taken first: the assignments call this method again.
        # None is a node field's "none selected" (parameterNodeWrapper/serializers.py v5.10.0 L405-409).
        if _nodeID(p.inputVolume) != self._inputID:
            self._inputID = _nodeID(p.inputVolume)
            if p.outputSegmentation is not None and made_from_another(p.outputSegmentation, p.inputVolume):
                p.outputSegmentation = None
            if p.measurementTable is not None and made_from_another(p.measurementTable, p.inputVolume):
                p.measurementTable = None
        if _nodeID(p.outputSegmentation) != self._segmentationID:
            self._segmentationID = _nodeID(p.outputSegmentation)
            if p.measurementTable is not None and measures_another(p.measurementTable, p.outputSegmentation):
                p.measurementTable = None
        # The table follows the edits of the segmentation chosen, whoever made it.
        chosen = p.outputSegmentation
        if (chosen.GetSegmentation() if chosen is not None else None) is not self._observedSegmentation:
            self._observeSegmentation(chosen)
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self.logic.isRunning
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        # While cancelling, a second press stops waiting for Slicer to report the worker ended.
        self.ui.applyButton.enabled = not self._starting and (running or hasInput)
        self.ui.applyButton.toolTip = (_("Stop waiting for the worker to end") if self.logic.isCancelling else
                                       _("Stop the segmentation; the scene stays as it was")) if running \
            else (_("Segment the left atrium") if hasInput else _("Select an input volume"))
        # What the running worker was given stays as it was until it ends.
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.advancedCollapsibleButton.enabled = not running
        hasResult = bool(self._parameterNode and self._parameterNode.outputSegmentation and hasInput)
        self.ui.editButton.enabled = hasResult and not running
        self.ui.updateMeasurementsButton.enabled = hasResult and not running

    def onApplyButton(self) -> None:
        if self.logic.isCancelling:  # Slicer has not reported the worker ended: stop waiting
            self.logic.stopWaiting()
            self._finishRun(_("Cancelled; the scene is unchanged."))
            return
        if self.logic.isRunning:
            # The worker ends and its nodes are removed when Slicer reports it cancelled (_onFinished).
            self.logic.cancel()
            self._setStatus(_("Cancelling..."))
            self._updateButtons()
            return
        if self._starting:
            return
        self._starting = True
        self._updateButtons()
        try:
            with slicer.util.tryWithErrorDisplay(_("Left-atrium segmentation could not start.")):
                from LeftAtriumSegLib.dependencies import unmet_requirements

                p = self._parameterNode
                if unmet_requirements():  # before a download: a volume process would refuse needs no packages
                    self.logic.checkInputs(p.inputVolume, p.outputSegmentation, p.measurementTable, p.heightCm, p.weightKg)
                if not self.logic.ensureDependencies():
                    self._setStatus(_("Not started: the packages it needs were not installed."))
                    return
                cliNode = self.logic.process(p.inputVolume, p.outputSegmentation, p.measurementTable, p.cleanup(),
                                             p.heightCm, p.weightKg, onFinished=self._onFinished)
                self.ui.progressBar.setCommandLineModuleNode(cliNode)
                self.ui.progressBar.show()
                self._setStatus(_("Segmenting..."))
        finally:
            self._starting = False
            self._updateButtons()

    def _onFinished(self, outcome: "SegmentationOutcome") -> None:
        p = self._parameterNode
        if outcome.error:
            self._finishRun(_("Failed: {error}").format(error=outcome.error))
            # Shown once Slicer's status observer has returned: a modal dialog inside it would hold up
            # the progress of other CLI modules until it is closed (vtkSlicerApplicationLogic ProcessModified).
            qt.QTimer.singleShot(0, lambda: slicer.util.errorDisplay(outcome.error,
                                                                     windowTitle=_("Left-atrium segmentation")))
            return
        if outcome.cancelled:
            self._finishRun(_("Cancelled; the scene is unchanged."))
            return
        # The logic made the output nodes where none was selected: show them in the selectors.
        p.outputSegmentation, p.measurementTable = outcome.segmentation, outcome.table
        message = _statusLine(outcome.row)
        if outcome.keptCorrections:
            message += _(" (in new nodes: {name}, corrected, was kept)").format(name=outcome.keptCorrections)
        self._finishRun(message)
        self._observeSegmentation(outcome.segmentation)
        slicer.util.setSliceViewerLayers(background=p.inputVolume)

    def _finishRun(self, message: str) -> None:
        self.ui.progressBar.setCommandLineModuleNode(None)  # it holds no reference: the node is removed next
        self.ui.progressBar.hide()
        self._setStatus(message)
        self._updateButtons()

    def _setStatus(self, message: str) -> None:
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message, 5000)

    def _observeSegmentation(self, segmentationNode) -> None:
        """Re-measure whenever the segment is edited, so the table always matches the segmentation.

        The tags are kept here, not by VTKObservationMixin: its removeObserver leaves the observed
        object as a key of its table (util.py v5.10.0 L2914-2923, v5.8.1 L2825-2834), which would
        keep every segmentation watched once, label maps and all, in memory.
        """
        from LeftAtriumSegMRML import SEGMENT_EDIT_EVENTS

        for tag in self._segmentationTags:
            self._observedSegmentation.RemoveObserver(tag)
        self._observedSegmentation = segmentationNode.GetSegmentation() if segmentationNode is not None else None
        self._segmentationTags = [] if self._observedSegmentation is None else [
            self._observedSegmentation.AddObserver(event, self._onSegmentModified) for event in SEGMENT_EDIT_EVENTS]

    def _onSegmentModified(self, caller, event) -> None:
        self._measureTimer.start()

    def _measureAfterEdits(self) -> None:
        """Measure again once Segment Editor's strokes settle; a problem goes to the status line, not
        to a dialog after every stroke (a removed "Left atrium" segment, say)."""
        from LeftAtriumSegMRML import has_left_atrium_segment

        p = self._parameterNode
        if p and p.outputSegmentation and not p.measurementTable and not has_left_atrium_segment(p.outputSegmentation):
            return  # edits of a segmentation with no atrium and no table: nothing to measure
        try:
            self._measure()
        except Exception as error:
            self._setStatus(_("Not measured: {error}").format(error=error))

    def onUpdateMeasurements(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Measurement failed."), waitCursor=True):
            self._measure()

    def _measure(self) -> None:
        from LeftAtriumSegMRML import remove_with_its_nodes

        p = self._parameterNode
        if not (p and p.outputSegmentation and p.inputVolume):
            return
        made = p.measurementTable is None
        table = self.logic.newMeasurementTable(p.inputVolume) if made else p.measurementTable
        try:
            row = self.logic.updateMeasurements(p.outputSegmentation, p.inputVolume, table, p.heightCm, p.weightKg)
        except Exception:
            if made:  # not left behind empty
                remove_with_its_nodes(table)
            raise
        if made:
            p.measurementTable = table
        self._setStatus(_statusLine(row))

    def onEditButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segment Editor could not be opened.")):
            p = self._parameterNode
            slicer.util.selectModule("SegmentEditor")
            editorWidget = slicer.modules.segmenteditor.widgetRepresentation().self()
            editorWidget.parameterSetNode.SetAndObserveSegmentationNode(p.outputSegmentation)
            editorWidget.parameterSetNode.SetAndObserveSourceVolumeNode(p.inputVolume)
            self._observeSegmentation(p.outputSegmentation)


def _nodeID(node) -> Optional[str]:
    return node.GetID() if node is not None else None


def _statusLine(row: dict) -> str:
    """``Left atrium: 72.0 mL (quality check: ok)``, with the reasons when flagged for review."""
    message = _("Left atrium: {volume:.1f} mL").format(volume=row["Volume [mL]"])
    if row["Quality check"] == "review":
        return message + _(" - review before use: {reasons}").format(reasons=row["Reasons to review"])
    if row["Quality check"]:
        return message + _(" (quality check: {flag})").format(flag=row["Quality check"])
    return message


#
# LeftAtriumSegLogic
#


@dataclass
class SegmentationOutcome:
    """How a run ended: an error message, a cancel, or the result's nodes (and the volume they were
    made from) and its table row."""

    error: str = ""
    cancelled: bool = False
    inputVolume: Optional[vtkMRMLScalarVolumeNode] = None
    segmentation: Optional[vtkMRMLSegmentationNode] = None
    table: Optional[vtkMRMLTableNode] = None
    row: Optional[dict] = None
    keptCorrections: str = ""  # the name of the segmentation given, left alone: its segment was corrected


class LeftAtriumSegLogic(ScriptedLoadableModuleLogic):
    """Segments the left atrium of a volume node into a segmentation and a measurement table.

    The work runs in the LeftAtriumSegCLI worker, a scripted CLI module: Slicer runs it in a
    process of its own, shows its progress, and ends it on cancel (docs/slicer-api.md). The MRML
    half (nodes to images, the worker's label map to a segment, the table) is in
    the LeftAtriumSegMRML package, which runs and is tested without the application.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._run = None  # (cliNode, observer tag, labelmap node, outputs, onFinished) of the running worker
        self.isCancelling = False
        self._stoppedWorkers = []  # CLI nodes of runs one stopped waiting for, until Slicer reports them done

    def getParameterNode(self):
        return LeftAtriumSegParameterNode(super().getParameterNode())

    @property
    def isRunning(self) -> bool:
        return self._run is not None

    # Dependencies

    def ensureDependencies(self) -> bool:
        """Install the worker's missing or outdated Python packages after asking; False if the user
        declines. Raises CalledProcessError when pip fails (util.py v5.10.0 L3954,
        logProcessOutput), RuntimeError when it leaves a package unmet."""
        from LeftAtriumSegLib.dependencies import describe, pip_arguments, unmet_requirements

        unmet = unmet_requirements()
        if not unmet:
            return True
        if not slicer.app.testingEnabled() and not slicer.util.confirmOkCancelDisplay(
                _("Left-atrium segmentation needs these Python packages, which will now be downloaded and installed "
                  "(a few minutes): {packages}").format(packages=describe(unmet)),
                windowTitle=_("Left-atrium segmentation")):
            return False
        # Slicer 5.12 and later show pip's progress themselves (slicer.packaging); before, pip_install
        # only logs to the Python console while it blocks, so say what is happening.
        ownProgress = importlib.util.find_spec("slicer.packaging") is None  # imported only when used
        progress = None if not ownProgress else slicer.util.createProgressDialog(
            labelText=_("Installing {packages}... Slicer does not respond until it is done.").format(
                packages=describe(unmet)), maximum=0)
        try:
            slicer.app.processEvents()
            with tempfile.TemporaryDirectory() as folder:
                slicer.util.pip_install(pip_arguments(unmet, Path(folder) / "constraints.txt"))
        finally:
            if progress is not None:
                progress.close()
        still = unmet_requirements()
        if still:
            raise RuntimeError(_("Could not install: {packages}").format(packages=describe(still)))
        return True

    # Segmentation

    def process(self, inputVolume, outputSegmentation=None, measurementTable=None, cleanup: CleanupSettings = DEFAULT_CLEANUP,
                heightCm: float = 0.0, weightKg: float = 0.0, waitForCompletion: bool = False,
                onFinished: Optional[Callable[[SegmentationOutcome], None]] = None):
        """Segment ``inputVolume`` in the background; ``onFinished(outcome)`` runs when the worker ends.

        A new segmentation and table are made where none is given, and only when the worker has
        succeeded: a failed or cancelled run leaves the scene as it was. The result replaces the
        "Left atrium" segment of the segmentation given only where it is the one the module made
        from this volume, untouched: corrections are kept, and the result goes into new nodes
        (``outcome.keptCorrections`` names the segmentation, ``_importResult``). Bad input fails
        here, at once, with a message naming the volume. Returns the worker's CLI node.
        """
        from LeftAtriumSegMRML import remove_with_its_nodes

        if self.isRunning:
            raise RuntimeError(_("A segmentation is already running."))
        self.checkInputs(inputVolume, outputSegmentation, measurementTable, heightCm, weightKg)
        worker = getattr(slicer.modules, "leftatriumsegcli", None)
        if worker is None:
            raise RuntimeError(_("The LeftAtriumSegCLI module is not loaded (are CLI modules disabled?)."))
        scene = inputVolume.GetScene()
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", inputVolume.GetName() + " left atrium (worker)")
        labelmap.SetHideFromEditors(True)
        parameters = {"inputVolume": inputVolume, "outputLabel": labelmap, "device": "auto",
                      "cleanupOptions": " ".join(cleanup.options())}
        cliNode = slicer.cli.createNode(worker, parameters)
        if cliNode is None:  # slicer/cli.py createNode: None where the module has no logic
            remove_with_its_nodes(labelmap)
            raise RuntimeError(_("Slicer could not create a run of the LeftAtriumSegCLI module."))
        tag = cliNode.AddObserver(slicer.vtkMRMLCommandLineModuleNode.StatusModifiedEvent, self._onWorkerStatus)
        self._run = (cliNode, tag, labelmap, (inputVolume, outputSegmentation, measurementTable, heightCm, weightKg),
                     onFinished)
        try:
            slicer.cli.run(worker, cliNode, wait_for_completion=waitForCompletion, update_display=False)
        except Exception:
            self._endRun()
            raise
        if waitForCompletion:
            self._onWorkerStatus(cliNode)
        return cliNode

    def cancel(self) -> None:
        """Ask Slicer to end the running worker; the scene is left as it was. The run ends (its
        onFinished reports it cancelled) once Slicer reports the worker no longer busy: its nodes
        stay until then, since a cancel that comes while Slicer writes the input is overridden
        and the worker's output is still read back into them (docs/slicer-api.md)."""
        if self._run is None or self.isCancelling:
            return
        self.isCancelling = True
        self._run[0].Cancel()

    def abandon(self) -> None:
        """End the run now, without its result, for a scene that closes; so too the workers of runs
        one stopped waiting for (``stopWaiting``). Each worker is cancelled and waited for (up to
        ABANDON_WAIT_S) while what Slicer queues to read back into the run's nodes is read now: read
        after the close removed them, or gave their IDs to new nodes, it would crash Slicer or fill
        another node (LeftAtriumSegMRML.end_worker)."""
        from LeftAtriumSegMRML import cancel_if_running, end_worker

        workers = ([self._run[0]] if self._run is not None else []) + self._stoppedWorkers
        if self._run is not None:
            self._endRun()  # first: no status event of the reads below imports a result
        self._stoppedWorkers = []
        for cliNode in workers:
            cliNode.Cancel()  # all of them at once: the waits below then overlap
        deadline = time.monotonic() + ABANDON_WAIT_S  # for them all: the close waits 10 s at the most
        for cliNode in workers:  # the running one first: a stopped one may never end
            if end_worker(cliNode, slicer.app.applicationLogic(), max(0.0, deadline - time.monotonic())):
                continue
            logging.warning("Left-atrium segmentation: a worker was still %s when the scene closed, %.0f s after "
                            "it was cancelled", cliNode.GetStatusString(), ABANDON_WAIT_S)
            # The CLI logic holds the node after the scene dropped it: cancel again whenever it shows as running.
            cliNode.AddObserver(slicer.vtkMRMLCommandLineModuleNode.StatusModifiedEvent, cancel_if_running)

    def stopWaiting(self) -> None:
        """End a cancelled run for the panel when Slicer does not report the worker done (a run
        queued behind another module's, or a cancel that landed as the logic ended the worker),
        without waiting: the worker's nodes stay until Slicer reports it no longer busy, so that a
        read-back queued meanwhile still finds them, and a scene close meanwhile waits for it
        (``abandon``)."""
        from LeftAtriumSegMRML import cancel_if_running

        if self._run is None:
            return
        cliNode, labelmap = self._run[0], self._run[2]
        self._endRun(removeNodes=False)
        self._stoppedWorkers.append(cliNode)
        tags = []

        def removeWhenDone(caller, event=None):
            cancel_if_running(cliNode)
            if not cliNode.IsBusy():
                cliNode.RemoveObserver(tags.pop())
                # Not at once: the CLI logic may report it done after the first of its read-backs
                # (LeftAtriumSegMRML.end_worker); Slicer's timer runs the rest within 200 ms, and a
                # scene close meanwhile still waits for it.
                qt.QTimer.singleShot(1000, remove)

        def remove():
            if cliNode in self._stoppedWorkers:
                self._stoppedWorkers.remove(cliNode)
            _removeLater(cliNode, labelmap)

        tags.append(cliNode.AddObserver(slicer.vtkMRMLCommandLineModuleNode.StatusModifiedEvent, removeWhenDone))
        cliNode.Cancel()
        removeWhenDone(cliNode)  # it may have ended since its last status event

    def _endRun(self, removeNodes: bool = True) -> None:
        """Forget the finished worker and remove its nodes once the events under way are delivered."""
        cliNode, tag, labelmap = self._run[:3]
        self._run, self.isCancelling = None, False
        cliNode.RemoveObserver(tag)
        if removeNodes:
            _removeLater(cliNode, labelmap)

    def _onWorkerStatus(self, cliNode, event=None) -> None:
        if self._run is None or cliNode is not self._run[0]:
            return
        if cliNode.IsBusy():
            if self.isCancelling:
                from LeftAtriumSegMRML import cancel_if_running

                cancel_if_running(cliNode)
            return
        status = cliNode.GetStatus()
        labelmap = self._run[2]
        (inputVolume, segmentation, table, heightCm, weightKg), onFinished = self._run[3], self._run[4]
        outcome = SegmentationOutcome()
        try:
            if status == cliNode.Cancelled or self.isCancelling:  # a cancel Slicer overrode still cancels
                outcome.cancelled = True
            elif status == cliNode.Completed:
                outcome = self._importResult(cliNode, labelmap, inputVolume, segmentation, table, heightCm, weightKg)
            else:
                outcome.error = _workerError(cliNode)
        except Exception as error:  # reading the result back: say so, never leave the GUI waiting
            logging.exception("Left-atrium segmentation: reading the result back failed")
            outcome = SegmentationOutcome(error=str(error))
        finally:
            self._endRun()
        if onFinished is not None:
            onFinished(outcome)

    def _importResult(self, cliNode, labelmap, inputVolume, segmentation, table, heightCm, weightKg) -> SegmentationOutcome:
        """The worker's label map into the segmentation and its measurement into the table; nodes
        are made where none was given, and removed again if the import fails. A segmentation whose
        "Left atrium" is not the module's untouched result from this volume is left alone, with its
        table, and new nodes made: asked now, not at Apply, since Segment Editor may edit it while
        the worker runs."""
        from LeftAtriumSegMRML import (
            holds_corrections, import_result, mask_from_labelmap_node, remove_with_its_nodes, show_table,
        )

        for node, what in ((inputVolume, _("input volume")), (segmentation, _("output segmentation")),
                           (table, _("measurement table"))):
            if node is not None and node.GetScene() is None:
                raise RuntimeError(_("The {what} was removed during segmentation; nothing was added.").format(what=what))
        mask = mask_from_labelmap_node(labelmap, inputVolume)
        keptCorrections = ""
        if segmentation is not None and holds_corrections(segmentation, inputVolume):
            keptCorrections = segmentation.GetName()
            segmentation = table = None  # the table holds the corrected measurement
        scene = inputVolume.GetScene()
        result = {name: cliNode.GetParameterAsString(name) for name in ("model", "qc", "qcReasons")}
        made = []
        try:
            if segmentation is None:
                segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", inputVolume.GetName() + " left atrium")
                made.append(segmentation)
                segmentation.CreateDefaultDisplayNodes()
            import_result(mask, inputVolume, segmentation, result)
            segmentation.CreateClosedSurfaceRepresentation()
            if table is None:
                table = self.newMeasurementTable(inputVolume)
                made.append(table)
            row = self.updateMeasurements(segmentation, inputVolume, table, heightCm, weightKg)
            show_table(table, slicer.app.applicationLogic())
        except Exception:
            for node in made:
                remove_with_its_nodes(node)
            raise
        return SegmentationOutcome(inputVolume=inputVolume, segmentation=segmentation, table=table, row=row,
                                   keptCorrections=keptCorrections)

    @staticmethod
    def checkInputs(inputVolume, outputSegmentation=None, measurementTable=None, heightCm: float = 0.0,
                    weightKg: float = 0.0) -> None:
        """Raise ValueError (InputImageError) for what ``process`` would refuse, naming the node: a
        volume that is no usable MRI, an output that cannot take the segment or the measurement, a
        height or weight out of range. Needs only numpy and SimpleITK, which Slicer ships."""
        from LeftAtriumSegMRML import check_takes_mask, check_takes_measurements, image_from_volume_node

        from LeftAtriumSegLib.io import check_image

        check_image(image_from_volume_node(inputVolume), inputVolume.GetName())
        if outputSegmentation is not None:
            check_takes_mask(outputSegmentation, inputVolume)
        if measurementTable is not None:
            check_takes_measurements(measurementTable)
        if heightCm and weightKg:  # the index needs both; one alone is left unused, as in the table
            from LeftAtriumSegLib.measurements import body_surface_area_m2

            body_surface_area_m2(heightCm, weightKg)  # a height in metres fails now, not after the work

    @staticmethod
    def newMeasurementTable(inputVolume):
        return inputVolume.GetScene().AddNewNodeByClass("vtkMRMLTableNode", inputVolume.GetName() + " left atrium volume")

    @staticmethod
    def updateMeasurements(segmentation, inputVolume, table, heightCm: float = 0.0, weightKg: float = 0.0) -> dict:
        """Measure the "Left atrium" segment as it now stands into ``table``; returns the row."""
        from LeftAtriumSegMRML import measure_left_atrium

        return measure_left_atrium(segmentation, inputVolume, table, heightCm, weightKg)


def _removeLater(cliNode, labelmap) -> None:
    """Remove the worker's CLI node and label map (with its display and storage nodes) once the
    events under way are delivered: removed within its own event, the CLI node could be deleted
    while VTK still invokes its observers."""
    from LeftAtriumSegMRML import remove_with_its_nodes

    nodes = [cliNode, labelmap]

    def remove():
        # The timer, and with it this function, lives on in PythonQt: keep no node alive here.
        worker, label = nodes
        nodes.clear()
        remove_with_its_nodes(label)
        if worker.GetScene() is not None:
            worker.GetScene().RemoveNode(worker)

    qt.QTimer.singleShot(0, remove)


def _workerError(cliNode) -> str:
    """The worker's one-line ``error:`` message, or what Slicer said of the process."""
    lines = [line for line in (cliNode.GetErrorText() or "").splitlines() if line.strip()]
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1]
    return _("the segmentation worker stopped ({status}): {detail}").format(
        status=cliNode.GetStatusString(), detail=lines[-1] if lines else _("no message"))


#
# LeftAtriumSegTest
#


class LeftAtriumSegTest(ScriptedLoadableModuleTest):
    """Runs Apply's route (the logic's ``process`` in the background, the worker, the import) on the
    bundled sample, and a cancelled run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # Reload and Test calls runTest itself, not through unittest, where a skip is a skip
        # (ScriptedLoadableModule.py onReloadAndTest).
        try:
            for test in (self.test_SegmentSample, self.test_CancelLeavesTheSceneAsItWas):
                self.setUp()
                test()
        except unittest.SkipTest as reason:
            logging.warning(f"LeftAtriumSeg self-test skipped: {reason}")

    def _logicReady(self):
        from LeftAtriumSegLib.dependencies import describe, unmet_requirements

        logic = LeftAtriumSegLogic()
        try:
            installed = logic.ensureDependencies()  # in testing mode it installs without asking
        except Exception as error:  # an offline build machine, say
            self.skipTest(f"the worker's packages are missing and could not be installed ({error}): "
                          f"{describe(unmet_requirements())}")
        if not installed:  # Reload and Test asks, and the user declined
            self.skipTest(f"the worker's packages were not installed: {describe(unmet_requirements())}")
        return logic

    def _process(self, logic, volumeNode, cancel: bool = False, **options):
        """Run ``process`` as Apply does, in the background, delivering events until it reports."""
        outcomes = []
        logic.process(volumeNode, waitForCompletion=False, onFinished=outcomes.append, **options)
        if cancel:
            logic.cancel()
        deadline = time.monotonic() + 300
        while not outcomes and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        if not outcomes:
            # Stopped and drained before the next test's setUp clears the scene under it.
            logic.abandon()
            self.fail("the run did not report within 300 s")
        slicer.app.processEvents()  # the worker's nodes are removed once its events are delivered
        return outcomes[0]

    def test_SegmentSample(self):
        import numpy as np
        from LeftAtriumSegMRML import mask_from_segment, set_left_atrium_segment

        from LeftAtriumSegLib.metrics import dice

        logic = self._logicReady()
        self.delayDisplay("Segmenting the sample case")
        volumeNode = slicer.util.loadVolume(str(SAMPLE_IMAGE))
        labelNode = slicer.util.loadLabelVolume(str(SAMPLE_LABEL))
        outcome = self._process(logic, volumeNode, heightCm=180.0, weightKg=80.0)
        self.assertEqual(outcome.error, "")
        row = outcome.row

        predicted = mask_from_segment(outcome.segmentation, "left_atrium", volumeNode)
        reference = slicer.util.arrayFromVolume(labelNode) > 0
        self.assertGreaterEqual(dice(predicted, reference), 0.85)
        referenceMl = np.count_nonzero(reference) * np.prod(volumeNode.GetSpacing()) / 1000
        self.assertAlmostEqual(row["Volume [mL]"], referenceMl, delta=5.0)
        self.assertAlmostEqual(row["LA volume index [mL/m2]"], round(row["Volume [mL]"] / 2.0, 1), places=6)
        self.assertEqual(row["Quality check"], "ok")
        self.assertEqual(outcome.table.GetCellText(0, 0), "Left atrium")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLCommandLineModuleNode"), 0)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode"), 1)  # the reference
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLVolumeArchetypeStorageNode"), 2)  # its and the MRI's

        self.delayDisplay("Segmenting again into the segmentation, once corrected")
        corrected = predicted.copy()
        corrected[tuple(np.argwhere(predicted)[0])] = False  # one voxel erased, as Segment Editor's eraser does
        set_left_atrium_segment(corrected, volumeNode, outcome.segmentation)
        again = self._process(logic, volumeNode, outputSegmentation=outcome.segmentation,
                              measurementTable=outcome.table)
        self.assertEqual(again.error, "")
        self.assertEqual(again.keptCorrections, outcome.segmentation.GetName())
        self.assertNotEqual(again.segmentation.GetID(), outcome.segmentation.GetID())
        self.assertNotEqual(again.table.GetID(), outcome.table.GetID())
        self.assertTrue(np.array_equal(mask_from_segment(outcome.segmentation, "left_atrium", volumeNode), corrected))
        self.assertTrue(np.array_equal(mask_from_segment(again.segmentation, "left_atrium", volumeNode), predicted))
        self.delayDisplay("Test passed")

    def test_CancelLeavesTheSceneAsItWas(self):
        logic = self._logicReady()
        self.delayDisplay("Cancelling a run on the sample case")
        volumeNode = slicer.util.loadVolume(str(SAMPLE_IMAGE))
        outcome = self._process(logic, volumeNode, cancel=True)
        self.assertTrue(outcome.cancelled)
        self.assertFalse(logic.isRunning)
        for nodeClass in ("vtkMRMLSegmentationNode", "vtkMRMLTableNode", "vtkMRMLCommandLineModuleNode",
                          "vtkMRMLLabelMapVolumeNode"):
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass(nodeClass), 0, nodeClass)
        self.delayDisplay("Test passed")
