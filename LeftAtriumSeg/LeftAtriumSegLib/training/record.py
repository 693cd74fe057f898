"""The training record, ``training.json``: what a run trained on and with, how long it took, and
the commands that ran it. Written when training starts and after each fold, so an interrupted
run can be resumed only with the same data and options."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..datasets import Case, DataFolders
from ..errors import LeftAtriumSegError, some_names
from ..io import atomic_output, file_sha256
from ..model_file import ModelConfig, parameter_count
from .layout import RECORD_NAME
from .settings import TrainingSettings, as_recorded_now

# What a resumed run must share with the run it goes on with.
SAME_TRAINING_KEYS = ("cases", "fold_count", "task02_header_folders", "respaced_folders", "config", "settings")


def new_record(data: DataFolders, cases: Sequence[Case], folds: int, config: ModelConfig, settings: TrainingSettings,
               command: str, device: str | torch.device) -> dict:
    """The record of a run about to start.

    Parameters
    ----------
    data : DataFolders
        The data folders and their known faults.
    cases : sequence of Case
        The cases read from them.
    folds : int
        The fold count, 0 for training on every case.
    config : ModelConfig
        The model's config; its parameter count is recorded too.
    settings : TrainingSettings
        The training settings.
    command : str
        The command line, as the user would type it again.
    device : str or torch.device
        Where the networks train.

    Returns
    -------
    dict
        JSON-ready: ``command``, ``data_folders``, ``cases``, ``fold_count``,
        ``task02_header_folders``, ``respaced_folders``, ``settings``, ``config``, ``parameters``,
        ``torch_threads``, ``device``; ``with_case_files`` adds the files' digests once they are
        known to read.
    """
    return {
        "command": command,
        # Resolved: a resume from another folder, or with another spelling, is compared as the same.
        "data_folders": [str(Path(folder).resolve()) for folder in data.folders],
        "cases": [case.case_id for case in cases],
        "fold_count": folds,
        "task02_header_folders": [str(Path(folder).resolve()) for folder in data.folders
                                  if data.has_task02_headers(folder)],
        "respaced_folders": {str(Path(folder).resolve()): list(data.scan_spacing(folder))
                             for folder in data.folders if data.scan_spacing(folder) is not None},
        "settings": settings.__dict__,
        "config": json.loads(config.to_json()),
        "parameters": parameter_count(config.build_networks()),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def resumed_record(record_path: Path, record: dict) -> dict:
    """The interrupted run's record, with this sitting's command, threads and device added, once it
    is sure to be the same training.

    Parameters
    ----------
    record_path : pathlib.Path
        The interrupted run's ``training.json``.
    record : dict
        ``new_record`` of this sitting.

    Returns
    -------
    dict
        The earlier record without its last sitting's time, with ``resumed_by`` extended by this
        command.

    Raises
    ------
    LeftAtriumSegError
        There is no readable record, or it differs from this sitting in any of
        ``SAME_TRAINING_KEYS`` (the message names the settings or config entries that differ).
    """
    if not record_path.is_file():
        raise LeftAtriumSegError(f"{record_path.parent}: no training.json of an earlier run to resume")
    try:
        earlier = json.loads(record_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise LeftAtriumSegError(f"{record_path}: not a readable training record ({error})") from None
    if not isinstance(earlier, dict):
        raise LeftAtriumSegError(f"{record_path}: not a readable training record (a JSON {type(earlier).__name__}, "
                                 "not an object)")
    # A record without these keys named no such folders, and trained without the settings added since.
    earlier.setdefault("task02_header_folders", [])
    earlier.setdefault("respaced_folders", {})
    if isinstance(earlier.get("settings"), dict):
        earlier["settings"] = as_recorded_now(earlier["settings"])
    for key in SAME_TRAINING_KEYS:
        there, now = earlier.get(key), json.loads(json.dumps(record[key]))
        if there != now:
            differences = ""
            if isinstance(there, dict) and isinstance(now, dict):
                differences = " (" + ", ".join(f"{name} {there.get(name)!r} there, {now.get(name)!r} now"
                                               for name in sorted(there.keys() | now.keys())
                                               if there.get(name) != now.get(name)) + ")"
            raise LeftAtriumSegError(f"{record_path.parent}: the run there had other {key.replace('_', ' ')}"
                                     f"{differences}; resume needs the same data and options (or train into a new "
                                     "folder)")
    # The same case names in another folder are other scans: the card would describe the earlier ones.
    there, now = earlier.get("data_folders", []), record["data_folders"]
    if there != now:
        raise LeftAtriumSegError(f"{record_path.parent}: the run there trained on other data folders "
                                 f"({', '.join(there)} there, {', '.join(now)} now); resume needs the same data and "
                                 "options (or train into a new folder)")

    # A finished run's total stands: resuming it trains nothing more.
    earlier = {key: value for key, value in earlier.items() if key != "last_sitting_seconds"}
    return {**earlier, "resumed_by": [*earlier.get("resumed_by", []), record["command"]],
            **{key: record[key] for key in ("torch_threads", "device")}}


def with_case_files(record: dict, cases: Sequence[Case], run_folder: Path, resumed: bool = False) -> dict:
    """The record with ``case_files_sha256``, each case's image and label digests; for a resumed
    run's record, once they are found to be those it started with. A resumed record without them
    (written before they were kept) stays without: today's digests are not what that run started on.

    Raises
    ------
    LeftAtriumSegError
        A case's image or label differs from the one the resumed run recorded, or the record's
        digests are not each case's two.
    """
    if resumed and "case_files_sha256" not in record:
        return record
    digests = {case.case_id: [file_sha256(case.image_path), file_sha256(case.label_path)] for case in cases}
    # A label corrected between an interrupted sitting and its resume would leave a model trained
    # partly on each; the names alone do not tell.
    there = record.get("case_files_sha256", digests)
    if not isinstance(there, dict) or not all(isinstance(pair, list) and len(pair) == 2 and all(
            isinstance(digest, str) for digest in pair) for pair in there.values()):
        raise LeftAtriumSegError(f"{run_folder / RECORD_NAME}: not a readable training record (case_files_sha256 is "
                                 "not each case's two SHA-256 digests)")
    if changed := [case for case, pair in digests.items() if there.get(case) != pair]:
        raise LeftAtriumSegError(f"{run_folder}: the image or label of {some_names(changed)} changed since the run "
                                 "there started; resume needs the same data (--overwrite trains again on the data as "
                                 "it is now)")
    return {**record, "case_files_sha256": digests}


def write_record(record_path: Path, record: dict) -> None:
    """Write a record as indented JSON, atomically: a run killed meanwhile leaves the last whole
    record, which ``--resume`` reads.

    Parameters
    ----------
    record_path : pathlib.Path
        ``training.json`` in the run folder, replaced if it exists.
    record : dict
        JSON-ready, as ``new_record`` and ``train_model`` build it.
    """
    with atomic_output(record_path, overwrite=True) as temporary:
        temporary.write_text(json.dumps(record, indent=2), encoding="utf-8")
