"""Experiment: which normalisation statistics after three rounds of full MICCAI corrections.

Runs ``bench/correct_retrain.py``'s MICCAI "full, rounds" loop with the Retrain defaults
(the models of each round are cached in ``--cache``), then scores the round-3 model on the
other MICCAI tiles and the DSB fluorescence images with several ways of choosing its
BatchNorm running statistics per image:

* ``stats``: the package's rule (:func:`napari_unet.core.norm_sets.choose`) with the
  statistics alone (``PULL = 1``, what it did before the weights were pulled back too);
* ``own``: always the retrained model's own statistics;
* ``builtin``: always the built-in model's;
* ``layers``: layer by layer, in one forward pass over the package's crop: each BatchNorm
  layer takes the set (own or built-in) under which its input's channel moments are
  likelier, given the choices of the layers before it;
* ``recal``: a third set, the retrained weights' own statistics on the built-in model's
  replayed samples (what the built-in model's kind of image looks like to the *retrained*
  layers), chosen against the own set by the package's first-layer rule;
* ``recal-layers``: own or recalibrated, layer by layer;
* ``pull0``, ``pull50``: the package's rule with the built-in statistics and the weights
  pulled back all the way (the built-in model itself) or half-way (``PULL`` = 0, 0.5).

Usage: python docs/dev/norm_sets_layers.py [--cache DIR] [--variants ...]
(measured: docs/dev/correct_retrain.md; not used by the package).
"""

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from correct_retrain import N_CORRECTED, SEED, read_pairs, score  # noqa: E402

import napari_unet.core.predict as predict_module  # noqa: E402
from napari_unet.core import norm_sets  # noqa: E402
from napari_unet.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from napari_unet.core.corrections import merge_annotations, whole_layer_annotation  # noqa: E402
from napari_unet.core.data import Normalisation, find_channel_axis  # noqa: E402
from napari_unet.core.finetune import FinetuneConfig, finetune  # noqa: E402
from napari_unet.core.predict import PredictConfig, object_scale, prepare_image  # noqa: E402

STATS = ("running_mean", "running_var")


def rounds(cache: Path) -> list:
    """Return the models after rounds 1..3 (MICCAI, full corrections, defaults), cached."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / f"miccai_full_round{k}.pt" for k in (1, 2, 3)]
    if all(p.is_file() for p in paths):
        return [load_checkpoint(p) for p in paths]
    pairs = read_pairs("miccai")
    order = np.random.default_rng(SEED).permutation(len(pairs))
    corrected = [pairs[i] for i in sorted(order[:N_CORRECTED].tolist())]
    model = load_checkpoint(ROOT / "napari_unet" / "models" / "nuclei.pt")
    training: dict = {}
    out = []
    for k, (name, image, truth) in enumerate(corrected):
        annotation = whole_layer_annotation(truth)
        if name in training:
            annotation = merge_annotations(training[name][1], annotation)
        training[name] = (image, annotation)
        names = list(training)
        t0 = time.perf_counter()
        result = finetune(
            [training[n][0] for n in names],
            [training[n][1] for n in names],
            model,
            FinetuneConfig(device="cpu"),
            names=names,
        )
        model = result.bundle
        seconds = time.perf_counter() - t0
        print(f"round {k + 1}: {result.steps} steps, {seconds:.0f} s, kept {result.kept}")
        save_checkpoint(model, paths[k])
        out.append(model)
    return out


def _input(image, bundle):
    """Return the package rule's sample of `image` (normalised, resized), (1, C, Y, X)."""
    colour = image.ndim == 3 and find_channel_axis(image.shape, image.shape[:2]) is not None
    img = prepare_image(image, bundle.in_channels, -1 if colour else None)
    norm = Normalisation.from_dict(bundle.meta.get("normalisation", {}))
    lo, hi = norm.ranges(img)
    factor = object_scale(bundle, img, PredictConfig.for_model(bundle, device="cpu")).factor
    x = norm_sets._sample(img, lo, hi, norm, factor)
    return _crop(torch.as_tensor(x)[None])


def recalibrated(bundle, replay) -> dict:
    """Return `bundle`'s weights' running statistics on the replayed images (cumulative)."""
    model = copy.deepcopy(bundle.model).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        for _, image, _ in replay:
            model(_input(image, bundle))
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(STATS)}


def with_stats(bundle, stats: dict):
    """Return a copy of `bundle` with the running statistics `stats`."""
    variant = copy.copy(bundle)
    variant.model = copy.deepcopy(bundle.model)
    state = variant.model.state_dict()
    with torch.no_grad():
        for key, value in stats.items():
            state[key].copy_(value)
    return variant


def nll(mu, var, mean, rvar, eps) -> float:
    """Mean Gaussian NLL (up to constants) of channel moments under running statistics."""
    v = rvar.double() + eps
    return float((((mu - mean.double()) ** 2 + var) / v + v.log()).mean())


