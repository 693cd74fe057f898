"""The whole ``segment`` process against the closest peer's network alone, in one run.

    .venv/bin/python bench/peer_speed.py [IMAGE] [--repeats 3] [--threads 2]

The peer is MONAI Label's left-atrium sample app: a MONAI ``UNet`` (3D; channels 16-256, strides
2, two residual units, BatchNorm; 1 channel in, 2 out) on the input resampled to 1 mm and cropped
to 256 x 256 x 128. Its forward pass alone is timed here with random weights (the time does not
depend on them) on that input size, with torch on the same number of CPU threads. ``segment`` is
timed whole (a fresh process: start-up, reading, every stage, writing) on IMAGE (default la_003,
with la_007 the largest msd_heart scans). Both take turns, median of ``--repeats``. MONAI and torch are
benchmark dependencies only (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from segment_speed import FULL_VOLUME, REPOSITORY, SAMPLE, run_once


PEER = """
import sys, time, torch
from monai.networks.layers import Norm
from monai.networks.nets import UNet
torch.set_num_threads(int(sys.argv[1]))
network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.BATCH).eval()
volume = torch.randn(1, 1, 256, 256, 128)
with torch.inference_mode():
    start = time.perf_counter()
    network(volume)
    print(time.perf_counter() - start)
"""


def peer_forward_seconds(threads: int) -> float:
    """The peer network's forward pass, timed inside a process of its own (so that this one stays
    small: a child forked from a process holding torch's buffers would report them as its peak)."""
    result = subprocess.run([sys.executable, "-c", PEER, str(threads)], capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=FULL_VOLUME if FULL_VOLUME.exists() else SAMPLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    peer, ours, memory = [], [], []
    for _ in range(args.repeats):
        peer.append(peer_forward_seconds(args.threads))
        seconds, peak_mb, _ = run_once(REPOSITORY / "LeftAtriumSeg", args.image, args.threads, None)
        ours.append(seconds)
        memory.append(peak_mb)
    peer_median, ours_median = statistics.median(peer), statistics.median(ours)
    print(f"image: {args.image}; CPU threads: {args.threads}; median of {args.repeats}")
    print(f"peer network forward pass alone (MONAI UNet, 256 x 256 x 128): {peer_median:.2f} s")
    print(f"leftatriumseg segment, whole process: {ours_median:.2f} s, peak {max(memory):.0f} MB")
    print(f"ratio segment / peer network: {ours_median / peer_median:.2f}")


if __name__ == "__main__":
    main()
