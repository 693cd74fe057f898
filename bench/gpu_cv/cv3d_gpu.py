"""A probe, not a shipped design: does a 3D U-Net err on the same cases as the 2D views?

Run like ``cv_gpu.py`` (same data, same folds, same machine; see README.md):

    python3 bench/gpu_cv/cv3d_gpu.py

One 3D U-Net per fold, all folds at once on the GPU, each trained for ``LAS3D_TRAIN_S`` seconds
(default 400; the learning rate follows a cosine over that time, so the iteration count depends
on the machine) on 96^3 crops of the model frame (1.25 mm, two thirds centred on atrium), with
rotation about the first axis (+-15 degrees), scaling (+-15%) and contrast jitter as the 2D
training uses. Held-out cases are predicted by a sliding window (stride 48) over the whole
volume and scored in the model frame with the default cleanup. Writes ``gpu_cv3d.json`` and
``v3d_probabilities.npz`` to ``$OUT``, for ``import_maps.py`` and ``bench/compare_runs.py``
(which also scores the mean of these maps and the 2D ones).
"""
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import cv_gpu  # first: stubs SimpleITK and puts LeftAtriumSeg on the path
import numpy as np
import torch
import torch.nn.functional as F
from cv_gpu import OUT, SHM, frame_scores, load_cases, unpack
from torch import nn

TRAIN_SECONDS = float(os.environ.get("LAS3D_TRAIN_S", "400"))
PATCH, STRIDE, BATCH = 96, 48, 2
WINDOW = int(PATCH * 1.5)  # read around a crop so that rotation and zoom find real image


def conv_block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(inputs, outputs, 3, padding=1), nn.InstanceNorm3d(outputs, affine=True), nn.LeakyReLU(0.01),
        nn.Conv3d(outputs, outputs, 3, padding=1), nn.InstanceNorm3d(outputs, affine=True), nn.LeakyReLU(0.01),
    )


class UNet3D(nn.Module):
    """``(N, 1, D, H, W)`` image to ``(N, 1, D, H, W)`` logits; D, H, W multiples of 16."""

    def __init__(self, features=(16, 32, 64, 128, 256)):
        super().__init__()
        self.encoders, channels = nn.ModuleList(), 1
        for width in features:
            self.encoders.append(conv_block(channels, width))
            channels = width
        self.upsamplers, self.decoders = nn.ModuleList(), nn.ModuleList()
        for width in reversed(features[:-1]):
            self.upsamplers.append(nn.ConvTranspose3d(channels, width, 2, stride=2))
            self.decoders.append(conv_block(2 * width, width))
            channels = width
        self.head = nn.Conv3d(channels, 1, 1)

    def forward(self, x):
        skips = []
        for index, encoder in enumerate(self.encoders):
            x = encoder(x if index == 0 else torch.max_pool3d(x, 2))
            skips.append(x)
        for upsampler, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips[:-1])):
            x = decoder(torch.cat([upsampler(x), skip], 1))
        return self.head(x)


def padded(volume, size=PATCH):
    """Edge-pad every axis up to ``size``; returns the array and the pads."""
    pads = [(0, max(0, size - n)) for n in volume.shape]
    return np.pad(volume, pads, mode="edge"), pads


