"""Cross-validate training variants on a GPU machine that has torch but no SimpleITK.

Run from the repository root on that machine, after ``export.py`` here (see README.md):

    LAS_VARIANTS=v5_bf16_4800 python3 bench/gpu_cv/cv_gpu.py

Reads the prepared cases from ``.gpu/data_*`` (or ``/root/lasdata_a``), trains every
(variant, fold, view) network in parallel processes on the GPU, predicts each fold's held-out
cases in the model frame, scores them there (also with each volume turned into 3 random other
axis orders and flips), and writes to ``$OUT`` the scores (``gpu_cv.json``) and the held-out
probability maps (``VARIANT_probabilities.npz``, uint8, model frame) that ``import_maps.py``
puts back on each case's grid for scoring with the shipped code.

Environment: ``LAS_VARIANTS`` (comma-separated names from ``variants()``; default all),
``LAS_TRAIN_DEADLINE`` (seconds after start when unfinished training is abandoned and only
complete variants are scored; default 390, to fit a 10-minute call), ``LAS_WORKERS`` (parallel
networks, default 16), ``LAS_MARGINS`` (comma-separated localiser margins in voxels: each
held-out case is also scored with each, as in the "Localiser" table of docs/model-development.md),
``LAS_SMOKE=1`` (3 iterations, one held-out case per fold: a CPU check of the script),
``LAS_SPEED=1`` (seconds per 200 iterations, one network alone and 16 at once).
"""
import concurrent.futures as cf
import json
import lzma
import os
import sys
import time
import types
import zlib
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np

stub = types.ModuleType("SimpleITK")  # not installed there; only the numpy paths run


