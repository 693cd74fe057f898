"""Static checks of the Slicer module: the .ui has every widget the code uses, CMake lists
every file that ships and nothing that does not exist, its requirements can be checked."""

import ast
import importlib.util
import re
from dataclasses import asdict
import xml.etree.ElementTree as ElementTree

from conftest import REPOSITORY

from LeftAtriumSegLib.postprocessing import CleanupSettings

MODULE = REPOSITORY / "LeftAtriumSeg"
UI_FILE = MODULE / "Resources" / "UI" / "LeftAtriumSeg.ui"

# The widget class each name the module code touches must have, by what the code calls on it.
EXPECTED_WIDGET_CLASSES = {
    "applyButton": "QPushButton",
    "editButton": "QPushButton",
    "updateMeasurementsButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "inputSelector": "qMRMLNodeComboBox",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "measurementTableSelector": "qMRMLNodeComboBox",
    "modelPathLineEdit": "ctkPathLineEdit",
    "deviceComboBox": "QComboBox",
    "thresholdSliderWidget": "ctkSliderWidget",
    "inputsCollapsibleButton": "ctkCollapsibleButton",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
}


def _ui_widgets():
    tree = ElementTree.parse(UI_FILE)
    return {widget.get("name"): widget for widget in tree.iter("widget") if widget.get("name")}


def _cmake_list(name):
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(rf"set\({name}\n(.*?)\n\s*\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "LeftAtriumSeg") for line in block.splitlines() if line.strip()]


def test_every_widget_the_module_uses_exists_with_its_class():
    widgets = _ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "LeftAtriumSeg.py").read_text(encoding="utf-8")))
    assert used, "the module code uses no widgets?"
    for name in used:
        assert name in widgets, f"{name} is used by LeftAtriumSeg.py but missing from the .ui"
    for name, widget_class in EXPECTED_WIDGET_CLASSES.items():
        assert widgets[name].get("class") == widget_class, name


def _parameter_statements():
    """The annotated assignments of the parameter node class (the module needs Slicer to import)."""
    source = (MODULE / "LeftAtriumSeg.py").read_text(encoding="utf-8")
    parameter_class = next(node for node in ast.parse(source).body
                           if isinstance(node, ast.ClassDef) and node.name == "LeftAtriumSegParameterNode")
    return {statement.target.id: statement for statement in parameter_class.body if isinstance(statement, ast.AnnAssign)}


def test_every_parameter_has_a_widget_and_every_bound_widget_a_parameter():
    parameters = set(_parameter_statements())
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = name
    assert set(bound) == parameters


def test_cmake_lists_every_script_and_resource_that_exists_and_nothing_else():
    scripts = _cmake_list("MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list("MODULE_PYTHON_RESOURCES")
    for listed in scripts + resources:
        assert (MODULE / listed).is_file(), f"CMakeLists.txt lists missing {listed}"
    python_files = {str(p.relative_to(MODULE)) for p in MODULE.glob("*.py")} | {
        str(p.relative_to(MODULE)) for p in (MODULE / "LeftAtriumSegLib").glob("*.py")}
    assert python_files == set(scripts)
    resource_files = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert resource_files == set(resources)


def test_extension_metadata_is_complete_and_points_into_the_repository():
    text = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', text), field
    assert 'EXTENSION_CATEGORY "Segmentation"' in text
    icon = re.search(r'EXTENSION_ICONURL "[^"]+/main/([^"]+)"', text).group(1)
    screenshot = re.search(r'EXTENSION_SCREENSHOTURLS "[^"]+/main/([^"]+)"', text).group(1)
    assert (REPOSITORY / icon).is_file() and (REPOSITORY / screenshot).is_file()
    assert "add_subdirectory(LeftAtriumSeg)" in text
    assert "WITH_GENERIC_TESTS" in (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest" in (REPOSITORY / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")


def test_extension_icon_is_128_pixels_square():
    from PIL import Image

    with Image.open(REPOSITORY / "LeftAtriumSeg.png") as icon:
        assert icon.size == (128, 128)


def test_cleanup_parameter_defaults_are_the_packages_defaults():
    """The parameter node repeats CleanupSettings' defaults as literals; they must not drift."""
    statements = _parameter_statements()
    names = {"threshold": "threshold", "keep_largest_component": "keepLargestComponent",
             "component_gap_mm": "componentGapMm", "fill_holes": "fillHoles", "closing_radius_mm": "closingRadiusMm"}
    for field, default in asdict(CleanupSettings()).items():
        assert ast.literal_eval(statements[names[field]].value) == default, field


def test_every_module_requirement_is_imported_under_its_own_name():
    # LeftAtriumSegLogic.missingRequirements looks each one up by that name.
    lines = (MODULE / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    packages = [line.split(">=")[0] for line in lines if line and not line.startswith("#")]
    assert packages and all(re.fullmatch(r"[a-z_]+", package) for package in packages), packages
    assert [package for package in packages if importlib.util.find_spec(package) is None] == []
