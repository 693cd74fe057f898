"""The Python packages the Slicer module needs beyond what Slicer ships, and whether they are there.

The module installs what is missing or too old with pip, after asking, and pins the packages that
Slicer itself ships to their installed versions while doing so: a numpy or SimpleITK from PyPI in
place of Slicer's own can break Slicer's compiled modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REQUIREMENTS_PATH = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
# Shipped with Slicer: pinned (pip's --constraint), never upgraded by the module's installs.
SLICER_PACKAGES = ("numpy", "SimpleITK")
# Other distributions of the same Python package: a user's GPU build of ONNX Runtime meets the
# requirement, and installing the CPU build over it would break it.
OTHER_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")}


@dataclass(frozen=True)
class Requirement:
    """A ``name>=minimum`` line of ``requirements.txt``."""

    name: str
    minimum: str

    def __str__(self) -> str:
        return f"{self.name}>={self.minimum}"


def read_requirements(path: Path = REQUIREMENTS_PATH) -> list[Requirement]:
    """The requirements in ``path``, one ``name>=version`` per line (``#`` comments and blank lines
    skipped).

    Raises
    ------
    ValueError
        For a line of any other form.
    """
    requirements = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", line)
        if match is None:
            raise ValueError(f"{path}: cannot read requirement {line!r} (expected name>=version)")
        requirements.append(Requirement(*match.groups()))
    return requirements


def version_key(version: str) -> tuple[int, ...]:
    """The numeric release of a version, for comparison: ``1.17.3rc1`` -> ``(1, 17, 3)``."""
    release = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in release.group(0).split(".")) if release else ()


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet_requirements(requirements: list[Requirement] | None = None) -> list[tuple[Requirement, str | None]]:
    """The requirements that are not installed (``None``) or installed in an older version."""
    unmet = []
    for requirement in read_requirements() if requirements is None else requirements:
        versions = [version for name in (requirement.name, *OTHER_DISTRIBUTIONS.get(requirement.name, ()))
                    if (version := installed_version(name))]
        version = max(versions, key=version_key, default=None)
        if version is None or version_key(version) < version_key(requirement.minimum):
            unmet.append((requirement, version))
    return unmet


def describe(unmet: list[tuple[Requirement, str | None]]) -> str:
    """``onnxruntime (not installed), safetensors 0.3.1 (needs >= 0.4)``."""
    return ", ".join(f"{requirement.name} (not installed)" if version is None
                     else f"{requirement.name} {version} (needs >= {requirement.minimum})"
                     for requirement, version in unmet)


def pip_arguments(unmet: list[tuple[Requirement, str | None]], constraints_path: Path) -> list[str]:
    """``pip install`` arguments for the unmet requirements, with Slicer's own packages pinned in
    ``constraints_path`` (written here): pip then fails rather than replace them."""
    pins = [f"{name}=={version}" for name in SLICER_PACKAGES if (version := installed_version(name))]
    constraints_path.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return ["--constraint", str(constraints_path), *(str(requirement) for requirement, _ in unmet)]