def _stub_attribute(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return 0  # e.g. sitk.sitkLinear as a default argument


stub.__getattr__ = _stub_attribute
sys.modules["SimpleITK"] = stub
for _name in ("slicerio", "nrrd", "pydicom", "onnx", "onnxruntime"):
    try:
        __import__(_name)
    except ImportError:
        sys.modules[_name] = stub
sys.path.insert(0, "LeftAtriumSeg")

START = time.time()
SHM = Path(os.environ.get("LAS_SHM", "/dev/shm/lasdata"))
RESULTS = Path(os.environ.get("LAS_RESULTS", "/root/lasresults"))
OUT = Path(os.environ.get("OUT", "/tmp/out"))
TRAIN_DEADLINE_S = float(os.environ.get("LAS_TRAIN_DEADLINE", "390"))
VIEWS = ("axial", "coronal", "sagittal")
SMOKE = os.environ.get("LAS_SMOKE") == "1"
MARGINS = [int(m) for m in os.environ.get("LAS_MARGINS", "").split(",") if m]


def variants():
    from LeftAtriumSegLib.training import TrainingSettings
    base = TrainingSettings(iterations=2400, bfloat16=False)  # 1.4's settings
    found = {
        "v0_baseline": base,
        "v1_orient": replace(base, random_orientation=True),
        "v3_orient_4800": replace(base, random_orientation=True, iterations=4800),
        "v4_base_4800": replace(base, iterations=4800),
        "v5_bf16_4800": replace(base, iterations=4800, bfloat16=True),
        "v6_msd_double": replace(base, iterations=4800, bfloat16=True),  # see MSD_REPEATS
        # Same pixels per batch as 16 crops of 96, more context per crop.
        "v7_crop128": replace(base, iterations=4800, bfloat16=True, crop_size=128, batch_size=9),
        # Twice the shipped training (beyond the CPU hour): is the volume error optimisation-limited?
        "v8_9600": replace(base, iterations=9600, bfloat16=True),
        # 1.5's settings with another seed: how far the scores move by chance alone.
        "v5_seed1": replace(base, iterations=4800, bfloat16=True, seed=1),
        "v5_seed2": replace(base, iterations=4800, bfloat16=True, seed=2),
        # 1.5's settings with targets cut only after augmentation (docs/model-development.md, "Training targets").
        "v9_fraction": replace(base, iterations=4800, bfloat16=True, fractional_labels=True),
        # 1.6: half-width networks (ModelConfig's default since) in float32, as `train` runs by
        # default since package 0.7.0: 4,800 iterations fit the hour on a 2-core AVX2 CPU.
        "v10_half": replace(base, iterations=4800),
        "v10_half_seed1": replace(base, iterations=4800, seed=1),
        # 1.6's settings with a bfloat16 forward pass (`train --bfloat16`).
        "v10_half_bf16": replace(base, iterations=4800, bfloat16=True),
        # 1.6's settings with binary cross-entropy alone (see BCE_ONLY), with 1.5's targets cut at
        # 0.5 or with the mask's share of each voxel: does the soft Dice term bias the volumes?
        "v11_bce": replace(base, iterations=4800),
        "v11_bce_fraction": replace(base, iterations=4800, fractional_labels=True),
        # 1.6's settings trained twice as long (about 90 min on a 2-core AVX2 CPU): does the half
        # width follow v8_9600, where 1.5's width lost 0.4-0.8 mL with the doubled training?
        "v10_half_9600": replace(base, iterations=9600),
    }
    if os.environ.get("LAS_VARIANTS"):
        found = {name: found[name] for name in os.environ["LAS_VARIANTS"].split(",")}
    if SMOKE:
        found = {name: replace(s, iterations=3, batch_size=2) for name, s in list(found.items())[:2]}
    return found


# Times each msd_heart case is listed among a variant's training cases (1 unless named): with 2,
# about half of the crops come from msd_heart instead of a third.
MSD_REPEATS = {"v6_msd_double": 2}


# Channels per level of 1.5's networks, which every variant before v10 trained; v10's have
# ModelConfig's default, 1.6's half width.
FEATURES_1_5 = (16, 32, 64, 128, 256)
DEFAULT_WIDTH = {"v10_half", "v10_half_seed1", "v10_half_bf16", "v10_half_9600", "v11_bce", "v11_bce_fraction"}
# Variants trained on binary cross-entropy alone. Its optimum is the voxel's probability of being
# inside, so the 0.5 cut and the sum of probabilities estimate the volume without the soft Dice
# term's pull towards confident, larger or smaller masks.
BCE_ONLY = {"v11_bce", "v11_bce_fraction"}


def model_config(variant, views=("axial", "coronal", "sagittal")):
    from LeftAtriumSegLib.model_file import ModelConfig
    config = ModelConfig(views=views)
    return config if variant in DEFAULT_WIDTH else replace(config, features=FEATURES_1_5)


def training_ids(variant, all_ids, held_out):
    repeats = MSD_REPEATS.get(variant, 1)
    return [c for c in all_ids if c not in held_out for _ in range(repeats if c.startswith("la_") else 1)]


def unpack(data_dirs):
    SHM.mkdir(parents=True, exist_ok=True)
    paths = {p.name: p for d in data_dirs for p in Path(d).glob("*.xz")}
    with cf.ThreadPoolExecutor(16) as threads:
        list(threads.map(unpack_one, paths.values()))


def unpack_one(path):
    raw = path.read_bytes()
    size = int.from_bytes(raw[:4], "little")
    header = json.loads(raw[4:4 + size])
    flat = np.frombuffer(lzma.decompress(raw[4 + size:]), dtype=np.uint8)
    count = int(np.prod(header["shape"]))
    image = (header["lo"] + flat[:count].astype(np.float32) / 255 * (header["hi"] - header["lo"])).reshape(header["shape"])
    np.save(SHM / f"{header['case']}_image.npy", image)
    np.save(SHM / f"{header['case']}_label.npy", flat[count:].reshape(header["shape"]))


def load_cases(case_ids, fractional_labels=False):
    """Prepared cases; labels 0/1 as ``prepare_case`` makes them, or its fractions (to 1/255)."""
    from LeftAtriumSegLib.training import PreparedCase

    def label(c):
        shares = np.load(SHM / f"{c}_label.npy")  # uint8: share of the mask x 255, rounded (export.py)
        return shares.astype(np.float32) / 255 if fractional_labels else (shares >= 128).astype(np.uint8)

    return [PreparedCase(c, np.load(SHM / f"{c}_image.npy", mmap_mode="r"), label(c)) for c in case_ids]


def train_job(variant, fold, view, train_ids, settings):
    import torch
    from LeftAtriumSegLib import training
    from LeftAtriumSegLib.model_file import save_model
    from LeftAtriumSegLib.training import train_network
    from torch import nn
    torch.set_num_threads(1)
    start = time.time()
    # train_network looks its loss up in the module at each step.
    loss = bce_loss if variant in BCE_ONLY else training.dice_bce_loss
    with mock.patch.object(training, "dice_bce_loss", loss):
        network = train_network(load_cases(train_ids, settings.fractional_labels), model_config(variant), settings, view,
                                show_progress=False, device="cuda" if torch.cuda.is_available() else "cpu")
    path = RESULTS / variant / f"fold{fold}_{view}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, nn.ModuleDict({view: network}), model_config(variant, (view,)))
    return variant, fold, view, round(time.time() - start, 1)


def bce_loss(logits, target):
    import torch.nn.functional as F
    return F.binary_cross_entropy_with_logits(logits, target)


def orientations(rng, count):
    """``count`` random (permutation, flips) pairs other than the identity."""
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    chosen = []
    while len(chosen) < count:
        perm, flips = perms[rng.integers(6)], tuple(bool(b) for b in rng.random(3) < 0.5)
        if (perm, flips) != ((0, 1, 2), (False, False, False)) and (perm, flips) not in chosen:
            chosen.append((perm, flips))
    return chosen


def frame_scores(probability, reference):
    """Metrics of a model-frame probability map, cleaned with the defaults, against ``reference``."""
    from LeftAtriumSegLib.metrics import segmentation_metrics
    from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask
    spacing = (1.25, 1.25, 1.25)
    return segmentation_metrics(clean_mask(np.ascontiguousarray(probability), spacing, CleanupSettings()), reference, spacing)


def eval_job(variant, fold, held_out_ids):
    import torch
    from LeftAtriumSegLib.inference import predict_frame_probabilities
    from LeftAtriumSegLib.model_file import ModelConfig, load_model
    from LeftAtriumSegLib.network import TorchSliceNetwork
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = ModelConfig()
    networks = {view: TorchSliceNetwork(load_model(RESULTS / variant / f"fold{fold}_{view}.safetensors", device)[0][view])
                for view in VIEWS}
    rows, maps = [], {}
    for case in load_cases(held_out_ids):
        image, reference = np.array(case.image), case.label.astype(bool)

        probability = predict_frame_probabilities(networks, image, config.slices)
        maps[case.case_id] = np.round(probability * 255).astype(np.uint8)
        row = {"variant": variant, "fold": fold, "case": case.case_id, **frame_scores(probability, reference)}
        rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
        probe = []
        for perm, flips in orientations(rng, 3):
            turned = np.ascontiguousarray(np.flip(image.transpose(perm), [a for a in range(3) if flips[a]]))
            back = predict_frame_probabilities(networks, turned, config.slices)
            back = np.flip(back, [a for a in range(3) if flips[a]]).transpose(np.argsort(perm))
            probe.append(frame_scores(back, reference)["dice"])
        row["probe_dice"] = probe
        row["margins"] = {}
        for margin in MARGINS:
            other = predict_frame_probabilities(networks, image, config.slices, margin_voxels=margin)
            row["margins"][margin] = {
                **frame_scores(other, reference),
                "box_voxels": int(np.prod([i.max() - i.min() + 1 for i in np.nonzero(other > 0)])),
            }
        rows.append(row)
    return rows, maps


def main():
    folds = json.loads(Path(".gpu/folds.json").read_text())
    all_ids = [c for fold in folds for c in fold]
    unpack([d for d in (".gpu/data_a", ".gpu/data_b", "/root/lasdata_a") if Path(d).is_dir()])
    print(f"unpacked {len(list(SHM.glob('*_image.npy')))} cases at {time.time() - START:.0f} s", flush=True)
    settings = variants()
    names = list(settings)
    jobs = [(v, k, view, training_ids(v, all_ids, folds[k]), settings[v])
            for v in names for k in range(len(folds)) for view in VIEWS]
    import multiprocessing as mp
    pool = cf.ProcessPoolExecutor(max_workers=int(os.environ.get("LAS_WORKERS", "16")), mp_context=mp.get_context("spawn"))
    futures = [pool.submit(train_job, *job) for job in jobs]
    done = {v: 0 for v in names}
    times = []
    try:
        for future in cf.as_completed(futures, timeout=None if SMOKE else max(1, TRAIN_DEADLINE_S - (time.time() - START))):
            v, k, view, seconds = future.result()
            done[v] += 1
            times.append((v, k, view, seconds))
            print(f"trained {v} fold {k} {view} in {seconds} s (at {time.time() - START:.0f} s)", flush=True)
    except cf.TimeoutError:
        print("training deadline reached", flush=True)
    for process in list(pool._processes.values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    complete = [v for v in names if done[v] == len(folds) * 3]
    print("complete variants:", complete, flush=True)
    pool = cf.ProcessPoolExecutor(max_workers=12 if not SMOKE else 2, mp_context=mp.get_context("spawn"))
    eval_futures = [pool.submit(eval_job, v, k, folds[k][:1] if SMOKE else folds[k])
                    for v in complete for k in range(len(folds))]
    rows, maps = [], {v: {} for v in complete}
    for future in cf.as_completed(eval_futures):
        r, m = future.result()
        rows += r
        maps[r[0]["variant"]].update(m)
    pool.shutdown()  # idle workers left running would hold the caller's stdout open
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_cv.json").write_text(json.dumps({"rows": rows, "train_seconds": times}, indent=1))
    for v in complete:
        np.savez_compressed(OUT / f"{v}_probabilities.npz", **maps[v])
    msd = lambda c: c.startswith("la_")
    for v in complete:
        for name, keep in (("msd", msd), ("lge", lambda c: not msd(c))):
            sel = [r for r in rows if r["variant"] == v and keep(r["case"])]
            if not sel:
                continue
            dice = [r["dice"] for r in sel]
            dv = [r["abs_volume_error_ml"] for r in sel]
            probe = [d for r in sel for d in r["probe_dice"]]
            print(f"{v:16s} {name}: n={len(sel)} dice {np.mean(dice):.4f} min {np.min(dice):.4f} "
                  f"|dV| {np.mean(dv):.2f} probe mean {np.mean(probe):.3f} min {np.min(probe):.3f}", flush=True)
            for margin in MARGINS:
                scores = [r["margins"][margin] for r in sel]
                print(f"{v:16s} {name} margin {margin}: dice {np.mean([m['dice'] for m in scores]):.4f} "
                      f"min {np.min([m['dice'] for m in scores]):.4f} "
                      f"|dV| {np.mean([m['abs_volume_error_ml'] for m in scores]):.2f} "
                      f"box {np.mean([m['box_voxels'] for m in scores]):.0f} voxels", flush=True)
    print(f"total {time.time() - START:.0f} s", flush=True)
    os._exit(0)  # leave unfinished training processes behind


def speed_test():
    """s/iteration of one network alone and of 16 trained at once, on data_a's cases."""
    unpack([".gpu/data_a"])
    ids = sorted(p.name[:-len("_image.npy")] for p in SHM.glob("*_image.npy"))
    import multiprocessing as mp

    from LeftAtriumSegLib.training import TrainingSettings
    settings = TrainingSettings(iterations=200)
    for workers in (1, 16):
        start = time.time()
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            seconds = list(pool.map(train_job, ["speed"] * workers, [0] * workers, ["axial"] * workers, [ids] * workers,
                                      [settings] * workers))
        print(f"{workers} at once: {[s for *_, s in seconds]} s for 200 iterations; wall {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    speed_test() if os.environ.get("LAS_SPEED") == "1" else main()
