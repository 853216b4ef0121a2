"""The correct-and-retrain loop, simulated with real ground truth as the user's corrections.

Starting from the model a user would have (``--model``, e.g. a default 30-minute
training on the DSB 2018 training ids), on a set of images of a kind the model did not
learn well (``external/miccai_he_nuclei`` H&E tiles, or the DSB held-back colour tissue
images):

* three images are corrected, one per round ("rounds"), or all three at once
  ("oneshot"); after each retrain (the Retrain button's defaults:
  :class:`napari_unet.core.finetune.FinetuneConfig`) the model is scored on
  - the **remaining** images of the set (never corrected, never trained on): the gain,
  - the images corrected so far (with their full ground truth): must never drop,
  - the DSB held-back fluorescence images: forgetting;
* ``--sets gowt1`` (``external/ctc_gowt1_nuclei``): a user whose images are fluorescence, like
  the built-in model's data (3 corrected, 3 scored);
* corrections are "full" (every object of the image checked: the ground truth is the
  annotation) or "partial": the simulated user looks at the current prediction, fixes
  about 20 nuclei (the wrongly predicted ones first: each fix erases the predicted objects
  over the nucleus and paints the true nuclei there) and erases up to 5 false objects;
  the annotation is then derived from the edits exactly as the Predict widget does
  (:func:`napari_unet.core.corrections.annotation_from_edits`, merged across rounds);
  or "region" (``--modes region``): one square checked completely, grown until about 20
  nuclei touch it, drawn as a checked region, everything wrong in it fixed in the
  prediction; the annotation is built as the Predict widget does with "Checked regions"
  (every object touching the square, whole, and every other pixel of it; plus what the
  user erased or painted past its edge, with its band);

Scores: object F1 at IoU 0.5 summed over images (tp, fp, fn pooled). The external
images are only measured, never trained on, except the three corrected ones, which are
excluded from "remaining".

Usage: python bench/correct_retrain.py --model M.pt [--sets miccai dsb_tissue]
[--modes full partial] [--protocols rounds oneshot] [--tag NAME] [--anchor A] [--lr L]
[--replay-share S] (0: no replay of the built-in model's samples) [--blend B]
(a retrain of the built-in model keeps that share of the fine-tune, see
napari_unet.core.finetune.FinetuneConfig.blend) [--distill D] (weight of the
distillation term on the replayed patches, FinetuneConfig.distill) [--pull P] (the share of
a retrain's change kept for images like the built-in model's data,
napari_unet.core.norm_sets.PULL) [--seed N] (the fine-tunes' seed) [--blend-choices S ...]
(the other shares a retrain tries, FinetuneConfig.blend_choices; none: the blend alone)
Writes bench/results/correct_retrain.json (with --tag: variants/correct_retrain_TAG.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import DATA, loadavg, machine, save  # noqa: E402

SEED = 19
N_CORRECTED = 3
N_FIXED_NUCLEI = 20
N_ERASED_FALSE = 5


def read_pairs(kind: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, ground truth) of a set."""
    import tifffile

    from napari_unet.core.io import read_image

    pairs = []
    if kind == "miccai":
        root = DATA / "external" / "miccai_he_nuclei"
        for path in sorted((root / "images").glob("*.png")):
            pairs.append(
                (path.stem, read_image(path), tifffile.imread(root / "masks" / f"{path.stem}.tif"))
            )
    elif kind == "gowt1":  # fluorescence, like the built-in model's data
        root = DATA / "external" / "ctc_gowt1_nuclei"
        for path in sorted((root / "images").glob("*.tif")):
            pairs.append((path.stem, read_image(path), tifffile.imread(root / "masks" / path.name)))
    elif kind in ("dsb_tissue", "dsb_fluo"):
        root = DATA / "dsb2018_stage1_train"
        stats = {s["id"]: s for s in json.loads((root / "per_image_stats.json").read_text())}
        test = (HERE / "splits" / "dsb2018_test_ids.txt").read_text().split()
        for i in test:
            image = read_image(root / "images" / f"{i}.png")
            colour = not stats[i]["rgb_equal"]
            grey = image if image.ndim == 2 else image[..., 0]
            fluo = not colour and float(np.mean(grey)) <= 100
            if (kind == "dsb_tissue" and colour) or (kind == "dsb_fluo" and fluo):
                pairs.append((i[:12], image, tifffile.imread(root / "masks" / f"{i}.tif")))
    else:
        raise SystemExit(f"unknown set {kind}")
    return pairs


def predict_result(bundle, image):
    from napari_unet.core.data import find_channel_axis
    from napari_unet.core.predict import PredictConfig, predict

    axis = (
        -1
        if image.ndim == 3 and find_channel_axis(image.shape, image.shape[:2]) is not None
        else None
    )
    return predict(
        bundle, image, channel_axis=axis, config=PredictConfig.for_model(bundle, device="cpu")
    )


