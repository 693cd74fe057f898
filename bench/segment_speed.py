"""Whole-process speed and memory of ``leftatriumseg segment`` on one volume, or on a batch.

    .venv/bin/python bench/segment_speed.py [IMAGE] [--repeats 3] [--threads N] [--model PATH]
        [--code DIR [DIR ...]]

IMAGE defaults to ../shared/data/msd_heart/imagesTr/la_003.nii.gz where that exists (the largest
msd_heart volume, 256 x 256 x 130), else the bundled sample; a folder is one ``segment`` process
over all its images, and the time per image is printed too. The model is the bundled one unless
``--model`` (to compare two models in one sitting). ``--code`` names ``LeftAtriumSeg/`` folders
whose ``LeftAtriumSegLib`` to run, e.g. this checkout's and a ``git worktree`` of an older
version: the versions then take turns, so that all of them meet the same load on the machine.
Each repeat is a fresh process, so start-up, imports and model loading count; peak memory is
that process's maximum resident set size.
Targets: <= 2.0 s and <= 600 MB for la_003, <= 1.0 s per image in a batch of 10 or more, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from LeftAtriumSegLib.io import IMAGE_SUFFIXES

REPOSITORY = Path(__file__).resolve().parents[1]
FULL_VOLUME = REPOSITORY.parent / "shared" / "data" / "msd_heart" / "imagesTr" / "la_003.nii.gz"
SAMPLE = REPOSITORY / "LeftAtriumSeg" / "Resources" / "SampleData" / "la_022_crop.nii.gz"


def run_once(code: Path, image: Path, threads: int, model: Path | None) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one ``segment`` process running ``code``'s package."""
    with tempfile.TemporaryDirectory() as output:
        arguments = ["segment", str(image), "--output-dir", output, "--quiet", "--device", "cpu"]
        if threads:
            arguments += ["--threads", str(threads)]
        if model is not None:
            arguments += ["--model", str(model)]
        program = (f"import sys; sys.path.insert(0, {str(code)!r}); "
                   f"from LeftAtriumSegLib.cli import main; sys.exit(main({arguments!r}))")
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", program])
        # wait4 gives this process's own peak memory, where getrusage(RUSAGE_CHILDREN) would
        # give the largest of all children so far; Popen is told the status it reaped.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"segment failed with status {process.returncode} ({code})")
    return seconds, usage.ru_maxrss / 1024  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path, default=FULL_VOLUME if FULL_VOLUME.exists() else SAMPLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="segment --threads (default: one per physical core)")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the bundled model)")
    parser.add_argument("--code", type=Path, nargs="+", default=[REPOSITORY / "LeftAtriumSeg"],
                        help="LeftAtriumSeg/ folders to run, taking turns (default: this checkout's)")
    args = parser.parse_args()
    results = {code: [] for code in args.code}
    for _ in range(args.repeats):
        for code in args.code:
            results[code].append(run_once(code.resolve(), args.image, args.threads, args.model))
    print(f"image: {args.image}")
    print(f"model: {args.model or 'bundled'}")
    print(f"cpu cores: {os.cpu_count()}, threads: {args.threads or 'default'}")
    images = len([p for p in args.image.iterdir() if p.name.endswith(IMAGE_SUFFIXES)]) if args.image.is_dir() else 1
    for code, runs in results.items():
        times = [seconds for seconds, _ in runs]
        per_image = f"; {statistics.median(times) / images:.2f} s per image of {images}" if images > 1 else ""
        print(f"{code}: segment wall time, whole process: median {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} runs){per_image}; "
              f"peak resident memory {max(mb for _, mb in runs):.0f} MB")


if __name__ == "__main__":
    main()
