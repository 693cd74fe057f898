"""Put the GPU run's model-frame held-out maps onto each case's own grid, as train --folds writes them.

    .venv/bin/python bench/gpu_cv/import_maps.py VARIANT_probabilities.npz RUN_DIR

RUN_DIR then holds ``probabilities/CASE.nii.gz`` and a ``training.json`` with the folds, which
``leftatriumseg ablate``, ``bench/compare_runs.py`` and ``model_card.held_out_metrics`` score.
"""
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, "LeftAtriumSeg")
from LeftAtriumSegLib.model_file import ModelConfig
from LeftAtriumSegLib.preprocessing import to_model_frame, to_reference_grid
from LeftAtriumSegLib.training import read_decathlon_cases

maps = np.load(sys.argv[1])
run = Path(sys.argv[2]); (run / "probabilities").mkdir(parents=True, exist_ok=True)
folders = ["../shared/data/msd_heart", "../shared/data/la2018_lge"]
cases = {c.case_id: c for f in folders for c in read_decathlon_cases(f)}
config = ModelConfig()
for case_id in maps.files:
    image = sitk.ReadImage(str(cases[case_id].image_path))
    framed = to_model_frame(image, config.frame)
    frame_map = sitk.GetImageFromArray(maps[case_id].astype(np.float32) / 255)
    frame_map.CopyInformation(framed)
    sitk.WriteImage(to_reference_grid(frame_map, image), str(run / "probabilities" / f"{case_id}.nii.gz"), useCompression=True)
folds = json.loads(Path(".gpu/folds.json").read_text())
training = {"data_folders": folders, "cases": list(cases), "folds": [{"validation": f} for f in folds],
            "note": "held-out maps from bench/gpu_cv/cv_gpu.py (GPU), model frame uint8, resampled here"}
(run / "training.json").write_text(json.dumps(training, indent=2))
print(len(maps.files), "maps ->", run)
