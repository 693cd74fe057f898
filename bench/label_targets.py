"""Training targets in the model frame: the 0.5 cut that ``training.prepare_case`` applies by
default, or the interpolated fraction kept until after augmentation (``fractional_labels``).

    .venv/bin/python bench/label_targets.py ../shared/data/msd_heart ../shared/data/la2018_lge \
        [--views axial] [--targets cut fraction] [--fold 0] [--iterations 4800] [--slices 5] \
        [--output-dir DIR] [--maps-dir DIR]

Why: bringing a mask into the model frame interpolates it linearly; la2018_lge's masks are
0.625 mm and the frame 1.25 mm, so many frame voxels sit exactly half inside, and ``>= 0.5``
counts them all: the training masks grow by 2.0 mL (3.8%) on average
(``bench/volume_error_scale.py ../shared/data/la2018_lge``). Kept as a fraction, the cut
happens after ``sample_batch``'s random rotation and scaling, where exact halves are rare.

For each kind of target, trains one network per view on the other folds' cases (same seed,
same settings as the shipped model otherwise), then scores the fold's held-out cases on their
own grids with the default cleanup: each view's network alone and, given several views, the
three-view inference the shipped model runs (the first view localises). Prints Dice and signed
volume error (prediction minus reference, mL) per case and per data set. With ``--output-dir``
the networks are kept there (``TARGETS_VIEW.safetensors``) and ones already there are loaded
instead of trained; with ``--maps-dir`` each column's held-out probability maps are written
there, for ``bench/error_location.py``. ``--slices`` gives the networks stacks of another number of
neighbouring slices (the shipped model's take 5). About 19 minutes per network on this project's 2-core
CPU.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.inference import predict_probability_map
from LeftAtriumSegLib.metrics import segmentation_metrics
from LeftAtriumSegLib.model_file import ModelConfig, load_model, save_model
from LeftAtriumSegLib.network import TorchSliceNetwork
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask
from LeftAtriumSegLib.preprocessing import VIEW_AXES
from LeftAtriumSegLib.training import TrainingSettings, make_folds, prepare_case, read_decathlon_cases, train_network
from torch import nn

TARGETS = {"cut": False, "fraction": True}  # name -> fractional_labels


def networks_for(targets: str, views: list[str], training_cases, config: ModelConfig,
                 settings: TrainingSettings, output_dir: Path | None) -> dict:
    """Each view's network for these targets: loaded from ``output_dir`` if there, else trained."""
    networks, prepared = {}, None
    for view in views:
        path = output_dir / f"{targets}_{view}.safetensors" if output_dir else None
        if path is not None and path.exists():
            loaded, loaded_config = load_model(path, "cpu")
            if loaded_config.slices != config.slices:
                raise SystemExit(f"{path} takes {loaded_config.slices} slices, not {config.slices}: "
                                 "use another --output-dir")
            networks[view] = loaded[view]
            continue
        if prepared is None:
            prepared = [prepare_case(case, config, TARGETS[targets]) for case in training_cases]
        start = time.perf_counter()
        networks[view] = train_network(prepared, config, settings, view, description=f"{targets} {view}")
        print(f"{targets} {view}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        if path is not None:
            save_model(path, nn.ModuleDict({view: networks[view]}), replace(config, views=(view,)))
    return networks


def score(case, networks: dict, config: ModelConfig, cleanup: CleanupSettings, maps_dir: Path | None) -> dict:
    """Metrics of ``networks``' cleaned prediction; its probability map goes to ``maps_dir`` if given."""
    image, reference = sitk.ReadImage(str(case.image_path)), sitk.ReadImage(str(case.label_path))
    slice_networks = {view: TorchSliceNetwork(network) for view, network in networks.items()}
    probability = predict_probability_map(image, slice_networks, replace(config, views=tuple(networks)))
    if maps_dir is not None:
        sitk.WriteImage(probability, str(maps_dir / f"{case.case_id}.nii.gz"))
    spacing_mm = image.GetSpacing()  # (x, y, z), as clean_mask and the metrics take it
    mask = clean_mask(sitk.GetArrayFromImage(probability), spacing_mm, cleanup)
    return segmentation_metrics(mask, sitk.GetArrayViewFromImage(reference) > 0, spacing_mm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--views", nargs="+", default=["axial"], choices=sorted(VIEW_AXES))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=TrainingSettings().iterations)
    parser.add_argument("--slices", type=int, default=ModelConfig().slices,
                        help="neighbouring slices each network takes (odd)")
    parser.add_argument("--output-dir", type=Path, help="keep the networks here (and reuse those found)")
    parser.add_argument("--maps-dir", type=Path,
                        help="write each column's held-out probability maps to MAPS_DIR/TARGETS_VIEWS/CASE.nii.gz")
    args = parser.parse_args()
    try:
        config = ModelConfig(slices=args.slices)
    except ValueError as error:
        parser.error(str(error))
    settings = TrainingSettings(iterations=args.iterations)
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    cases = [case for folder in args.data for case in read_decathlon_cases(folder)]
    held_out = make_folds(cases, 4, settings.seed)[args.fold]
    held_out_ids = {case.case_id for case in held_out}
    training_cases = [case for case in cases if case.case_id not in held_out_ids]
    cleanup, rows, columns = CleanupSettings(), {}, []
    for targets in args.targets:
        networks = networks_for(targets, args.views, training_cases, config, settings, args.output_dir)
        chosen = [{view: networks[view]} for view in args.views] + ([networks] if len(networks) > 1 else [])
        for subset in chosen:
            column = f"{targets}, {'+'.join(subset)}"
            columns.append(column)
            maps_dir = args.maps_dir / f"{targets}_{'+'.join(subset)}" if args.maps_dir else None
            if maps_dir is not None:
                maps_dir.mkdir(parents=True, exist_ok=True)
            for case in held_out:
                rows.setdefault(case.case_id, {})[column] = score(case, subset, config, cleanup, maps_dir)
    print(f"\nfold {args.fold}, {args.iterations} iterations, {args.slices} slices; Dice and signed volume error (mL)")
    print(f"{'case':24s} " + " ".join(f"{column:>28s}" for column in columns))
    for case_id, by_column in rows.items():
        print(f"{case_id:24s} " + " ".join(
            f"{by_column[c]['dice']:13.3f} {by_column[c]['predicted_ml'] - by_column[c]['reference_ml']:+14.1f}"
            for c in columns))
    for folder in args.data:
        ids = {case.case_id for case in read_decathlon_cases(folder)} & held_out_ids
        for column in columns:
            chosen_rows = [rows[case_id][column] for case_id in ids]
            signed = [m["predicted_ml"] - m["reference_ml"] for m in chosen_rows]
            print(f"{folder.name} ({len(ids)} cases), {column}: Dice {np.mean([m['dice'] for m in chosen_rows]):.3f}, "
                  f"signed volume error {np.mean(signed):+.2f} mL, absolute {np.mean(np.abs(signed)):.2f} mL")


if __name__ == "__main__":
    main()
