"""Add int8 graphs to every fold model of a cross-validation run, each calibrated on its own fold's
training presentations, as ``train`` does for the models it writes; then ``cross_validation.py``
and the other benchmarks score the int8 networks (``segment``'s default where a model file holds
them). The float32 weights stay as they were.

    .venv/bin/python bench/quantize_run.py RUN
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from LeftAtriumSegLib.datasets import DataFolders
from LeftAtriumSegLib.model_file import read_model_config
from LeftAtriumSegLib.training.data import prepare_cases
from LeftAtriumSegLib.training.quantization import quantize_model_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `train --folds K` run")
    args = parser.parse_args()
    record = json.loads((args.run / "training.json").read_text(encoding="utf-8"))
    data = DataFolders(record["data_folders"], record.get("task02_header_folders", []),
                       {folder: tuple(spacing) for folder, spacing in record.get("respaced_folders", {}).items()})
    cases = data.read_cases()
    config = read_model_config(args.run / "fold_0" / "model.safetensors")
    prepared = prepare_cases(cases, config, record["settings"].get("fractional_labels", False))
    for index, fold in enumerate(record["folds"]):
        held_out = [case for case in cases if case.case_id in set(fold["validation"])]
        model = args.run / f"fold_{index}" / "model.safetensors"
        quantize_model_file(model, prepared.training_list(held_out=held_out), seed=record["settings"].get("seed", 0))
        print(f"fold {index}: int8 graphs added to {model}", flush=True)


if __name__ == "__main__":
    main()