def _crop(x):
    """`x` cut (or reflected) to the network's size multiple (32)."""
    m = 32
    h, w = max(m, x.shape[-2] // m * m), max(m, x.shape[-1] // m * m)
    if x.shape[-2] < h or x.shape[-1] < w:
        pad = (0, max(0, w - x.shape[-1]), 0, max(0, h - x.shape[-2]))
        x = torch.nn.functional.pad(x, pad, mode="reflect")
    return x[..., :h, :w]


def layerwise(bundle, x, other: dict) -> tuple:
    """`bundle` with each BatchNorm's statistics own or `other`'s, chosen layer by layer.

    One forward pass over `x`: before each BatchNorm layer computes, its input's channel
    moments are scored under its own and `other`'s statistics; the likelier set is kept.
    Returns the variant and the share of layers switched to `other`.
    """
    variant = copy.copy(bundle)
    variant.model = copy.deepcopy(bundle.model).eval()
    picks, hooks = [], []
    for name, module in variant.model.named_modules():
        if not isinstance(module, torch.nn.BatchNorm2d):
            continue

        def hook(mod, args, name=name):
            a = args[0].double()
            mu, var = a.mean(dim=(0, 2, 3)), a.var(dim=(0, 2, 3))
            mean, rvar = other[f"{name}.running_mean"], other[f"{name}.running_var"]
            switch = nll(mu, var, mean, rvar, mod.eps) < nll(
                mu, var, mod.running_mean, mod.running_var, mod.eps
            )
            if switch:
                mod.running_mean.copy_(mean.to(mod.running_mean))
                mod.running_var.copy_(rvar.to(mod.running_var))
            picks.append(switch)

        hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        variant.model(_crop(x).to(next(variant.model.parameters())))
    for h in hooks:
        h.remove()
    return variant, float(np.mean(picks))


def main() -> None:
    """Run (or load) the rounds, then score each way of choosing the statistics."""
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "napari_unet_norm_sets_layers"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["stats", "own", "builtin", "layers", "recal", "recal-layers", "pull0", "pull50"],
    )
    args = parser.parse_args()
    models = rounds(args.cache)
    new = models[-1]
    builtin = norm_sets.base_statistics(new)
    from napari_unet.core.builtin import replay_data

    replay = replay_data(new)
    recal = recalibrated(new, replay)
    layers = sum(1 for k in recal if k.endswith("running_mean"))
    print(f"{len(replay)} replayed images; {layers} BatchNorm layers")
    pairs = read_pairs("miccai")
    order = np.random.default_rng(SEED).permutation(len(pairs))
    held = set(order[:N_CORRECTED].tolist())
    remaining = [p for i, p in enumerate(pairs) if i not in held]
    fluo = read_pairs("dsb_fluo")
    package, pull = norm_sets.choose, norm_sets.PULL
    counts: dict = {}

    def rule(variant):
        def choose(bundle, image, lo, hi, norm, factor=1.0):
            if variant == "stats":  # the package's rule, statistics only (PULL = 1)
                norm_sets.PULL = 1.0
                return package(bundle, image, lo, hi, norm, factor)
            if variant == "own":
                return bundle, None
            if variant == "builtin":
                return with_stats(bundle, builtin), "b"
            if variant == "recal":
                conv, bn, name = norm_sets.first_norm_pair(bundle.model)
                x = torch.as_tensor(norm_sets._sample(image, lo, hi, norm, float(factor)))[None]
                with torch.no_grad():
                    a = conv(x).double()
                mu, var = a.mean(dim=(0, 2, 3)), a.var(dim=(0, 2, 3))
                own = nll(mu, var, bn.running_mean, bn.running_var, bn.eps)
                mean, rvar = recal[f"{name}.running_mean"], recal[f"{name}.running_var"]
                theirs = nll(mu, var, mean, rvar, bn.eps)
                counts[variant] = counts.get(variant, 0) + (theirs < own)
                return (with_stats(bundle, recal), "r") if theirs < own else (bundle, None)
            if variant.startswith("pull"):  # statistics and weights: the package's rule
                norm_sets.PULL = float(variant[4:]) / 100
                chosen, note = package(bundle, image, lo, hi, norm, factor)
                counts[variant] = counts.get(variant, 0) + (note is not None)
                return chosen, note
            raise AssertionError(variant)

        return choose

    for variant in args.variants:
        t0 = time.perf_counter()
        counts.clear()
        if variant in ("layers", "recal-layers"):
            other = builtin if variant == "layers" else recal
            share = []

            def choose(bundle, image, lo, hi, norm, factor=1.0, other=other, share=share):
                x = torch.as_tensor(norm_sets._sample(image, lo, hi, norm, float(factor)))[None]
                variant_, switched = layerwise(bundle, x, other)
                share.append(switched)
                return variant_, "l"

            predict_module.choose_statistics = choose
        else:
            share = None
            predict_module.choose_statistics = rule(variant)
        s_rem = score(new, remaining)
        n_rem = len(share) if share is not None else None
        s_fluo = score(new, fluo)
        extra = ""
        if share is not None:
            extra = (
                f"; share of layers switched: MICCAI {np.mean(share[:n_rem]):.2f}, "
                f"fluorescence {np.mean(share[n_rem:]):.2f}"
            )
        elif counts:
            extra = f"; switched images (both sets): {counts}"
        print(
            f"{variant:>13}: other MICCAI F1 {s_rem['f1']:.4f}, DSB fluorescence F1 "
            f"{s_fluo['f1']:.4f} ({time.perf_counter() - t0:.0f} s){extra}",
            flush=True,
        )
    predict_module.choose_statistics = package
    norm_sets.PULL = pull


if __name__ == "__main__":
    main()
