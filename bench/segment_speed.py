"""Whole-process speed and memory of ``leftatriumseg segment`` on one volume, or on a batch.

    .venv/bin/python bench/segment_speed.py [IMAGE] [--repeats 3] [--threads N] [--shards N] [--model PATH]
        [--code DIR [DIR ...]]

IMAGE defaults to ../shared/data/msd_heart/imagesTr/la_003.nii.gz where that exists (with la_007 the
largest msd_heart volumes, 256 x 256 x 130), else the bundled sample; a folder is one ``segment`` process
over all its images, and the time per image is printed too. The model is the bundled one unless
``--model`` (one model a run; compare models by runs in one sitting). ``--code`` names ``LeftAtriumSeg/`` folders
whose ``LeftAtriumSegLib`` to run, e.g. this checkout's and a ``git worktree`` of an older
version: the versions then take turns, so that all of them meet the same load on the machine.
Each repeat is a fresh process, so start-up, imports and model loading count; peak memory is
that process's maximum resident set size. ``--shards N`` runs N ``segment --shard K/N`` processes at
once over a folder, as a cohort would on an N-core machine (with ``--threads 1``).
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


def run_once(code: Path, image: Path, threads: int, model: Path | None, shards: int = 1) -> tuple[float, float, float]:
    """(wall seconds, peak resident MB of the largest process, the processes' peaks summed) of one
    ``segment`` run of ``code``'s package: one process, or ``shards`` processes at once, each
    segmenting its share (``--shard K/N``) into the same folder."""
    with tempfile.TemporaryDirectory() as output:
        arguments = ["segment", str(image), "--output-dir", output, "--quiet", "--device", "cpu"]
        if threads:
            arguments += ["--threads", str(threads)]
        if model is not None:
            arguments += ["--model", str(model)]
        programs = [f"import sys; sys.path.insert(0, {str(code)!r}); from LeftAtriumSegLib.cli import main; "
                    f"sys.exit(main({arguments + (['--shard', f'{k}/{shards}'] if shards > 1 else [])!r}))"
                    for k in range(1, shards + 1)]
        start = time.perf_counter()
        processes = [subprocess.Popen([sys.executable, "-c", program]) for program in programs]
        peaks_mb = []
        for process in processes:
            # wait4 gives this process's own peak memory, where getrusage(RUSAGE_CHILDREN) would
            # give the largest of all children so far; Popen is told the status it reaped.
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            peaks_mb.append(usage.ru_maxrss / 1024)  # kB on Linux
        seconds = time.perf_counter() - start
    if any(process.returncode != 0 for process in processes):
        raise SystemExit(f"segment failed with status {[p.returncode for p in processes]} ({code})")
    return seconds, max(peaks_mb), sum(peaks_mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path, default=FULL_VOLUME if FULL_VOLUME.exists() else SAMPLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="segment --threads (default: one per physical core)")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the bundled model)")
    parser.add_argument("--shards", type=int, default=1,
                        help="run this many `segment --shard K/N` processes at once (a folder of images)")
    parser.add_argument("--code", type=Path, nargs="+", default=[REPOSITORY / "LeftAtriumSeg"],
                        help="LeftAtriumSeg/ folders to run, taking turns (default: this checkout's)")
    args = parser.parse_args()
    results = {code: [] for code in args.code}
    for _ in range(args.repeats):
        for code in args.code:
            results[code].append(run_once(code.resolve(), args.image, args.threads, args.model, args.shards))
    print(f"image: {args.image}")
    print(f"model: {args.model or 'bundled'}")
    print(f"cpu cores: {os.cpu_count()}, threads: {args.threads or 'default'}"
          + (f", {args.shards} shards at once" if args.shards > 1 else ""))
    images = len([p for p in args.image.iterdir() if p.name.endswith(IMAGE_SUFFIXES)]) if args.image.is_dir() else 1
    for code, runs in results.items():
        times = [seconds for seconds, _, _ in runs]
        per_image = f"; {statistics.median(times) / images:.2f} s per image of {images}" if images > 1 else ""
        together = f", {max(total for _, _, total in runs):.0f} MB in all" if args.shards > 1 else ""
        print(f"{code}: segment wall time, whole process: median {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} runs){per_image}; "
              f"peak resident memory {max(mb for _, mb, _ in runs):.0f} MB{together}")


if __name__ == "__main__":
    main()
