"""3D nuclei from z-stacks (issue 22): F1 at 3D IoU 0.5, 3D labels against per-slice labels.

Three parts, each saved in ``bench/results/nuclei_3d.json``:

1. **Synthetic z-stacks** (:func:`napari_unet.samples.synthetic_nuclei_stack`: ellipsoids of
   16-25 px, half of them in touching pairs side by side or one above the other, blur,
   noise) at anisotropy 1:3 (z-step 3 px) and 1:1. One 2D model is trained on the slices of
   training stacks of both kinds (other seeds than the test stacks) for ``--minutes``; the
   test stacks are predicted as z-stacks (labels built in 3D with the true voxel size) and,
   as the baseline (napari-unet before 3D), as frames labelled slice by slice. F1 at 3D IoU
   0.5 for all nuclei, for isolated ones and for touching ones.
   Targets: isolated >= 0.95, touching >= 0.85.
2. **StarDist's 3D example** (``stardist/data/images/img3d.tif`` and ``mask3d.tif``, BSD-3,
   from ``pip download --no-deps stardist``; ``--stardist DIR`` where it is unpacked, else it
   is downloaded): the built-in model as it is; fine-tuned from it (the Train widget's
   default start) for ``--stardist-minutes`` on the z-slices of the left half of the stack
   (x < 28); and trained from scratch for as long. Each scores the right half as a 3D
   volume (objects cut by the halving are scored as cut), with the z-step estimated from
   the training masks' extents, unknown (1:1), and as per-slice labels.
3. **A 64 x 1024 x 1024 stack** predicted and labelled in 3D: time per stage and the peak
   memory of the process, against the stack's own size (``--large``; off with ``--quick``).

Usage: python bench/nuclei_3d.py [--minutes 4] [--quick] [--stardist DIR] [--parts ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, save

from napari_unet.core.metrics import match_objects
from napari_unet.core.predict import PredictConfig, predict
from napari_unet.core.train import TrainConfig, train
from napari_unet.samples import synthetic_nuclei_stack

SHAPES = {3.0: (24, 192, 192), 1.0: (64, 160, 160)}
ALL_PARTS = {"synthetic", "stardist", "large"}


def f1_by_kind(truth: np.ndarray, pred: np.ndarray, pairs) -> dict:
    """F1 at 3D IoU 0.5 for all nuclei, the isolated ones and the touching ones.

    A true nucleus is touching when the generator placed it in a pair. A predicted object
    belongs to the kind of the true nucleus it overlaps most (isolated when none), so a
    false object next to a pair counts against the touching F1.
    """
    touching_ids = {i for p in pairs for i in p}
    t_ids = np.unique(truth)
    t_ids = t_ids[t_ids > 0]
    p_ids = np.unique(pred)
    p_ids = p_ids[p_ids > 0]
    # overlap table
    both = (truth > 0) | (pred > 0)
    t_flat, p_flat = truth[both].astype(np.int64), pred[both].astype(np.int64)
    nt, np_ = int(truth.max()) + 1, int(pred.max()) + 1
    inter = np.bincount(t_flat * np_ + p_flat, minlength=nt * np_).reshape(nt, np_)
    t_size = inter.sum(1)
    p_size = inter.sum(0)
    iou = inter / np.maximum(t_size[:, None] + p_size[None, :] - inter, 1)
    iou[0, :] = 0
    iou[:, 0] = 0
    matched_t = (iou > 0.5).any(1)  # IoU > 0.5 matches are unique
    matched_p = (iou > 0.5).any(0)
    owner = inter[1:, :].argmax(0) + 1  # the true nucleus each prediction overlaps most
    owner_overlap = inter[1:, :].max(0)
    out = {}
    for kind in ("all", "isolated", "touching"):

        def is_kind(i: int, kind=kind) -> bool:
            if kind == "all":
                return True
            return (i in touching_ids) == (kind == "touching")

        tp = sum(1 for i in t_ids if matched_t[i] and is_kind(int(i)))
        fn = sum(1 for i in t_ids if not matched_t[i] and is_kind(int(i)))
        fp = sum(
            1
            for j in p_ids
            if not matched_p[j]
            and (is_kind(int(owner[j])) if owner_overlap[j] > 0 else kind != "touching")
        )
        n = tp + fn
        out[kind] = {
            "f1": round(2 * tp / max(2 * tp + fp + fn, 1), 4),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "n_true": n,
        }
    return out


def train_on(stacks, labels, minutes: float, seed: int = 0, init=None):
    """Train the default 2D model (or fine-tune ``init``) on every z-slice of the stacks."""
    images = [s[z] for s in stacks for z in range(s.shape[0])]
    masks = [m[z] for m in labels for z in range(m.shape[0])]
    keep = [i for i, m in enumerate(masks) if m.max() > 0]  # slices with nuclei
    config = TrainConfig(minutes=minutes, device="cpu", seed=seed)
    t0 = time.perf_counter()
    result = train([images[i] for i in keep], [masks[i] for i in keep], config, init=init)
    return result, time.perf_counter() - t0, len(keep)


def synthetic_part(minutes: float, n_test: int) -> dict:
    train_stacks, train_labels = [], []
    for z_step, shape in SHAPES.items():
        for seed in (100, 101):
            img, lab, _ = synthetic_nuclei_stack(shape, z_step=z_step, seed=seed)
            train_stacks.append(img)
            train_labels.append(lab)
    result, seconds, n_slices = train_on(train_stacks, train_labels, minutes)
    bundle = result.bundle
    print(f"trained on {n_slices} slices in {seconds:.0f} s ({result.steps} steps)")
    config = PredictConfig.for_model(bundle, device="cpu", diameter=None)
    from napari_unet.core.builtin import resolve_model
    from napari_unet.core.checkpoint import load_checkpoint

    builtin = load_checkpoint(resolve_model("nuclei"), device="cpu")
    builtin_config = PredictConfig.for_model(builtin, device="cpu")  # diameter auto
    modes = {  # name: (model, config, predict keywords(z_step))
        "builtin_3d": (builtin, builtin_config, lambda z: {"voxel_size": (z, 1, 1)}),
        "builtin_per_slice": (builtin, builtin_config, lambda z: {"axes": "TYX"}),
        "3d": (bundle, config, lambda z: {"voxel_size": (z, 1, 1)}),
        "3d_voxel_unknown": (bundle, config, lambda z: {}),
        "per_slice": (bundle, config, lambda z: {"axes": "TYX"}),  # before 3D labels
    }
    rows = []
    for z_step, shape in SHAPES.items():
        for seed in range(n_test):
            img, lab, pairs = synthetic_nuclei_stack(shape, z_step=z_step, seed=seed)
            row = {"z_step": z_step, "seed": seed, "n_nuclei": int(lab.max()), "pairs": len(pairs)}
            for mode, (model, cfg, kwargs) in modes.items():
                t0 = time.perf_counter()
                res = predict(model, img, config=cfg, **{"axes": "ZYX", **kwargs(z_step)})
                row[mode] = f1_by_kind(lab, res.labels, pairs)
                row[mode]["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(
                f"z-step {z_step:g} seed {seed}: "
                + ", ".join(
                    f"{mode} {row[mode]['isolated']['f1']:.3f}/{row[mode]['touching']['f1']:.3f}"
                    for mode in modes
                )
                + " (F1 isolated/touching)"
            )
    summary = {}
    for z_step in SHAPES:
        sel = [r for r in rows if r["z_step"] == z_step]
        summary[f"z_step_{z_step:g}"] = {
            f"{mode}_{kind}": round(float(np.median([r[mode][kind]["f1"] for r in sel])), 4)
            for mode in modes
            for kind in ("all", "isolated", "touching")
        }
    return {
        "train": {
            "minutes": minutes,
            "seconds": round(seconds, 1),
            "steps": int(result.steps),
            "slices": n_slices,
            "stacks": [list(SHAPES[z]) for z in SHAPES for _ in (100, 101)],
        },
        "threshold": config.threshold,
        "h": config.h,
        "rows": rows,
        "median": summary,
        "targets": {"isolated": 0.95, "touching": 0.85},
    }, bundle


def stardist_files(folder: str | None) -> tuple[Path, Path]:
    if folder is None:
        folder = tempfile.mkdtemp(prefix="stardist_")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "stardist", "-d", folder],
            check=True,
            capture_output=True,
        )
        import zipfile

        wheel = next(Path(folder).glob("stardist-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in ("stardist/data/images/img3d.tif", "stardist/data/images/mask3d.tif"):
                z.extract(name, folder)
    base = Path(folder) / "stardist" / "data" / "images"
    return base / "img3d.tif", base / "mask3d.tif"


def stardist_part(folder: str | None, minutes: float) -> dict:
    import tifffile
    from scipy import ndimage as ndi

    img_path, mask_path = stardist_files(folder)
    img = tifffile.imread(img_path).astype(np.float32)
    mask = tifffile.imread(mask_path).astype(np.int32)
    half = img.shape[2] // 2
    train_img, train_mask = img[:, :, :half], mask[:, :, :half]
    test_img, test_mask = img[:, :, half + 1 :], mask[:, :, half + 1 :]
    # the anisotropy a user would read off their own masks: z extent against y/x extent
    boxes = [b for b in ndi.find_objects(train_mask) if b is not None]
    ext = np.array([[s.stop - s.start for s in b] for b in boxes], float)
    full = ext[(ext[:, 0] > 1)]
    z_step = float(np.median(full[:, 1:].mean(1) / full[:, 0]))
    from napari_unet.core.builtin import resolve_model
    from napari_unet.core.checkpoint import load_checkpoint

    builtin = load_checkpoint(resolve_model("nuclei"), device="cpu")
    tuned, tuned_s, n_slices = train_on([train_img], [train_mask], minutes, init=builtin)
    scratch, scratch_s, _ = train_on([train_img], [train_mask], minutes)
    out = {
        "shape": list(img.shape),
        "n_nuclei": int(len(np.unique(mask)) - 1),
        "train": {
            "minutes": minutes,
            "slices": n_slices,
            "region": f"x < {half}",
            "finetuned_from_builtin": {"seconds": round(tuned_s, 1), "steps": int(tuned.steps)},
            "scratch": {"seconds": round(scratch_s, 1), "steps": int(scratch.steps)},
        },
        "test_region": f"x > {half}",
        "n_test_nuclei": int(len(np.unique(test_mask)) - 1),
        "z_step_estimated": round(z_step, 2),
        "diameter": "auto",
    }
    voxel = (z_step, 1.0, 1.0)
    models = {"builtin": builtin, "finetuned": tuned.bundle, "scratch": scratch.bundle}
    for model_name, model in models.items():
        cfg = PredictConfig.for_model(model, device="cpu")  # diameter auto, as in napari
        for name, kwargs in (
            ("3d_voxel_estimated", {"voxel_size": voxel}),
            ("3d_voxel_unknown", {}),
            ("per_slice", {"axes": "TYX"}),
        ):
            res = predict(model, test_img, config=cfg, **{"axes": "ZYX", **kwargs})
            m = match_objects(test_mask, res.labels, 0.5)
            tp, fp, fn = int(m.tp[0]), int(m.fp[0]), int(m.fn[0])
            f1 = round(2 * tp / max(2 * tp + fp + fn, 1), 4)
            out[f"{model_name}_{name}"] = {"f1": f1, "tp": tp, "fp": fp, "fn": fn}
            print(
                f"StarDist 3D example, {model_name} {name}: F1 {f1:.3f} (tp {tp} fp {fp} fn {fn})"
            )
    return out


def large_part(bundle_path: Path) -> dict:
    """Predict a 64 x 1024 x 1024 stack in a fresh process: time and peak memory."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
