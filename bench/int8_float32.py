"""The same model's int8 and float32 networks on this CPU: do they give the same masks?

    .venv/bin/python bench/int8_float32.py ../shared/data/msd_heart [--model PATH | --run RUN_DIR]

ONNX Runtime runs int8 convolutions with other instructions on a CPU with VNNI than on one
without (AVX2 only), where products of full-range weights can saturate; ``train`` writes 7-bit
weights against that (``training/quantization.py``). This benchmark segments every case of a
Decathlon folder both ways, through ``segment``'s inference and cleanup, and prints per case the
Dice of each against the reference, the Dice between the two masks, both volumes, the largest
difference in probability and the seconds each took; then the means, and the CPU's vector
instructions, since the answer is that CPU's. With ``--run`` each case is scored by the fold
model that held it out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.datasets import read_decathlon_cases
from LeftAtriumSegLib.inference import predict
from LeftAtriumSegLib.io import read_mask
from LeftAtriumSegLib.metrics import dice
from LeftAtriumSegLib.onnx_network import load_onnx_networks
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask
from presentations import add_model_arguments, case_models

PRECISIONS = ("int8", "float32")


def vector_instructions() -> str:
    """The CPU's AVX2, AVX-512, VNNI and AMX flags as Linux reports them; empty elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return ""
    return " ".join(sorted(flag for flag in set(flags) if flag.startswith(("avx2", "avx512", "avx_vnni", "amx"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for the networks (0: one per core)")
    args = parser.parse_args()
    print(f"CPU vector instructions: {vector_instructions() or 'not known'}")
    cases = read_decathlon_cases(args.data_dir)
    models = case_models(cases, args)
    loaded: dict[tuple[Path, str], tuple] = {}
    print(f"{'case':22s} {'Dice int8':>9s} {'float32':>8s} {'int8~f32':>8s} {'mL int8':>8s} {'float32':>8s} "
          f"{'max |dp|':>8s} {'s int8':>7s} {'float32':>7s}")
    rows = []
    for case in cases:
        if case.case_id not in models:
            continue
        image, reference = sitk.ReadImage(str(case.image_path)), sitk.GetArrayFromImage(read_mask(case.label_path)) > 0
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000
        masks, probabilities, seconds = {}, {}, {}
        for precision in PRECISIONS:
            key = (models[case.case_id], precision)
            if key not in loaded:
                loaded[key] = load_onnx_networks(key[0], "cpu", args.threads, precision)
                if {network.precision for network in loaded[key][0].values()} != {precision}:
                    # load_onnx_networks falls back to float32 for a file without int8 graphs.
                    sys.exit(f"{key[0]}: holds no int8 graphs (bench/quantize_run.py adds them to a run's models)")
                predict(image, *loaded[key])  # once untimed: the first run of a session includes its set-up
            networks, config = loaded[key]
            start = time.perf_counter()
            probabilities[precision] = sitk.GetArrayFromImage(predict(image, networks, config).probability_map)
            masks[precision] = clean_mask(probabilities[precision], image.GetSpacing(), CleanupSettings())
            seconds[precision] = time.perf_counter() - start
        row = (dice(masks["int8"], reference), dice(masks["float32"], reference), dice(masks["int8"], masks["float32"]),
               masks["int8"].sum() * voxel_ml, masks["float32"].sum() * voxel_ml,
               float(np.abs(probabilities["int8"] - probabilities["float32"]).max()), seconds["int8"], seconds["float32"])
        rows.append(row)
        print(f"{case.case_id:22s} {row[0]:9.4f} {row[1]:8.4f} {row[2]:8.4f} {row[3]:8.2f} {row[4]:8.2f} {row[5]:8.3f} "
              f"{row[6]:7.2f} {row[7]:7.2f}", flush=True)
    if not rows:
        sys.exit(f"no case of {args.data_dir} to score" + (f" ({args.run} held none out)" if args.run else ""))
    int8_dice, float32_dice, between, int8_ml, float32_ml, _, int8_s, float32_s = np.array(rows).T
    print(f"{len(rows)} cases: mean Dice int8 {int8_dice.mean():.4f}, float32 {float32_dice.mean():.4f} (lowest "
          f"{int8_dice.min():.4f}, {float32_dice.min():.4f}); int8 against float32 mean {between.mean():.4f}, lowest "
          f"{between.min():.4f}; volume difference mean {np.abs(int8_ml - float32_ml).mean():.2f} mL, largest "
          f"{np.abs(int8_ml - float32_ml).max():.2f} mL; seconds per case int8 {int8_s.mean():.2f}, float32 {float32_s.mean():.2f}")


if __name__ == "__main__":
    main()
