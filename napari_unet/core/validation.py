"""Validation: what training holds back, and how the model is scored on it.

:func:`split_validation` decides which samples train and which are held back: whole
images when there are enough of them, else a strip at the end of each image, so that
no pixel is both trained on and validated. :func:`validate` scores the model on the
held-back images, predicted whole and tiled as prediction does: the loss, the Dice of
the foreground and, where the labels say where touching objects meet, the F1 of the
objects; its ``score`` is the one the trainer keeps the best model by.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.data import Normalisation, Sample
from napari_unet.core.progress import drain

if TYPE_CHECKING:  # torch is imported when training starts, not at import
    from napari_unet.core.checkpoint import ModelBundle

__all__ = [
    "VAL_WHOLE_IMAGES",
    "split_validation",
    "first_pixels",
    "predict_sample",
    "validate",
    "score_name",
    "describe_entry",
    "best_text",
]

#: With at least this many distinct images (a stack's planes are one image), whole images
#: are held back for validation, ``val_fraction`` of them (at least one): one of 4 is a
#: quarter of the data, about what a strip takes, and an unseen image validates better than
#: a strip of a seen one. With fewer, whole images would take a third to a half of what the
#: user painted (two images: one trains, one validates), so a strip of each image is held
#: back instead (:func:`_split_strips`).
VAL_WHOLE_IMAGES = 4
#: Smallest share of an image's longer side held back as a validation strip (more when
#: ``val_fraction`` is larger, at most :data:`VAL_STRIP_MAX_SHARE`).
VAL_STRIP_SHARE = 0.2
#: Largest share of an image's longer side held back as a strip: at least half trains.
VAL_STRIP_MAX_SHARE = 0.5
#: Fewest pixels across a validation strip: a narrower one holds too few whole objects
#: to score. A strip is widened to this when that keeps it within
#: :data:`VAL_STRIP_RAISED_SHARE` of the side (a 256-pixel image gives 64 rows).
VAL_STRIP_MIN = 64
VAL_STRIP_RAISED_SHARE = 0.25


def _image_name(s: Sample) -> str:
    """Return the name of the image a sample comes from (shared by a stack's planes)."""
    return s.name.split(" (")[0]


def _strip_width(length: int, share: float, min_size: int) -> int:
    """Pixels held back at the end of a side of `length` pixels (0: none).

    The strip is ``share`` of the side, widened to :data:`VAL_STRIP_MIN` when that
    stays within :data:`VAL_STRIP_RAISED_SHARE` (or `share`) of it; the rest, which
    trains, keeps at least ``max(min_size, VAL_STRIP_MIN)`` pixels.
    """
    n = max(int(round(share * length)), VAL_STRIP_MIN)
    if n > max(share, VAL_STRIP_RAISED_SHARE) * length:
        return 0
    if length - n < max(int(min_size), VAL_STRIP_MIN):
        return 0
    return n


def _split_strips(
    samples: list[Sample], fraction: float, seed: int, min_size: int
) -> tuple[list[Sample], list[Sample], str]:
    """Hold back a strip at the end of each sample's longer side for validation.

    A sample gives a strip (bottom rows when it is at least as tall as wide, else right
    columns; :func:`_strip_width` pixels) when both the strip and the rest hold an
    annotated object; it then trains on the rest only, so no pixel is both trained on and
    validated. The other samples train whole. The planes of a stack all have the same
    shape, so the same region of each is held back.
    """
    from napari_unet.core.data import crop_sample

    share = min(max(float(fraction), VAL_STRIP_SHARE), VAL_STRIP_MAX_SHARE)
    train: list[Sample] = []
    val: list[Sample] = []
    sides: set[str] = set()
    percents: set[int] = set()
    too_small = 0
    for s in samples:
        h, w = s.shape
        tall = h >= w
        length = h if tall else w
        n = _strip_width(length, share, min_size)
        if not n:
            too_small += 1
            train.append(s)
            continue
        cut = length - n
        t = s.targets
        rest, strip = (np.s_[:cut, :], np.s_[cut:, :]) if tall else (np.s_[:, :cut], np.s_[:, cut:])
        if not all(t.valid[p].any() and t.foreground[p].any() for p in (rest, strip)):
            train.append(s)  # the strip (or the rest) holds no annotated object
            continue
        train.append(crop_sample(s, *rest, seed=seed))
        val.append(crop_sample(s, *strip, seed=seed))
        sides.add("bottom" if tall else "right")
        percents.add(int(round(100 * n / length)))
    n_all = len(samples)
    if not val:
        if too_small == n_all:
            need = next(
                (L for L in range(2 * VAL_STRIP_MIN, 1 << 20) if _strip_width(L, share, min_size)),
                None,
            )
            why = f"too small for a strip, which needs at least {need} px along the longer side"
        elif too_small:
            why = "each too small for a strip or without an annotated object in one"
        else:
            why = "none with an annotated object both in a strip at its end and in the rest"
        plural = "s" if n_all != 1 else ""
        return (
            train,
            [],
            f"nothing held back: every annotated pixel trains ({n_all} image{plural}, fewer than "
            f"{VAL_WHOLE_IMAGES} to hold whole ones back, {why})",
        )
    side = sides.pop() if len(sides) == 1 else "bottom or right"
    pct = f"{min(percents)}%" if len(percents) == 1 else f"{min(percents)}-{max(percents)}%"
    note = ""
    if len(val) == n_all:
        which = "of the image" if n_all == 1 else f"of each of {n_all} images"
    else:
        others = n_all - len(val)
        which = f"of {len(val)} of {n_all} images"
        note = (
            " (the "
            + ("other trains" if others == 1 else f"{others} others train")
            + " whole: too small, or no annotated object in the strip or the rest)"
        )
    return train, val, f"held back the {side} {pct} {which} for validation{note}"


def split_validation(
    samples: list[Sample], fraction: float, seed: int, min_size: int = 0
) -> tuple[list[Sample], list[Sample], str]:
    """Split the samples into training and validation ones; say what was held back.

    With at least :data:`VAL_WHOLE_IMAGES` distinct images (the planes of a stack count
    as one image, and are held back together), whole images are held back, ``fraction``
    of them (at least one, never all). With fewer (a single stack too: its neighbouring
    planes look alike, so holding back whole planes would validate on what is trained
    on), a strip of each image is held back instead (:func:`_split_strips`; `min_size`,
    the training patch size, is the least that the training part keeps), or nothing
    when no image can spare one.

    Returns
    -------
    train, val : list of Sample
    text : str
        What was held back, in words (shown when training starts, stored with the model).
    """
    if fraction <= 0:
        return samples, [], "nothing held back (validation share 0): every annotated pixel trains"
    names = sorted({_image_name(s) for s in samples})
    rng = np.random.default_rng(seed)
    if len(names) >= VAL_WHOLE_IMAGES:
        n_val = max(1, int(round(fraction * len(names))))
        n_val = min(n_val, len(names) - 1)
        val_names = set(rng.choice(names, n_val, replace=False).tolist())
        train = [s for s in samples if _image_name(s) not in val_names]
        val = [s for s in samples if _image_name(s) in val_names]
        return train, val, f"held back {n_val} of {len(names)} images for validation"
    return _split_strips(samples, fraction, seed, min_size)


def first_pixels(samples: Sequence[Sample], max_images: int, max_pixels: int) -> list[Sample]:
    """Keep the samples, in order, while they hold at most so many images and pixels.

    The first sample is always kept.
    """
    kept, px = [], 0
    for smp in samples:
        n_px = smp.shape[0] * smp.shape[1]
        if kept and (len(kept) >= max_images or px + n_px > max_pixels):
            continue
        kept.append(smp)
        px += n_px
    return kept


def predict_sample(bundle: ModelBundle, sample: Sample, cfg, device):
    """Predict a (normalised) validation sample whole, tiled like prediction.

    Returns the probabilities ``(K, M, N)`` and the config used, with fewer or smaller
    tiles when the device ran out of memory.
    """
    from napari_unet.core.device import describe_device, release_memory
    from napari_unet.core.errors import is_out_of_memory
    from napari_unet.core.predict import _predict_2d, shrink_for_memory

    ident = Normalisation(0.0, 100.0)  # samples are normalised already
    c = bundle.in_channels
    lo, hi = np.zeros(c, np.float32), np.ones(c, np.float32)
    while True:
        try:
            prob = drain(
                _predict_2d(bundle, sample.image, lo, hi, ident, cfg, device, None, [0], 0)
            )
            return prob, cfg
        except (RuntimeError, MemoryError) as error:  # retried below, tensors freed
            if not is_out_of_memory(error):
                raise
        release_memory(device)
        cfg = shrink_for_memory(cfg, bundle.spec.multiple, describe_device(device))


def validate(
    bundle: ModelBundle,
    val: Sequence[Sample],
    loss_fn,
    device,
    n_outputs: int,
    precision: str = "auto",
) -> dict:
    """Score the model on whole validation images (tiled, like prediction).

    Returns
    -------
    dict
        ``val_loss``, ``dice`` (of the foreground, pooled), ``predict_seconds``, ``f1``
        (IoU 0.5, pooled) when every image's labels say where touching objects meet,
        and ``score``: the F1 when there is one, else the Dice.
    """
    import torch

    from napari_unet.core.metrics import match_objects
    from napari_unet.core.predict import PredictConfig, labels_from_output

    cfg = PredictConfig(tile_size=512, overlap=32, batch_size=2, precision=precision)
    losses, inter, card, tp, fp, fn = [], 0.0, 0.0, 0, 0, 0
    instance_ok = True
    bundle.model.eval()
    predict_s = 0.0
    for s in val:
        t_pred = time.perf_counter()
        prob, cfg = predict_sample(bundle, s, cfg, device)
        predict_s += time.perf_counter() - t_pred
        t = s.targets
        tgt = np.stack([t.foreground, t.boundary][:n_outputs]).astype(np.float32)
        w = t.valid.astype(np.float32)
        wts = np.stack([w, w * float(t.boundary_valid)][:n_outputs])
        p = np.clip(prob, 1e-6, 1 - 1e-6)
        logits = torch.from_numpy(np.log(p / (1 - p)))[None]
        losses.append(
            float(loss_fn(logits, torch.from_numpy(tgt)[None], torch.from_numpy(wts)[None]))
        )
        valid = t.valid.astype(bool)
        pf = (prob[0] > 0.5) & valid
        gf = t.foreground.astype(bool) & valid
        inter += float(np.logical_and(pf, gf).sum())
        card += float(pf.sum() + gf.sum())
        # objects are scored where the labels say where touching objects meet (a model
        # without a boundary output splits them by the distance transform)
        if (n_outputs > 1 or t.boundary_valid) and t.instances is not None and valid.all():
            pred = labels_from_output(prob, bundle.outputs, cfg)
            mt = match_objects(t.instances, pred, thresholds=(0.5,))
            tp, fp, fn = tp + int(mt.tp[0]), fp + int(mt.fp[0]), fn + int(mt.fn[0])
        else:
            instance_ok = False
    out = {"val_loss": float(np.mean(losses)), "dice": (2 * inter + 1e-9) / (card + 1e-9)}
    out["predict_seconds"] = predict_s
    if instance_ok:
        out["f1"] = 2 * tp / max(2 * tp + fp + fn, 1)
        out["score"] = out["f1"]
    else:
        out["score"] = out["dice"]
    return out


def score_name(entry: dict) -> str:
    """Name what a validation entry's ``score`` is, in the words the widgets and CLI use."""
    if "f1" in entry:
        return "F1 on held-back images"
    if "dice" in entry:
        return "Dice on held-back images"
    return "training loss"


def best_text(history: Sequence[dict], best_score: float | None) -> str:
    """Give the run's one score: the best F1 (or Dice) on held-back images, or the last loss."""
    if best_score is None or not history:
        return "no score (no step finished)"
    name = score_name(history[-1])
    if name == "training loss":  # the score is minus the loss; no images were held back
        return f"nothing held back to score; last {name} {-history[-1]['score']:.3f}"
    return f"best {name} {best_score:.3f}"


def describe_entry(entry: dict) -> str:
    """Say what one validation found, in one line (the message of its progress report)."""
    parts = [f"epoch {entry['epoch']}", f"step {entry['step']}"]
    for k in ("train_loss", "val_loss", "dice", "f1"):
        if entry.get(k) is not None:
            parts.append(f"{k} {entry[k]:.3f}")
    if entry.get("best"):
        parts.append("(best)")
    if entry.get("not_saved"):
        parts.append(f"NOT SAVED: {entry['not_saved']}")
    return ", ".join(parts)
