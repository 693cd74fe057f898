"""Whole-process speed and memory of ``leftatriumseg segment`` on one volume.

    .venv/bin/python bench/segment_speed.py [IMAGE] [--repeats 3] [--threads N] [--model PATH] [--bfloat16]

IMAGE defaults to ../shared/data/msd_heart/imagesTr/la_003.nii.gz where that exists (a full
msd_heart volume), else the bundled sample; the model is the bundled one unless ``--model``
(to compare two models in one sitting); ``--bfloat16`` passes ``segment --bfloat16``. Each
repeat is a fresh process, so start-up, imports and model loading count; peak memory is the
child's maximum resident set size.
Targets (issue 2): <= 15 s (aim 5 s) and <= 2 GB on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
FULL_VOLUME = REPOSITORY.parent / "shared" / "data" / "msd_heart" / "imagesTr" / "la_003.nii.gz"
SAMPLE = REPOSITORY / "LeftAtriumSeg" / "Resources" / "SampleData" / "la_022_crop.nii.gz"


def run_once(image: Path, threads: int | None, model: Path | None, bfloat16: bool) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one ``segment`` process."""
    environment = dict(os.environ)
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as output:
        command = [str(Path(sys.executable).parent / "leftatriumseg"), "segment", str(image),
                   "--output-dir", output, "--quiet", "--device", "cpu"]
        if model is not None:
            command += ["--model", str(model)]
        if bfloat16:
            command.append("--bfloat16")
        start = time.perf_counter()
        subprocess.run(command, check=True, env=environment)
        seconds = time.perf_counter() - start
    # ru_maxrss of children is the largest of any child so far (kB on Linux).
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path, default=FULL_VOLUME if FULL_VOLUME.exists() else SAMPLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the child")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the bundled model)")
    parser.add_argument("--bfloat16", action="store_true", help="segment --bfloat16")
    args = parser.parse_args()
    results = [run_once(args.image, args.threads, args.model, args.bfloat16) for _ in range(args.repeats)]
    times = [seconds for seconds, _ in results]
    print(f"image: {args.image}")
    print(f"model: {args.model or 'bundled'}{', bfloat16' if args.bfloat16 else ''}")
    print(f"cpu cores: {os.cpu_count()}, threads: {args.threads or 'default'}")
    print(f"segment wall time, whole process: median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} runs)")
    print(f"peak resident memory: {results[-1][1]:.0f} MB")


if __name__ == "__main__":
    main()
