"""Static checks of the Slicer module, for what cannot run outside the Slicer application: the .ui
has every widget the code uses, each parameter has a GUI connector for the widget it is bound to
(by the rules of Slicer's own connectors), the known traps of Qt and CLI work are absent, CMake
lists every file that ships and nothing that does not exist, the extension is described for the
Extensions Index."""

import ast
import json
import re
import xml.etree.ElementTree as ElementTree

from conftest import REPOSITORY

MODULE = REPOSITORY / "LeftAtriumSeg"
UI_FILE = MODULE / "Resources" / "UI" / "LeftAtriumSeg.ui"

# The widget class each name the module code touches must have, by what the code calls on it.
EXPECTED_WIDGET_CLASSES = {
    "applyButton": "QPushButton",
    "editButton": "QPushButton",
    "updateMeasurementsButton": "QPushButton",
    "progressBar": "qSlicerCLIProgressBar",
    "statusLabel": "QLabel",
    "inputSelector": "qMRMLNodeComboBox",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "measurementTableSelector": "qMRMLNodeComboBox",
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
        str(p.relative_to(MODULE)) for folder in ("LeftAtriumSegLib", "LeftAtriumSegMRML")
        for p in (MODULE / folder).rglob("*.py")}
    assert python_files == set(scripts)
    resource_files = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert resource_files == set(resources)


def test_the_only_script_beside_the_module_is_the_module():
    """Slicer loads every .py file directly in qt-scripted-modules as a module and logs "class X was
    not found" for one without its class (qSlicerScriptedLoadableModuleFactory.cxx isValidFile,
    qSlicerScriptedLoadableModule.cxx setPythonSource, v5.10.0): helpers live in packages."""
    assert [p for p in _cmake_list("MODULE_PYTHON_SCRIPTS") if "/" not in p] == ["LeftAtriumSeg.py"]


def test_extension_metadata_is_complete_and_points_into_the_repository():
    text = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', text), field
    assert 'EXTENSION_CATEGORY "Segmentation"' in text
    icon = re.search(r'EXTENSION_ICONURL "[^"]+/main/([^"]+)"', text).group(1)
    screenshot = re.search(r'EXTENSION_SCREENSHOTURLS "[^"]+/main/([^"]+)"', text).group(1)
    assert (REPOSITORY / icon).is_file() and (REPOSITORY / screenshot).is_file()
    assert "add_subdirectory(LeftAtriumSeg)" in text and "add_subdirectory(LeftAtriumSegCLI)" in text
    assert "SlicerMacroBuildScriptedCLI" in (REPOSITORY / "LeftAtriumSegCLI" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest" in (REPOSITORY / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")


def test_extension_icon_is_128_pixels_square():
    from PIL import Image

    with Image.open(REPOSITORY / "LeftAtriumSeg.png") as icon:
        assert icon.size == (128, 128)


# The widget classes each of Slicer's parameterNodeWrapper GUI connectors takes, and the parameter
# types it represents (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py; lines of v5.10.0,
# the same at v5.12.0; v5.8.1 differs: docs/slicer-api.md). A field whose type has no connector for its widget
# makes createGuiConnector raise (L126-145), and connectGui builds every field's connector before it
# connects any: one such field leaves the whole panel unconnected.
GUI_CONNECTORS = [
    ({"QCheckBox", "ctkCheckBox"}, {"bool"}, None),  # L162-165
    ({"QPushButton", "ctkCheckablePushButton"}, {"bool"}, None),  # L195-198, L231-234
    ({"QSlider", "QSpinBox"}, {"int"}, None),  # L276-279
    ({"QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox"},
     {"float", "int"}, None),  # L340-345
    ({"QComboBox", "ctkComboBox"}, {"int", "float", "str", "bool"}, "Choice"),  # L418-433: raises without Choice
    ({"QLineEdit", "QLabel", "QTextEdit"}, {"str"}, None),  # L515-518, L551-554, L584-587: exact classes
    ({"ctkPathLineEdit", "ctkDirectoryButton"}, {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath",
                                                 "PureWindowsPath"}, None),  # L673-679, L709-715: pathlib types only
    ({"qMRMLNodeComboBox"}, {"vtkMRML*"}, None),  # L745-748: MRML node classes
]


def _parameter_type(statement: ast.AnnAssign) -> tuple[str, set[str]]:
    """A field's type name and the names of its Annotated[...] validators."""
    annotation = statement.annotation
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
        type_node, *validators = annotation.slice.elts
        return ast.unparse(type_node), {ast.unparse(v.func) for v in validators if isinstance(v, ast.Call)}
    return ast.unparse(annotation), set()


def _has_connector(widget_class: str, type_name: str, validators: set[str]) -> bool:
    for widget_classes, types, required in GUI_CONNECTORS:
        type_fits = type_name.rsplit(".", 1)[-1] in types or ("vtkMRML*" in types and type_name.startswith("vtkMRML"))
        if widget_class in widget_classes and type_fits and (required is None or required in validators):
            return True
    return False


def test_every_parameter_has_a_gui_connector_for_the_widget_it_is_bound_to():
    widgets = _ui_widgets()
    bound = {prop.find("string").text: widget.get("class") for widget in widgets.values()
             for prop in widget.findall("property") if prop.get("name") == "SlicerParameterName"}
    for name, statement in _parameter_statements().items():
        type_name, validators = _parameter_type(statement)
        assert _has_connector(bound[name], type_name, validators), (
            f"{name}: {type_name} has no parameterNodeWrapper connector for a {bound[name]}")