from _common import peak_rss_mib, reset_peak_rss, rss_mib
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.predict import PredictConfig, iter_predict
from napari_unet.samples import synthetic_nuclei_stack
tiles = []
for seed in range(4):  # 4 x 4 tiles of 256 x 256 x 64, different nuclei each
    img, lab, _ = synthetic_nuclei_stack((64, 256, 256), z_step=3.0, n=60, seed=200 + seed)
    tiles.append((img, lab))
img = np.block([[tiles[(i + j) % 4][0] for j in range(4)] for i in range(4)])
n_nuclei = 16 * 60
bundle = load_checkpoint({str(bundle_path)!r}, device="cpu")
config = PredictConfig.for_model(bundle, device="cpu", diameter=None)
base = rss_mib()
reset_peak_rss()
t0 = time.perf_counter()
gen = iter_predict(bundle, img, config=config, axes="ZYX", voxel_size=(3.0, 1.0, 1.0))
t_net = None
peak_net = None
while True:
    try:
        p = next(gen)
        if p.message == "building 3D objects":
            t_net = time.perf_counter() - t0
            peak_net = peak_rss_mib()
    except StopIteration as e:
        res = e.value
        break
total = time.perf_counter() - t0
print(json.dumps({{
    "shape": list(img.shape), "stack_mib": img.nbytes / 2**20,
    "seconds_total": round(total, 1), "seconds_network": round(t_net, 1),
    "seconds_3d_labels": round(total - t_net, 1),
    "objects": int(res.labels.max()),
    "rss_before_mib": round(base, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
    "peak_rss_network_mib": round(peak_net, 1),
    "outputs_mib": round(sum(v.nbytes for v in res.probabilities.values()) / 2**20
                         + res.labels.nbytes / 2**20, 1),
}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # what the network part holds beyond the stack, the model and the outputs: the tiles
    out["network_working_mib"] = round(
        out["peak_rss_network_mib"] - out["rss_before_mib"] - out["outputs_mib"], 1
    )
    print(
        f"network part: peak {out['peak_rss_network_mib']:.0f} MiB, "
        f"{out['network_working_mib']:.0f} MiB beyond the stack, model and outputs"
    )
    print(
        f"64 x 1024 x 1024: {out['seconds_total']:.0f} s ({out['seconds_network']:.0f} s network, "
        f"{out['seconds_3d_labels']:.0f} s 3D labels), peak {out['peak_rss_mib']:.0f} MiB "
        f"(stack {out['stack_mib']:.0f} MiB, outputs {out['outputs_mib']:.0f} MiB)"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="synthetic model training")
    ap.add_argument("--stardist-minutes", type=float, default=4.0)
    ap.add_argument("--stardist", help="folder holding stardist/data/images (else downloaded)")
    ap.add_argument("--tests", type=int, default=3, help="test stacks per anisotropy")
    ap.add_argument("--quick", action="store_true", help="short training, no large stack")
    ap.add_argument(
        "--parts",
        default="synthetic,stardist,large",
        help="which parts to run (comma-separated); the others are kept from the saved JSON",
    )
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.quick:
        args.minutes, args.stardist_minutes, args.tests = 0.5, 0.5, 1
        parts -= {"large"}
    name = "nuclei_3d_quick" if args.quick else "nuclei_3d"
    saved = Path(__file__).parent / "results" / f"{name}.json"
    out: dict = json.loads(saved.read_text()) if saved.exists() and parts != ALL_PARTS else {}
    out["machine"] = machine()
    commands = out.setdefault("commands", {})
    command = "python bench/nuclei_3d.py " + " ".join(sys.argv[1:])
    bundle = None
    if "synthetic" in parts:
        out["synthetic"], bundle = synthetic_part(args.minutes, args.tests)
        commands["synthetic"] = command
    if "stardist" in parts:
        out["stardist_3d_example"] = stardist_part(args.stardist, args.stardist_minutes)
        commands["stardist"] = command
    if "large" in parts:  # the large stack, with the synthetic part's model (or a quick one)
        from napari_unet.core.checkpoint import save_checkpoint

        if bundle is None:
            img, lab, _ = synthetic_nuclei_stack(SHAPES[3.0], z_step=3.0, seed=100)
            bundle = train_on([img], [lab], 1.0)[0].bundle
        with tempfile.TemporaryDirectory() as tmp:
            out["large"] = large_part(save_checkpoint(bundle, Path(tmp) / "m.pt"))
        commands["large"] = command
    save(name, out)


if __name__ == "__main__":
    main()
