"""Experiment: the built-in model's BatchNorm statistics for the images that are like its data.

One retrain (MICCAI, the first image of ``bench/correct_retrain.py``'s rounds, whole
annotation, Retrain defaults), then:

* F1 of the built-in model, the retrained one, and the retrained weights with the built-in
  model's running statistics, on the other MICCAI tiles and the DSB fluorescence images;
* which statistics a simple per-image rule picks: the first BatchNorm layer's input over the
  whole (normalised) image, scored as the Gaussian negative log-likelihood of its channel
  means and variances under each set of running statistics; the lower one wins; and what
  the package's rule (:func:`napari_unet.core.norm_sets.choose`: a central crop, resized as
  prediction resizes the image) picks.

Usage: python docs/dev/norm_sets.py (measured: docs/dev/correct_retrain.md, "Statistics per
kind of image"; not used by the package).
"""

import copy
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from correct_retrain import N_CORRECTED, SEED, read_pairs, score  # noqa: E402

from napari_unet.core.checkpoint import load_checkpoint  # noqa: E402
from napari_unet.core.corrections import whole_layer_annotation  # noqa: E402
from napari_unet.core.data import Normalisation, find_channel_axis  # noqa: E402
from napari_unet.core.finetune import FinetuneConfig, finetune  # noqa: E402
from napari_unet.core.norm_sets import choose  # noqa: E402
from napari_unet.core.predict import PredictConfig, object_scale, prepare_image  # noqa: E402


def nll(mu, var, bn) -> float:
    """Mean Gaussian NLL (up to constants) of channel moments under a BatchNorm's statistics."""
    m, v = bn.running_mean, bn.running_var + bn.eps
    return float((((mu - m) ** 2 + var) / v + torch.log(v)).mean())


def main() -> None:
    """Run the retrain, score the three models, count the rule's picks per set."""
    pairs = read_pairs("miccai")
    order = np.random.default_rng(SEED).permutation(len(pairs))
    corrected = sorted(order[:N_CORRECTED].tolist())
    first = pairs[corrected[0]]
    remaining = [p for i, p in enumerate(pairs) if i not in corrected]
    fluo = read_pairs("dsb_fluo")
    start = load_checkpoint(ROOT / "napari_unet" / "models" / "nuclei.pt")
    config = FinetuneConfig(device="cpu", keep_better=False)
    new = finetune([first[1]], [whole_layer_annotation(first[2])], start, config).bundle
    mixed = copy.deepcopy(new)
    ref = start.model.state_dict()
    with torch.no_grad():
        for key, value in mixed.model.state_dict().items():
            if "running_" in key:
                value.copy_(ref[key])
    for name, bundle in (
        ("built-in", start),
        ("retrained", new),
        ("retrained + built-in stats", mixed),
    ):
        print(
            f"{name}: other MICCAI {score(bundle, remaining)}, fluorescence {score(bundle, fluo)}"
        )
    norm = Normalisation.from_dict(new.meta.get("normalisation", {}))
    conv, bn_new, bn_old = new.model.inc[0], new.model.inc[1], start.model.inc[1]
    cfg = PredictConfig.for_model(new, device="cpu")
    for kind in ("miccai", "dsb_fluo", "dsb_tissue"):
        picks = {"retrained": 0, "built-in": 0}
        shipped = {"retrained": 0, "built-in": 0}
        for _, image, _ in read_pairs(kind):
            colour = image.ndim == 3 and find_channel_axis(image.shape, image.shape[:2]) is not None
            img = prepare_image(image, new.in_channels, -1 if colour else None)
            lo, hi = norm.ranges(img)
            x = torch.as_tensor(np.ascontiguousarray(norm.apply(img, lo, hi)), dtype=torch.float32)
            with torch.no_grad():
                a = conv(x[None])
            mu, var = a.mean(dim=(0, 2, 3)), a.var(dim=(0, 2, 3))
            picks["retrained" if nll(mu, var, bn_new) < nll(mu, var, bn_old) else "built-in"] += 1
            # the package's rule (a crop, resized as prediction resizes the image)
            factor = object_scale(new, img, cfg).factor
            _, note = choose(new, img, lo, hi, norm, factor)
            shipped["built-in" if note else "retrained"] += 1
        print(f"{kind}: statistics picked, whole image at its size {picks}, package {shipped}")


if __name__ == "__main__":
    main()
