"""Write the 46 cases in the model frame (normalised image quantised to 8 bits; label as the
mask's share of each voxel, x 255 rounded) and the cross-validation folds (4, seed 0) to
``.gpu/`` for ``cv_gpu.py``, in two parts that each fit one 64 MiB transfer. Run here, from the
repository root: ``.venv/bin/python bench/gpu_cv/export.py``.

``cv_gpu.load_cases`` turns the label back into 1.5's 0/1 targets (>= 128: exactly the cut at
0.5 that ``prepare_case`` makes, checked for every case below) or into fractions."""
import json
import lzma
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "LeftAtriumSeg")
from LeftAtriumSegLib.model_file import ModelConfig
from LeftAtriumSegLib.training import make_folds, prepare_case, read_decathlon_cases

out = Path(".gpu")
out.mkdir(exist_ok=True)
folders = ["../shared/data/msd_heart", "../shared/data/la2018_lge"]
cases = [c for f in folders for c in read_decathlon_cases(f)]
folds = make_folds(cases, 4, 0)
(out / "folds.json").write_text(json.dumps([[c.case_id for c in fold] for fold in folds]))
config = ModelConfig()
for index, case in enumerate(cases):
    part = out / ("data_a" if index < 10 else "data_b")
    part.mkdir(exist_ok=True)
    prepared = prepare_case(case, config, fractional_labels=True)
    # float64: a float32 product can round 0.5 - 1 ulp up to 127.5, and that to 128.
    label = np.round(prepared.label.astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(label >= 128, prepared.label >= 0.5), case.case_id  # prepare_case's cut
    lo, hi = float(prepared.image.min()), float(prepared.image.max())
    quantised = np.round((prepared.image - lo) / (hi - lo) * 255).astype(np.uint8)
    header = json.dumps({"case": case.case_id, "shape": prepared.image.shape, "lo": lo, "hi": hi}).encode()
    blob = lzma.compress(quantised.tobytes() + label.tobytes(), preset=6)
    (part / f"{case.case_id}.xz").write_bytes(len(header).to_bytes(4, "little") + header + blob)
    print(case.case_id, part.name, len(blob) / 1e6, flush=True)
