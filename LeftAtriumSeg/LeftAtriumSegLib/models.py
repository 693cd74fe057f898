"""The models on offer: the one bundled with the package, and newer ones downloaded on first use.

``Resources/Models/Models.json`` lists them. An entry with ``file`` is bundled (the repository
carries one model, so that it stays small as models are released) and checked against its
SHA-256 at each use; an entry with ``url`` is
downloaded once into the cache folder, checked against its size and SHA-256 before it takes its
name, and used from there. ``default`` names the model that ``segment`` and the Slicer module use
when none is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError
from .io import file_sha256

CATALOGUE_PATH = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "Models.json"
# Where downloaded models are kept; LEFTATRIUMSEG_MODEL_CACHE moves it (a cluster's shared disk, say).
CACHE_ENVIRONMENT_VARIABLE = "LEFTATRIUMSEG_MODEL_CACHE"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalogue: bundled (``file``) or downloaded (``url``).

    Attributes
    ----------
    id : str
        How ``model_path`` names it.
    title : str
    sha256 : str
        The model file's SHA-256 (hex).
    size_bytes : int
        The model file's size in bytes; a download must match it and ``sha256``.
    file : str
        A bundled model's file, relative to the catalogue's folder; "" for a downloaded one.
    url : str
        Where a downloaded model is fetched from; "" for a bundled one.
    description, license, model_card : str
        As the catalogue states them; "" where it does not.
    """

    id: str
    title: str
    sha256: str
    size_bytes: int
    file: str = ""
    url: str = ""
    description: str = ""
    license: str = ""
    model_card: str = ""


def default_cache_folder() -> Path:
    """Folder of downloaded models: ``$LEFTATRIUMSEG_MODEL_CACHE``, else ``~/.leftatriumseg/models``."""
    return Path(os.environ.get(CACHE_ENVIRONMENT_VARIABLE) or Path.home() / ".leftatriumseg" / "models")


def read_catalogue(path: Path = CATALOGUE_PATH) -> tuple[list[ModelEntry], str]:
    """The catalogue's entries and the id of its default model.

    Returns
    -------
    entries : list of ModelEntry
    default : str
        The id of the model used when none is asked for.

    Raises
    ------
    ModelFileError
        For a catalogue that cannot be read, an entry with neither or both of ``file`` and ``url``,
        two entries of one id, or a default that is not among them.
    """
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
        entries = [ModelEntry(id=model["id"], title=model["title"], sha256=model["sha256"],
                              size_bytes=int(model["sizeBytes"]), file=model.get("file", ""), url=model.get("url", ""),
                              description=model.get("description", ""), license=model.get("license", ""),
                              model_card=model.get("modelCard", ""))
                   for model in listing["models"]]
        default = listing["default"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{path}: unreadable model catalogue ({type(error).__name__}: {error})") from None
    ids = [entry.id for entry in entries]
    for entry in entries:
        if bool(entry.file) == bool(entry.url):
            raise ModelFileError(f"{path}: model {entry.id!r} needs exactly one of 'file' (bundled) and 'url' (downloaded)")
    if len(set(ids)) != len(ids) or default not in ids:
        raise ModelFileError(f"{path}: model ids must be distinct and include the default {default!r}")
    return entries, default


def model_path(model: str | Path | None = None, cache_folder: Path | None = None, catalogue: Path = CATALOGUE_PATH) -> Path:
    """The model file for ``model``: a path to a model file, a catalogue id, or None for the default.

    A catalogue model that is downloaded is fetched on first use (``download``).

    Parameters
    ----------
    model : str or Path, optional
        An existing file or a name ending in ``.safetensors`` (taken as a path), a catalogue id,
        or None for the catalogue's default.
    cache_folder : Path, optional
        Where downloaded models are kept; ``default_cache_folder()`` unless given.
    catalogue : Path, optional
        The catalogue, ``Models.json``.

    Raises
    ------
    ModelFileError
        For an id the catalogue does not have (and no such file), an unreadable catalogue
        (``read_catalogue``), a bundled model file that is not the catalogue's (SHA-256), or a
        download that fails.
    """
    if model is not None and (Path(model).exists() or Path(model).suffix == ".safetensors"):
        return Path(model)
    entries, default = read_catalogue(catalogue)
    wanted = default if model is None else str(model)
    entry = next((entry for entry in entries if entry.id == wanted), None)
    if entry is None:
        raise ModelFileError(f"{wanted}: neither a model file nor a model of the catalogue "
                             f"({', '.join(e.id for e in entries)})")
    if entry.file:
        path = catalogue.parent / entry.file
        # A damaged copy could load and segment, wrongly, under the model's name.
        if path.is_file() and (found := file_sha256(path)) != entry.sha256:
            raise ModelFileError(f"{path}: is not model {entry.id} as the catalogue lists it (SHA-256 {found[:12]}..., "
                                 f"expected {entry.sha256[:12]}...): damaged? reinstall the package or extension")
        return path
    return download(entry, cache_folder or default_cache_folder())


def download(entry: ModelEntry, cache_folder: Path) -> Path:
    """The cached file of a downloaded model, fetched first where it is not there yet.

    The download goes to a temporary file in ``cache_folder`` and takes its name only when its size
    and SHA-256 are the catalogue's: an interrupted or altered download is never used.

    Raises
    ------
    ModelFileError
        Naming the URL, for a download that fails or does not match.
    """
    target = cache_folder / f"{entry.id}.safetensors"
    if target.is_file() and file_sha256(target) == entry.sha256:
        return target
    try:
        cache_folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=".safetensors", dir=cache_folder)
    except OSError as error:
        raise ModelFileError(f"{cache_folder}: cannot store downloaded models ({error.strerror})") from None
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(handle, "wb") as file, urllib.request.urlopen(entry.url, timeout=60) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                size += len(block)
                file.write(block)
        if size != entry.size_bytes or digest.hexdigest() != entry.sha256:
            raise ModelFileError(f"{entry.url}: the download is not model {entry.id} ({size} bytes, SHA-256 "
                                 f"{digest.hexdigest()[:12]}...; expected {entry.size_bytes} bytes, {entry.sha256[:12]}...)")
        shutil.move(temporary, target)
    except (urllib.error.URLError, OSError) as error:
        raise ModelFileError(f"{entry.url}: could not download model {entry.id} ({getattr(error, 'reason', error)})") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target