def predict_labels(bundle, image) -> np.ndarray:
    return predict_result(bundle, image).labels


def score(bundle, pairs) -> dict:
    """Pooled object F1 at IoU 0.5 (and the per-image counts) of `bundle` on `pairs`.

    ``closer_to_builtin``: how many images a retrain of the built-in model predicted with
    the built-in model's statistics and weights pulled back (:mod:`napari_unet.core.norm_sets`).
    """
    from napari_unet.core.metrics import match_objects
    from napari_unet.core.norm_sets import NOTE

    tp = fp = fn = closer = 0
    for _, image, truth in pairs:
        result = predict_result(bundle, image)
        closer += any(n.startswith(NOTE) for n in result.notes)
        m = match_objects(truth, result.labels, thresholds=(0.5,))
        tp, fp, fn = tp + int(m.tp[0]), fp + int(m.fp[0]), fn + int(m.fn[0])
    f1 = round(2 * tp / max(2 * tp + fp + fn, 1), 4)
    return {"f1": f1, "tp": tp, "fp": fp, "fn": fn, "closer_to_builtin": closer}


def _found(pred: np.ndarray, truth: np.ndarray) -> dict[int, int]:
    """Map each true nucleus to the predicted object matching it at IoU > 0.5."""
    both = (truth > 0) & (pred > 0)
    pairs, inter = np.unique(
        np.stack([truth[both], pred[both]]).astype(np.int64), axis=1, return_counts=True
    )
    t_area = dict(zip(*np.unique(truth[truth > 0], return_counts=True), strict=True))
    p_area = dict(zip(*np.unique(pred[pred > 0], return_counts=True), strict=True))
    found = {}
    for (g, k), n in zip(pairs.T.tolist(), inter.tolist(), strict=True):
        if n / (t_area[g] + p_area[k] - n) > 0.5:
            found[int(g)] = int(k)
    return found


def simulate_region(
    pred: np.ndarray, truth: np.ndarray, rng, n: int = N_FIXED_NUCLEI
) -> tuple[np.ndarray, np.ndarray]:
    """A user who checks one square region completely, as in the Predict widget.

    The square is centred on a random nucleus and grown (16-pixel steps) until about `n`
    nuclei touch it. The user draws it in a Shapes layer (the "checked regions") and fixes
    everything wrong in it: a true nucleus touching it that the prediction found (IoU >
    0.5) is left as predicted; a predicted object touching it that matches no true nucleus
    (a false or merged object) is erased, with every true nucleus it covered (more than a
    fifth of it) and no other object found painted back; a true nucleus touching it still
    missing is painted, over whatever was predicted there.

    Returns
    -------
    corrected, checked
        The corrected labels and the square as a mask: the annotation is then built
        exactly as the widget does (:func:`napari_unet.core.corrections.annotation_from_edits`
        with ``checked``).
    """
    from scipy import ndimage as ndi

    ids = np.unique(truth)[1:]
    centre = ndi.center_of_mass(truth > 0, truth, [int(rng.choice(ids))])[0]
    cy, cx = (int(round(c)) for c in centre)
    h, w = truth.shape
    half = 8
    while True:
        box = (slice(max(0, cy - half), cy + half), slice(max(0, cx - half), cx + half))
        inside = np.unique(truth[box])
        inside = inside[inside > 0]
        if inside.size >= n or (half * 2 >= h and half * 2 >= w):
            break
        half += 8
    checked = np.zeros(truth.shape, bool)
    checked[box] = True
    found = _found(pred, truth)
    right = set(found.values())
    corrected = pred.astype(np.int64, copy=True)
    next_id = int(corrected.max()) + 1
    repaint = {int(g) for g in inside if int(g) not in found}
    for k in np.setdiff1d(np.unique(pred[box]), [0]).tolist():
        if k in right:
            continue
        area = pred == k
        corrected[area] = 0  # the eraser
        for g in np.setdiff1d(np.unique(truth[area]), [0]).tolist():
            if g in found:  # found by another object, which the user leaves as it is
                continue
            if np.count_nonzero(area & (truth == g)) > 0.2 * np.count_nonzero(truth == g):
                repaint.add(int(g))
    for g in sorted(repaint):  # the brush
        corrected[truth == g] = next_id
        next_id += 1
    return corrected, checked


