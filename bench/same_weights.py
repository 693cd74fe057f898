"""Do two model files hold the same model? Settings and every tensor, compared exactly.

    .venv/bin/python bench/same_weights.py LeftAtriumSeg/Resources/Models/leftatriumseg.safetensors runs/final/model.safetensors

The files' SHA-256 may differ where the weights do not: safetensors writes its metadata keys in
no fixed order. Prints each file's SHA-256, whether the settings match, and per view how many
tensors differ and by how much at most; exits 0 only when settings and all tensors are equal.
Used to check that the model card's training command makes the shipped file again.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from LeftAtriumSegLib.model_file import model_file_sha256, read_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args()
    (first_config, first), (second_config, second) = read_model(args.first), read_model(args.second)
    for path in (args.first, args.second):
        print(f"{model_file_sha256(path)}  {path}")
    same_settings, same_names = first_config == second_config, first.keys() == second.keys()
    print(f"settings {'equal' if same_settings else 'differ'}; tensor names {'equal' if same_names else 'differ'}")
    same = same_settings and same_names
    for view in first_config.views:
        names = [name for name in first if name.startswith(f"{view}.") and name in second]
        differing = [name for name in names if not np.array_equal(first[name], second[name])]
        largest = max((float(np.abs(first[name].astype(np.float64) - second[name]).max()) for name in differing
                       if first[name].shape == second[name].shape), default=0.0)
        print(f"{view}: {len(differing)} of {len(names)} tensors differ (largest difference {largest:.3g})")
        same = same and not differing
    print("same model" if same else "different models")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
