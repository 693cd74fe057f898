import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
REQUIREMENTS_PATH = MODULE_DIR / "Resources" / "requirements.txt"
SAMPLE_IMAGE = MODULE_DIR / "Resources" / "SampleData" / "la_022_crop.nii.gz"
SAMPLE_LABEL = MODULE_DIR / "Resources" / "SampleData" / "la_022_crop_label.nii.gz"


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
            "Segments the left atrium in a 3D cardiac MRI with a U-Net, cleans the mask up and reports the "
            "atrial volume (mL, and indexed to body surface area). Correct the result in Segment Editor, "
            "first where the pulmonary veins join the atrium, where the errors gather: the table follows "
            "every edit. The bundled model knows bSSFP with correct geometry and with Task02_Heart's "
            "mislabelled headers, and LGE as in one cropped release, whose files state half the real slice "
            "spacing (LGE with the scan's spacing is segmented less well); a scan oriented otherwise may be missed: "
            "check every result (model card, Limitations). See the README of the LeftAtriumSeg extension."
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
        loadFileType="VolumeFile",
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
    modelPath - a model file trained with the bundled script; empty for the bundled model.
    device - where the networks run (cuda needs the onnxruntime-gpu package).
    threshold, keepLargestComponent, componentGapMm, fillHoles, closingRadiusMm - cleanup.
    heightCm, weightKg - for body surface area and the LA volume index; 0 when unknown.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    measurementTable: vtkMRMLTableNode
    modelPath: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    threshold: Annotated[float, WithinRange(0.05, 0.95)] = 0.5
    keepLargestComponent: bool = True
    componentGapMm: Annotated[float, WithinRange(0.0, 50.0)] = 20.0
    fillHoles: bool = True
    closingRadiusMm: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    heightCm: Annotated[float, WithinRange(0.0, 250.0)] = 0.0
    weightKg: Annotated[float, WithinRange(0.0, 400.0)] = 0.0


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

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[LeftAtriumSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self.logic.isRunning
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = running or hasInput
        self.ui.applyButton.toolTip = _("Stop the segmentation; the scene stays as it was") if running \
            else (_("Segment the left atrium") if hasInput else _("Select an input volume"))
        # What the running process was given stays as it was until it ends.
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.advancedCollapsibleButton.enabled = not running
        hasResult = bool(self._parameterNode and self._parameterNode.outputSegmentation and hasInput)
        self.ui.editButton.enabled = hasResult and not running
        self.ui.updateMeasurementsButton.enabled = hasResult and not running

    def onApplyButton(self) -> None:
        if self.logic.isRunning:
            self.logic.cancel()
            self._setStatus(_("Cancelled; the scene is unchanged."))
            self._finishRun()
            return
        with slicer.util.tryWithErrorDisplay(_("Left-atrium segmentation could not start."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self.logic.startSegmentation(self._parameterNode, onProgress=self._onProgress, onFinished=self._onFinished)
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self._setStatus(_("Segmenting..."))
            self._updateButtons()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self._setStatus(message)

    def _onFinished(self, error: Optional[str]) -> None:
        self._finishRun()
        if error:
            self._setStatus(_("Failed: {error}").format(error=error))
            slicer.util.errorDisplay(error, windowTitle=_("Left-atrium segmentation"))
            return
        p = self._parameterNode
        self._observeSegmentation(p.outputSegmentation)
        p.outputSegmentation.CreateClosedSurfaceRepresentation()
        slicer.util.setSliceViewerLayers(background=p.inputVolume)
        self.onUpdateMeasurements()
        self._showTable(p.measurementTable)

    def _finishRun(self) -> None:
        self.ui.progressBar.hide()
        self._updateButtons()

    def _setStatus(self, message: str) -> None:
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message, 3000)

    def _showTable(self, tableNode) -> None:
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def _observeSegmentation(self, segmentationNode) -> None:
        """Re-measure whenever the segment changes, so the table always matches the segmentation."""
        if self._observedSegmentation is not None:
            self.removeObserver(self._observedSegmentation, slicer.vtkSegmentation.SegmentModified, self._onSegmentModified)
        self._observedSegmentation = segmentationNode.GetSegmentation()
        self.addObserver(self._observedSegmentation, slicer.vtkSegmentation.SegmentModified, self._onSegmentModified)

    def _onSegmentModified(self, caller, event) -> None:
        # Segment Editor modifies on every stroke: measure once the edits settle.
        if not hasattr(self, "_measureTimer"):
            self._measureTimer = qt.QTimer()
            self._measureTimer.setSingleShot(True)
            self._measureTimer.setInterval(500)
            self._measureTimer.connect("timeout()", self.onUpdateMeasurements)
        self._measureTimer.start()

    def onUpdateMeasurements(self) -> None:
        from LeftAtriumSegLib.measurements import SMALLEST_PLAUSIBLE_VOLUME_ML

        with slicer.util.tryWithErrorDisplay(_("Measurement failed."), waitCursor=True):
            if self._parameterNode and self._parameterNode.outputSegmentation:
                row = self.logic.updateMeasurements(self._parameterNode)
                message = _("Left atrium: {volume:.1f} mL").format(volume=row["Volume [mL]"])
                if row["Volume [mL]"] < SMALLEST_PLAUSIBLE_VOLUME_ML:
                    message += _(" (probably missed: is the heart in view, in an orientation the model knows?)")
                self._setStatus(message)

    def onEditButton(self) -> None:
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editorWidget = slicer.modules.segmenteditor.widgetRepresentation().self()
        editorWidget.parameterSetNode.SetAndObserveSegmentationNode(p.outputSegmentation)
        editorWidget.parameterSetNode.SetAndObserveSourceVolumeNode(p.inputVolume)
        self._observeSegmentation(p.outputSegmentation)


#
# LeftAtriumSegLogic
#


class LeftAtriumSegLogic(ScriptedLoadableModuleLogic):
    """Runs the core package (LeftAtriumSegLib) on MRML nodes.

    Inference runs in a separate Python process (the core command line) watched by a
    QProcess, so the GUI stays responsive and a cancel kills the work without touching the
    scene. ``segmentInProcess`` does the same work synchronously, for tests and scripts.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._process = None
        self._workDir = None

    def getParameterNode(self):
        return LeftAtriumSegParameterNode(super().getParameterNode())

    @property
    def isRunning(self) -> bool:
        return self._process is not None

    # Dependencies

    @staticmethod
    def missingRequirements() -> list:
        # Each package in requirements.txt is imported under its own name (a test checks it).
        lines = REQUIREMENTS_PATH.read_text(encoding="utf-8").splitlines()
        packages = [line.split(">=")[0] for line in lines if line and not line.startswith("#")]
        return [package for package in packages if importlib.util.find_spec(package) is None]

    def ensureDependencies(self) -> bool:
        """Install missing Python packages after asking; never downloads silently."""
        missing = self.missingRequirements()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("Left-atrium segmentation needs these Python packages, which will be downloaded and "
                  "installed now: {packages}").format(packages=", ".join(missing))):
            return False
        slicer.util.pip_install(["-r", str(REQUIREMENTS_PATH)])
        still = self.missingRequirements()
        if still:
            raise RuntimeError(_("Could not install: {packages}").format(packages=", ".join(still)))
        return True

    # Segmentation

    def modelPath(self, parameterNode) -> Path:
        from LeftAtriumSegLib.pipeline import DEFAULT_MODEL_PATH

        return Path(parameterNode.modelPath) if parameterNode.modelPath else DEFAULT_MODEL_PATH

    @staticmethod
    def _cleanupSettings(parameterNode):
        from LeftAtriumSegLib.postprocessing import CleanupSettings

        p = parameterNode
        return CleanupSettings(p.threshold, p.keepLargestComponent, p.componentGapMm, p.fillHoles, p.closingRadiusMm)

    @staticmethod
    def _checkedInputImage(parameterNode):
        """The input volume as a SimpleITK image; bad input fails here with a one-line message."""
        from LeftAtriumSegMRML import image_from_volume_node

        from LeftAtriumSegLib.io import check_image

        image = image_from_volume_node(parameterNode.inputVolume)
        check_image(image, parameterNode.inputVolume.GetName())
        return image

    def startSegmentation(self, parameterNode, onProgress, onFinished) -> None:
        """Segment in a background process; ``onFinished(error or None)`` runs on the GUI thread."""
        import SimpleITK as sitk

        from LeftAtriumSegLib.cli import cleanup_arguments
        from LeftAtriumSegLib.onnx_network import load_onnx_networks

        p = parameterNode
        image = self._checkedInputImage(p)
        inputVolumeId = p.inputVolume.GetID()
        load_onnx_networks(self.modelPath(p), "cpu")  # a bad model file fails here, with its own message
        self._workDir = Path(tempfile.mkdtemp(prefix="LeftAtriumSeg-"))
        inputPath = self._workDir / "input.nrrd"
        sitk.WriteImage(image, str(inputPath))

        process = qt.QProcess()
        environment = qt.QProcessEnvironment.systemEnvironment()
        environment.insert("PYTHONPATH", os.pathsep.join([str(MODULE_DIR), environment.value("PYTHONPATH")]))
        process.setProcessEnvironment(environment)
        arguments = ["-m", "LeftAtriumSegLib.cli", "segment", str(inputPath), "--output-dir", str(self._workDir / "out"),
                     "--format", "nii.gz", "--quiet", "--progress-lines", "--model", str(self.modelPath(p)),
                     "--device", p.device,
                     *cleanup_arguments(self._cleanupSettings(p))]
        errors = []

        def readOutput():
            for line in bytes(process.readAllStandardOutput()).decode(errors="replace").splitlines():
                if line.startswith("progress "):
                    onProgress(float(line.split()[1]), _("Segmenting..."))

        def readErrors():
            errors.append(bytes(process.readAllStandardError()).decode(errors="replace"))

        def finished(exitCode, exitStatus):
            if self._process is not process:  # cancelled: the scene stays as it was
                return
            readOutput()
            readErrors()
            resultPath = self._workDir / "out" / "input.nii.gz"
            self._process = None
            try:
                if exitCode != 0 or not resultPath.exists():
                    messages = [line for line in "".join(errors).splitlines() if line.startswith("error:")]
                    onFinished(messages[-1][len("error: "):] if messages else _("segmentation process failed"))
                    return
                if not p.inputVolume or p.inputVolume.GetID() != inputVolumeId:
                    onFinished(_("The input volume was changed or removed during segmentation; nothing was added."))
                    return
                mask = sitk.GetArrayFromImage(sitk.ReadImage(str(resultPath))) > 0
                self.setResult(mask, p)
                onFinished(None)
            finally:
                self._removeWorkDir()

        process.connect("readyReadStandardOutput()", readOutput)
        process.connect("readyReadStandardError()", readErrors)
        process.connect("finished(int,QProcess::ExitStatus)", finished)
        self._process = process
        process.start(shutil.which("PythonSlicer") or sys.executable, arguments)

    def cancel(self) -> None:
        """Stop a running segmentation at once; the scene is not touched."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.kill()
        process.waitForFinished(3000)
        self._removeWorkDir()

    def _removeWorkDir(self) -> None:
        if self._workDir is not None:
            shutil.rmtree(self._workDir, ignore_errors=True)
            self._workDir = None

    def segmentInProcess(self, parameterNode) -> dict:
        """Segment synchronously in this process and measure; returns the table row."""
        from LeftAtriumSegLib.pipeline import Segmenter

        p = parameterNode
        image = self._checkedInputImage(p)
        segmenter = Segmenter.load(self.modelPath(p), p.device, self._cleanupSettings(p))
        self.setResult(segmenter.segment(image), p)
        return self.updateMeasurements(p)

    def setResult(self, mask, parameterNode) -> None:
        """Put the mask into the output segmentation; output nodes are created only now, so a
        cancelled or failed run adds nothing to the scene."""
        from LeftAtriumSegMRML import set_left_atrium_segment

        p = parameterNode
        scene = p.inputVolume.GetScene()
        if not p.outputSegmentation:
            p.outputSegmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", p.inputVolume.GetName() + " left atrium")
            p.outputSegmentation.CreateDefaultDisplayNodes()
        if not p.measurementTable:
            p.measurementTable = scene.AddNewNodeByClass("vtkMRMLTableNode", p.inputVolume.GetName() + " left atrium volume")
        set_left_atrium_segment(mask, p.inputVolume, p.outputSegmentation)

    def updateMeasurements(self, parameterNode) -> dict:
        from LeftAtriumSegMRML import measure_left_atrium

        from LeftAtriumSegLib.model_file import read_model_config

        p = parameterNode
        config = read_model_config(self.modelPath(p))
        return measure_left_atrium(p.outputSegmentation, p.inputVolume, p.measurementTable,
                                   f"{config.name} {config.version}", p.heightCm, p.weightKg)


#
# LeftAtriumSegTest
#


class LeftAtriumSegTest(ScriptedLoadableModuleTest):
    """Runs the real bundled model on the sample case (never skipped)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSample()

    def test_SegmentSample(self):
        import numpy as np
        from LeftAtriumSegMRML import mask_from_segment

        from LeftAtriumSegLib.metrics import dice

        self.delayDisplay("Segmenting the sample case")
        volumeNode = slicer.util.loadVolume(str(SAMPLE_IMAGE))
        labelNode = slicer.util.loadLabelVolume(str(SAMPLE_LABEL))
        logic = LeftAtriumSegLogic()
        p = logic.getParameterNode()
        p.inputVolume = volumeNode
        p.heightCm, p.weightKg = 180.0, 80.0
        row = logic.segmentInProcess(p)

        predicted = mask_from_segment(p.outputSegmentation, "left_atrium", volumeNode)
        reference = slicer.util.arrayFromVolume(labelNode) > 0
        self.assertGreaterEqual(dice(predicted, reference), 0.85)
        referenceMl = np.count_nonzero(reference) * np.prod(volumeNode.GetSpacing()) / 1000
        self.assertAlmostEqual(row["Volume [mL]"], referenceMl, delta=5.0)
        self.assertAlmostEqual(row["LA volume index [mL/m2]"], row["Volume [mL]"] / 2.0, places=6)
        self.assertEqual(p.measurementTable.GetCellText(0, 0), "Left atrium")
        self.delayDisplay("Test passed")