def test_the_connector_rules_catch_the_panel_that_never_set_up():
    """Package 0.11.0 bound ``modelPath: str`` to a ctkPathLineEdit: no connector, so setup() raised."""
    assert not _has_connector("ctkPathLineEdit", "str", set())
    assert _has_connector("ctkPathLineEdit", "pathlib.Path", set())
    assert not _has_connector("QComboBox", "str", set()) and _has_connector("QComboBox", "str", {"Choice"})


def _module_sources() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8")
            for path in (MODULE / "LeftAtriumSeg.py", MODULE / "LeftAtriumSegMRML" / "__init__.py",
                         REPOSITORY / "LeftAtriumSegCLI" / "LeftAtriumSegCLI.py")}


def test_the_module_runs_its_work_only_through_slicers_cli_machinery():
    """The traps of 0.11.0's hand-made process protocol cannot come back: PythonQt gives a QByteArray
    that bytes() cannot take (Slicer's own code calls .data()), and killing PythonSlicer ends only
    the launcher, leaving python-real at work. The worker is a scripted CLI module, which Slicer runs
    with python-real itself and ends on cancel."""
    for name, source in _module_sources().items():
        for trap in ("QProcess", "subprocess", "PythonSlicer", "readAllStandard", ".kill(", "bytes(process", "Popen"):
            assert trap not in source, f"{name} uses {trap}"
    module = _module_sources()["LeftAtriumSeg.py"]
    assert "slicer.cli.run(" in module and ".Cancel()" in module
    assert "LeftAtriumSegLib.cli" not in module and "LeftAtriumSegLib import cli" not in module


def test_worker_parameters_match_its_xml():
    """Slicer builds the worker's command line from the XML (longflags) and reads its return
    parameters by name: the script must take every flag and write every return parameter."""
    root = ElementTree.parse(REPOSITORY / "LeftAtriumSegCLI" / "LeftAtriumSegCLI.xml").getroot()
    source = _module_sources()["LeftAtriumSegCLI.py"]
    flags = [parameter.findtext("longflag") for parameter in root.iter() if parameter.findtext("longflag")]
    returned = [parameter.findtext("name") for parameter in root.iter()
                if parameter.findtext("channel") == "output" and not parameter.findtext("longflag")
                and parameter.findtext("index") is None and parameter.findtext("name")]
    assert set(flags) == set(re.findall(r'add_argument\("--(\w+)"', source)) - {"returnparameterfile"}
    assert returned == ["model", "qc", "qcReasons"]
    for name in returned:
        assert f'"{name}":' in source
    module = _module_sources()["LeftAtriumSeg.py"]
    assert '("model", "qc", "qcReasons")' in module


def test_extension_index_description():
    """LeftAtriumSeg.json as the Extensions Index takes it: its schema's required fields and no
    others (slicer-extension-catalog-entry-schema-v1.0.1: additionalProperties false), the name of
    the CMake project, keys sorted."""
    text = (REPOSITORY / "LeftAtriumSeg.json").read_text(encoding="utf-8")
    description = json.loads(text)
    assert "\r" not in text and list(description) == sorted(description)
    assert {"$schema", "category", "scm_url"} <= set(description)
    assert set(description) <= {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                                "build_subdirectory", "enabled", "tier"}
    assert description["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#")
    cmake = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(LeftAtriumSeg\)$", cmake, re.M)
    assert description["category"] == re.search(r'EXTENSION_CATEGORY "([^"]+)"', cmake).group(1)
    assert description["scm_url"].rsplit("/", 1)[-1].startswith("Slicer")
    assert description["scm_url"] in re.search(r'EXTENSION_HOMEPAGE "([^"]+)"', cmake).group(1)


def test_worker_xml_states_the_package_version():
    from LeftAtriumSegLib import __version__

    root = ElementTree.parse(REPOSITORY / "LeftAtriumSegCLI" / "LeftAtriumSegCLI.xml").getroot()
    assert root.findtext("version") == __version__


def _imported_modules(path) -> set[str]:
    """The LeftAtriumSegLib modules a file imports (relative or absolute), at any depth of the file."""
    package = "LeftAtriumSegLib"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from . import x
                base = [node.module] if node.module else [alias.name for alias in node.names]
                names.update(f"{package}.{name}".split(".")[1] for name in base)
            elif node.module and node.module.startswith(package):
                parts = node.module.split(".")
                names.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith(package + ".") and alias.name.count(".") >= 1)
    return names


def test_the_library_never_imports_a_front_end_and_slicer_never_runs_the_command_line():
    library = MODULE / "LeftAtriumSegLib"
    for path in library.rglob("*.py"):
        if path.name != "cli.py":
            assert "cli" not in _imported_modules(path), f"{path.relative_to(MODULE)} imports cli"
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from) (slicer|qt|ctk)\b", source, re.M), f"{path} imports Slicer"
    for path in (MODULE / "LeftAtriumSeg.py", MODULE / "LeftAtriumSegMRML" / "__init__.py",
                 REPOSITORY / "LeftAtriumSegCLI" / "LeftAtriumSegCLI.py"):
        assert "cli" not in _imported_modules(path), f"{path.name} imports LeftAtriumSegLib.cli"