def sample_batch(cases, foregrounds, rng, device):
    """``BATCH`` augmented crops, images and labels ``(BATCH, 1, PATCH, PATCH, PATCH)`` on ``device``;
    ``foregrounds[i]`` holds case i's atrium voxel indices ``(n, 3)``."""
    images, labels = [], []
    for _ in range(BATCH):
        which = rng.integers(len(cases))
        image, label = cases[which].image, cases[which].label
        if rng.random() < 2 / 3:
            centre = foregrounds[which][rng.integers(len(foregrounds[which]))]
        else:
            centre = np.array([rng.integers(n) for n in image.shape])
        index = [np.clip(np.arange(c - WINDOW // 2, c - WINDOW // 2 + WINDOW), 0, n - 1) for c, n in zip(centre, image.shape)]
        images.append(np.asarray(image)[np.ix_(*index)])
        labels.append(label[np.ix_(*index)])
    image_batch = torch.from_numpy(np.stack(images)[:, None].astype(np.float32)).to(device)
    label_batch = torch.from_numpy(np.stack(labels)[:, None].astype(np.float32)).to(device)
    angles = np.deg2rad(rng.uniform(-15, 15, BATCH))
    scales = (PATCH / WINDOW) * rng.uniform(0.85, 1.15, BATCH)
    theta = np.zeros((BATCH, 3, 4), np.float32)
    for i in range(BATCH):
        c, s = math.cos(angles[i]) * scales[i], math.sin(angles[i]) * scales[i]
        # grid's (x, y, z) are the array's (X, Y, Z): rotate in the in-plane (X, Y) about the first axis
        theta[i, :, :3] = [[c, -s, 0], [s, c, 0], [0, 0, scales[i]]]
    grid = F.affine_grid(torch.from_numpy(theta).to(device), [BATCH, 1, PATCH, PATCH, PATCH], align_corners=False)
    image_batch = F.grid_sample(image_batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    label_batch = (F.grid_sample(label_batch, grid, mode="bilinear", align_corners=False) >= 0.5).float()
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (BATCH, 1, 1, 1, 1)).astype(np.float32)).to(device)
    offset = torch.from_numpy(rng.uniform(-0.6, 0.6, (BATCH, 1, 1, 1, 1)).astype(np.float32)).to(device)
    return image_batch * gain + offset, label_batch


def starts(length):
    last = max(0, length - PATCH)
    return sorted(set(list(range(0, last + 1, STRIDE)) + [last]))


def predict(network, image, device):
    volume, pads = padded(np.asarray(image, dtype=np.float32))
    total = np.zeros(volume.shape, np.float32)
    count = np.zeros(volume.shape, np.float32)
    tensor = torch.from_numpy(volume).to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for z in starts(volume.shape[0]):
            for y in starts(volume.shape[1]):
                for x in starts(volume.shape[2]):
                    patch = tensor[z:z + PATCH, y:y + PATCH, x:x + PATCH][None, None]
                    probability = torch.sigmoid(network(patch).float())[0, 0].cpu().numpy()
                    total[z:z + PATCH, y:y + PATCH, x:x + PATCH] += probability
                    count[z:z + PATCH, y:y + PATCH, x:x + PATCH] += 1
    probability = total / count
    return probability[tuple(slice(0, n - p[1]) for n, p in zip(volume.shape, pads))]


def fold_job(fold, train_ids, held_out_ids):
    from LeftAtriumSegLib.training import dice_bce_loss
    torch.set_num_threads(2)
    torch.manual_seed(fold)
    rng = np.random.default_rng(fold)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = load_cases(train_ids)
    foregrounds = [np.argwhere(case.label) for case in cases]
    network = UNet3D().to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-4)
    start, iteration, losses = time.time(), 0, []
    network.train()
    while (elapsed := time.time() - start) < TRAIN_SECONDS:
        progress = elapsed / TRAIN_SECONDS
        rate = 1e-3 * min(1.0, (iteration + 1) / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimiser.param_groups:
            group["lr"] = rate
        images, labels = sample_batch(cases, foregrounds, rng, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = network(images)
        loss = dice_bce_loss(logits.float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        iteration += 1
    network.eval()
    rows, maps = [], {}
    for case in load_cases(held_out_ids):
        probability = predict(network, case.image, device)
        maps[case.case_id] = np.round(probability * 255).astype(np.uint8)
        rows.append({"fold": fold, "case": case.case_id, **frame_scores(probability, case.label.astype(bool))})
    return rows, maps, {"fold": fold, "iterations": iteration, "loss_last_100": float(np.mean(losses[-100:]))}


def main():
    folds = json.loads(Path(".gpu/folds.json").read_text())
    all_ids = [c for fold in folds for c in fold]
    unpack([d for d in (".gpu/data_a", ".gpu/data_b", "/root/lasdata_a") if os.path.isdir(d)])
    print(f"unpacked {len(list(SHM.glob('*_image.npy')))} cases", flush=True)
    if os.environ.get("LAS_SMOKE") == "1":
        folds = [fold[:1] for fold in folds]
    with cf.ProcessPoolExecutor(len(folds), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fold_job, k, [c for c in all_ids if c not in folds[k]], folds[k]) for k in range(len(folds))]
        results = [future.result() for future in futures]
    rows = [row for result in results for row in result[0]]
    maps = {case: array for result in results for case, array in result[1].items()}
    training = [result[2] for result in results]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_cv3d.json").write_text(json.dumps({"rows": rows, "training": training}, indent=1))
    np.savez_compressed(OUT / "v3d_probabilities.npz", **maps)
    print(training, flush=True)
    for name, keep in (("msd", lambda c: c.startswith("la_")), ("lge", lambda c: not c.startswith("la_"))):
        chosen = [r for r in rows if keep(r["case"])]
        if chosen:
            print(f"v3d {name}: n={len(chosen)} dice {np.mean([r['dice'] for r in chosen]):.4f} "
                  f"min {np.min([r['dice'] for r in chosen]):.4f} |dV| {np.mean([r['abs_volume_error_ml'] for r in chosen]):.2f}", flush=True)
    print(f"total {time.time() - cv_gpu.START:.0f} s", flush=True)


if __name__ == "__main__":
    main()
