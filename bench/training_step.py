"""Seconds per training step of one view's network, by width and precision, on this CPU.

    .venv/bin/python bench/training_step.py [--threads 2] [--steps 10]

A step is what ``training.train_network`` does per iteration minus the batch sampling: forward
pass (float32, or bfloat16 under ``torch.autocast``), the training loss (BCE + soft Dice),
backward pass and AdamW, on a batch of 16 random 5 x 96 x 96 stacks in channels_last. Prints each case's seconds per step and
the minutes that 4,800 iterations of three views would take at that rate. Where the CPU has no
bfloat16 instructions (AVX512-BF16), torch emulates them, and bfloat16 is much slower.
Widths: 1.5's (16 ... 256) and 1.6's (8 ... 128, ``ModelConfig``'s default).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from LeftAtriumSegLib.model_file import ModelConfig
from LeftAtriumSegLib.training import dice_bce_loss

WIDTHS = {"1.5": (16, 32, 64, 128, 256), "1.6": ModelConfig().features}


def seconds_per_step(features: tuple[int, ...], bfloat16: bool, steps: int) -> float:
    torch.manual_seed(0)
    network = replace(ModelConfig(), features=features).build_network().to(memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3)
    images = torch.randn(16, 5, 96, 96).to(memory_format=torch.channels_last)
    labels = (torch.rand(16, 1, 96, 96) > 0.9).float()
    for step in range(steps + 3):  # the first steps warm oneDNN's caches up
        if step == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            logits = network(images)
        loss = dice_bce_loss(logits.float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for name, features in WIDTHS.items():
        for bfloat16 in (False, True):
            step = seconds_per_step(features, bfloat16, args.steps)
            print(f"{name} width {features}, {'bfloat16' if bfloat16 else 'float32 '}: {step:.3f} s/step, "
                  f"3 views x 4,800 iterations {3 * 4800 * step / 60:.0f} min (batch sampling not counted)", flush=True)


if __name__ == "__main__":
    main()