def _f1(counts: dict) -> float:
    """The unrounded F1 of :func:`score`'s counts."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return 2 * tp / max(2 * tp + fp + fn, 1)


def simulate_partial(
    pred: np.ndarray, truth: np.ndarray, rng, erase: int = N_ERASED_FALSE
) -> np.ndarray:
    """Edit the prediction as a user fixing about 20 nuclei and erasing a few false objects."""
    corrected = pred.astype(np.int64, copy=True)
    gt_ids = np.unique(truth)[1:]
    # which true nuclei are found (best-overlapping prediction at IoU > 0.5)? the user
    # fixes the others first
    found = set(_found(pred, truth))
    wrong = [int(g) for g in gt_ids if int(g) not in found]
    right = [int(g) for g in gt_ids if int(g) in found]
    rng.shuffle(wrong)
    rng.shuffle(right)
    order = wrong + right
    fixed: set[int] = set()
    next_id = int(corrected.max()) + 1
    for g in order:
        if len(fixed) >= N_FIXED_NUCLEI:
            break
        if g in fixed:
            continue
        ids = np.setdiff1d(np.unique(pred[truth == g]), [0])
        area = np.isin(pred, ids)
        # every true nucleus under the erased objects is repainted (a merge is fixed whole)
        under = np.setdiff1d(np.unique(truth[area]), [0])
        group = {g} | {
            int(h)
            for h in under
            if np.count_nonzero(area & (truth == h)) > 0.2 * np.count_nonzero(truth == h)
        }
        corrected[area] = 0
        for h in sorted(group):
            corrected[truth == h] = next_id
            next_id += 1
            fixed.add(h)
    false_ids = [int(k) for k in np.unique(pred)[1:] if not np.any(truth[pred == k])]
    rng.shuffle(false_ids)
    for k in false_ids[:erase]:
        corrected[pred == k] = 0
    return corrected


def run(model_path: Path, kind: str, mode: str, protocol: str, args) -> dict:
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.corrections import (
        annotation_from_edits,
        annotation_summary,
        merge_annotations,
        whole_layer_annotation,
    )
    from napari_unet.core.finetune import FinetuneConfig, finetune

    rng = np.random.default_rng(SEED)
    pairs = read_pairs(kind)
    order = rng.permutation(len(pairs))
    corrected_idx = sorted(order[:N_CORRECTED].tolist())
    corrected = [pairs[i] for i in corrected_idx]
    remaining = [p for i, p in enumerate(pairs) if i not in corrected_idx]
    fluo = args.fluo_pairs
    model = load_checkpoint(model_path)
    entry = {
        "set": kind,
        "mode": mode,
        "protocol": protocol,
        "corrected_images": [p[0] for p in corrected],
        "n_remaining": len(remaining),
        "n_fluo": len(fluo),
        "rounds": [],
    }
    t = time.perf_counter()
    start = {
        "remaining": score(model, remaining),
        "corrected": score(model, corrected),
        "fluo": score(model, fluo),
    }
    entry["start"] = start
    print(
        f"[{kind} {mode} {protocol}] start: remaining F1 {start['remaining']['f1']:.3f}, "
        f"corrected {start['corrected']['f1']:.3f}, DSB fluo {start['fluo']['f1']:.3f} "
        f"({time.perf_counter() - t:.0f} s)",
        flush=True,
    )
    training: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    batches = [[p] for p in corrected] if protocol == "rounds" else [corrected]
    config = FinetuneConfig(
        device="cpu",
        lr=args.lr,
        anchor=args.anchor,
        steps=args.steps,
        max_seconds=args.max_seconds,
        replay=args.replay_share > 0,
        replay_share=args.replay_share if args.replay_share > 0 else 0.5,
        blend=args.blend,
        distill=args.distill,
        seed=args.seed,
        blend_choices=tuple(args.blend_choices),
    )
    done: list = []
    for k, batch in enumerate(batches, 1):
        for name, image, truth in batch:
            if mode == "full":
                annotation = whole_layer_annotation(truth)
            elif mode == "region":  # one region checked completely, about as many nuclei
                pred = predict_labels(model, image)
                edited, checked = simulate_region(pred, truth, rng)
                annotation = annotation_from_edits(edited, pred, checked=checked)
            else:
                pred = predict_labels(model, image)
                annotation = annotation_from_edits(
                    simulate_partial(pred, truth, rng, args.erase), pred
                )
            if name in training:
                annotation = merge_annotations(training[name][1], annotation)
            training[name] = (image, annotation)
            done.append((name, image, truth))
        names = list(training)
        entry.setdefault("corrected_so_far_before", []).append(score(model, done)["f1"])
        t0 = time.perf_counter()
        result = finetune(
            [training[n][0] for n in names],
            [training[n][1] for n in names],
            model,
            config,
            names=names,
        )
        seconds = time.perf_counter() - t0
        model = result.bundle
        row = {
            "round": k,
            "retrain_seconds": round(seconds, 1),
            "steps": result.steps,
            "kept": result.kept,
            "blend": result.bundle.meta.get("blend") if result.kept == "new" else None,
            "before_on_corrections": result.before,
            "after_on_corrections": result.after,
            "annotations": {n: annotation_summary(training[n][1]) for n in names},
            "remaining": score(model, remaining),
            "corrected_so_far": score(model, done),
            "fluo": score(model, fluo),
            "notes": result.notes,
        }
        entry["rounds"].append(row)
        print(
            f"[{kind} {mode} {protocol}] round {k}: {result.steps} steps in {seconds:.0f} s, "
            f"kept {result.kept}; remaining F1 {row['remaining']['f1']:.3f}, corrected so far "
            f"{row['corrected_so_far']['f1']:.3f}, DSB fluo {row['fluo']['f1']:.3f}, blend "
            f"{(row['blend'] or {}).get('share')} (closer to "
            f"the built-in model: {row['remaining']['closer_to_builtin']} of "
            f"{len(remaining)} remaining, {row['fluo']['closer_to_builtin']} of "
            f"{len(fluo)} fluorescence)",
            flush=True,
        )
    last = entry["rounds"][-1]
    # from the counts: the differences of the rounded F1s can be 0.0001 off
    entry["gain_remaining"] = round(_f1(last["remaining"]) - _f1(start["remaining"]), 4)
    entry["fluo_change"] = round(_f1(last["fluo"]) - _f1(start["fluo"]), 4)
    # F1 on the images corrected so far never drops from one round to the next
    drops = [
        round(row["corrected_so_far"]["f1"] - score_before, 4)
        for row, score_before in zip(entry["rounds"], entry["corrected_so_far_before"], strict=True)
    ]
    entry["worst_round_change_on_corrected"] = min(drops)
    entry["max_retrain_seconds"] = max(r["retrain_seconds"] for r in entry["rounds"])
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sets", nargs="+", default=["miccai", "dsb_tissue"])
    parser.add_argument("--modes", nargs="+", default=["full", "partial"])
    parser.add_argument("--protocols", nargs="+", default=["oneshot", "rounds"])
    parser.add_argument("--tag", default="")
    parser.add_argument("--anchor", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--replay-share", type=float, default=None)
    parser.add_argument("--blend", type=float, default=None)
    parser.add_argument("--distill", type=float, default=None)
    parser.add_argument("--pull", type=float, default=None)
    parser.add_argument(
        "--erase",
        type=int,
        default=N_ERASED_FALSE,
        help="false objects the simulated user erases per image (partial corrections)",
    )
    parser.add_argument(
        "--blend-choices",
        type=float,
        nargs="*",
        default=None,
        help="other shares a retrain tries (none: --blend alone)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the fine-tunes' seed (the images stay the same)"
    )
    args = parser.parse_args()
    import torch

    from napari_unet.core.finetune import FinetuneConfig

    torch.set_num_threads(max(1, torch.get_num_threads()))
    defaults = FinetuneConfig()
    for key in (
        "anchor",
        "lr",
        "steps",
        "max_seconds",
        "replay_share",
        "blend",
        "distill",
        "blend_choices",
    ):
        if getattr(args, key) is None:
            setattr(args, key, getattr(defaults, key))
    from napari_unet.core import norm_sets

    if args.pull is not None:
        norm_sets.PULL = args.pull
    args.fluo_pairs = read_pairs("dsb_fluo")
    results = {
        "machine": machine(),
        "loadavg_start": loadavg(),
        "model": str(args.model),
        "finetune": {
            "anchor": args.anchor,
            "lr": args.lr,
            "steps": args.steps,
            "max_seconds": args.max_seconds,
            "replay_share": args.replay_share,
            "blend": args.blend,
            "distill": args.distill,
            "pull": norm_sets.PULL,
            "blend_choices": list(args.blend_choices),
            "seed": args.seed,
            "erase": args.erase,
        },
        "runs": [],
    }
    # a tagged run is a variant: kept apart from the current result
    name = f"variants/correct_retrain_{args.tag}" if args.tag else "correct_retrain"
    for kind in args.sets:
        for mode in args.modes:
            for protocol in args.protocols:
                results["runs"].append(run(args.model, kind, mode, protocol, args))
                results["loadavg_end"] = loadavg()
                save(name, results)
    print(
        "\nset         mode     protocol  remaining F1: start->end (gain)   DSB fluo change"
        "   max retrain s"
    )
    for r in results["runs"]:
        print(
            f"{r['set']:<11} {r['mode']:<8} {r['protocol']:<9} "
            f"{r['start']['remaining']['f1']:.3f}->{r['rounds'][-1]['remaining']['f1']:.3f} "
            f"({r['gain_remaining']:+.3f})"
            f"      {r['fluo_change']:+.3f}            {r['max_retrain_seconds']:.0f}"
        )


if __name__ == "__main__":
    main()
