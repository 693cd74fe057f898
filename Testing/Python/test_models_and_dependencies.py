"""What the extension installs and downloads: the worker's Python packages, checked and installed
without touching Slicer's own, and models fetched on first use with their checksum."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
from conftest import REPOSITORY, SAMPLE_IMAGE

from LeftAtriumSegLib.dependencies import (
    SLICER_PACKAGES,
    Requirement,
    describe,
    pip_arguments,
    read_requirements,
    unmet_requirements,
    version_key,
)
from LeftAtriumSegLib.errors import ModelFileError
from LeftAtriumSegLib.models import CATALOGUE_PATH, model_path, read_catalogue


def test_the_module_requirements_are_met_here_and_unmet_ones_are_named(tmp_path):
    requirements = read_requirements()
    assert {requirement.name for requirement in requirements} == {"onnxruntime", "safetensors"}
    assert unmet_requirements(requirements) == []
    unmet = unmet_requirements([Requirement("numpy", "999"), Requirement("no-such-package-here", "1.0"),
                                Requirement("numpy", "1.0")])
    assert [requirement.name for requirement, _ in unmet] == ["numpy", "no-such-package-here"]
    assert describe(unmet) == (f"numpy {metadata.version('numpy')} (needs >= 999), no-such-package-here (not installed)")
    assert version_key("1.17.3rc1") == (1, 17, 3) and version_key("1.9") < version_key("1.17")

    malformed = tmp_path / "requirements.txt"
    malformed.write_text("onnxruntime\n")
    with pytest.raises(ValueError, match="expected name>=version"):
        read_requirements(malformed)


def test_a_gpu_build_of_onnx_runtime_meets_the_requirement(monkeypatch):
    """onnxruntime-gpu provides the same `onnxruntime` package: installing the CPU build over it breaks it."""
    def version(name):
        if name == "onnxruntime-gpu":
            return "1.20.1"
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", version)
    assert unmet_requirements([Requirement("onnxruntime", "1.17")]) == []
    assert unmet_requirements([Requirement("onnxruntime", "1.21")]) == [(Requirement("onnxruntime", "1.21"), "1.20.1")]


def test_installs_pin_slicers_own_packages(tmp_path):
    constraints = tmp_path / "constraints.txt"
    arguments = pip_arguments([(Requirement("onnxruntime", "1.17"), None)], constraints)
    assert arguments == ["--constraint", str(constraints), "onnxruntime>=1.17"]
    assert f"numpy=={metadata.version('numpy')}" in constraints.read_text().splitlines()
    assert "numpy" in SLICER_PACKAGES and "SimpleITK" in SLICER_PACKAGES


def test_the_worker_imports_only_its_requirements_and_what_slicer_ships(tmp_path):
    """Slicer has numpy and SimpleITK; the module installs requirements.txt and what they need. The
    worker must run with nothing else (no torch, scipy, slicerio, tqdm, nibabel...)."""
    script = (
        "import runpy, sys\n"
        "at_start = set(sys.modules)\n"
        f"sys.argv = ['LeftAtriumSegCLI.py', '--inputVolume', {str(SAMPLE_IMAGE)!r}, '--outputLabel', "
        f"{str(tmp_path / 'label.nrrd')!r}, '--device', 'cpu']\n"
        "try:\n"
        f"    runpy.run_path({str(REPOSITORY / 'LeftAtriumSegCLI' / 'LeftAtriumSegCLI.py')!r}, run_name='__main__')\n"
        "except SystemExit as end:\n"
        "    assert end.code == 0, end.code\n"
        "print(' '.join(sorted({name.split('.')[0] for name in set(sys.modules) - at_start})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split("\n")[-2].split())
    providers = metadata.packages_distributions()
    allowed = {"numpy", "simpleitk"}
    pending = [requirement.name for requirement in read_requirements()]
    while pending:  # the requirements and everything they require
        name = pending.pop().lower().replace("_", "-")
        if name in allowed:
            continue
        allowed.add(name)
        pending += [line.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].split("!")[0].strip()
                    for line in (metadata.requires(name) or []) if "extra ==" not in line]
    third_party = {module: {d.lower().replace("_", "-") for d in providers[module]}
                   for module in imported if module in providers and module != "LeftAtriumSegLib"}
    strays = {module: dists for module, dists in third_party.items() if not dists & allowed}
    assert strays == {}, strays


def test_catalogue_default_is_the_bundled_model_with_its_checksum():
    entries, default = read_catalogue()
    [bundled] = [entry for entry in entries if entry.id == default]
    path = model_path()
    assert path == CATALOGUE_PATH.parent / bundled.file
    assert path.stat().st_size == bundled.size_bytes
    assert hashlib.sha256(path.read_bytes()).hexdigest() == bundled.sha256


def _catalogue_with_download(tmp_path, data: bytes, sha256: str | None = None):
    served = tmp_path / "served" / "LeftAtriumSeg-9.9.safetensors"
    served.parent.mkdir()
    served.write_bytes(data)
    entries, default = read_catalogue()
    catalogue = tmp_path / "Models.json"
    catalogue.write_text(json.dumps({"default": default, "models": [
        {"id": entry.id, "title": entry.title, "file": str(CATALOGUE_PATH.parent / entry.file),
         "sizeBytes": entry.size_bytes, "sha256": entry.sha256} for entry in entries] + [
        {"id": "LeftAtriumSeg-9.9", "title": "LeftAtriumSeg 9.9", "url": served.as_uri(), "sizeBytes": len(data),
         "sha256": sha256 or hashlib.sha256(data).hexdigest()}]}))
    return catalogue, served


def test_a_downloaded_model_is_fetched_once_checked_and_cached(tmp_path):
    model = model_path().read_bytes()
    catalogue, served = _catalogue_with_download(tmp_path, model)
    cache = tmp_path / "cache"
    path = model_path("LeftAtriumSeg-9.9", cache, catalogue)
    assert path == cache / "LeftAtriumSeg-9.9.safetensors" and path.read_bytes() == model
    served.unlink()  # the second use needs no network
    assert model_path("LeftAtriumSeg-9.9", cache, catalogue) == path
    assert sorted(p.name for p in cache.iterdir()) == ["LeftAtriumSeg-9.9.safetensors"]


def test_a_download_that_is_not_the_model_is_refused_and_not_kept(tmp_path):
    catalogue, served = _catalogue_with_download(tmp_path, b"not the model", sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelFileError, match=r"the download is not model LeftAtriumSeg-9\.9"):
        model_path("LeftAtriumSeg-9.9", cache, catalogue)
    assert list(cache.iterdir()) == []
    served.unlink()
    with pytest.raises(ModelFileError, match="could not download model LeftAtriumSeg-9.9"):
        model_path("LeftAtriumSeg-9.9", cache, catalogue)
    with pytest.raises(ModelFileError, match="neither a model file nor a model of the catalogue"):
        model_path("LeftAtriumSeg-0.1", cache, catalogue)


def test_a_damaged_catalogue_is_refused_with_its_name(tmp_path):
    catalogue = tmp_path / "Models.json"
    shutil.copy(CATALOGUE_PATH, catalogue)
    listing = json.loads(catalogue.read_text())
    listing["models"][0]["url"] = "file:///elsewhere"
    catalogue.write_text(json.dumps(listing))
    with pytest.raises(ModelFileError, match="needs exactly one of 'file'"):
        read_catalogue(catalogue)


def test_a_damaged_copy_of_the_bundled_model_is_refused_before_use(tmp_path):
    """Weights changed in place (zeroed, a flipped byte) still load and segment, under the model's
    name: the catalogue's SHA-256 is checked, as for a download."""
    shutil.copy(CATALOGUE_PATH, tmp_path / "Models.json")
    [bundled] = [entry for entry in read_catalogue()[0] if entry.file]
    damaged = bytearray((CATALOGUE_PATH.parent / bundled.file).read_bytes())
    damaged[-1000] ^= 0x01
    (tmp_path / bundled.file).write_bytes(bytes(damaged))
    with pytest.raises(ModelFileError, match=rf"is not model {re.escape(bundled.id)} as the catalogue lists it"):
        model_path(catalogue=tmp_path / "Models.json")
