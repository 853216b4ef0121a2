"""Normalisation statistics (and weights) per kind of image, for the retrains of a built-in model.

A retrain of a built-in model learns the user's kind of image, and its BatchNorm running
statistics and weights move towards that kind; on the images the built-in model knew,
that is what the retrain forgets (``docs/dev/correct_retrain.md``). Prediction therefore
tells, for each image, which statistics describe it better: the retrained model's own or
the built-in model's. The choice looks at the first normalisation layer: the channel means
and variances of its input over a crop of the image, scored as a Gaussian negative
log-likelihood under each set of statistics; the lower one wins, and the retrained model's
own on a tie. An image like the retrained model's is predicted by it as it is. An image more
like the built-in model's data is predicted with the built-in model's statistics and the
retrained weights pulled back towards the built-in ones (:data:`PULL` of the retrain's
change kept): it still gets part of what the corrections taught, and loses less of what
the built-in model knew.

Only models that :func:`napari_unet.core.finetune.blend_base` ties to an installed
built-in model (the same file) have a second set; every other model predicts as it is.
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from napari_unet.core.checkpoint import ModelBundle
    from napari_unet.core.data import Normalisation

#: Largest side of the crop whose first-layer activations decide.
SAMPLE_SIDE = 512
#: For an image more like the built-in model's data: the share of the retrain's change to
#: the weights kept (the rest pulled back to the built-in model's weights).
PULL = 0.5
#: How the user is told that an image is predicted closer to the built-in model (the
#: note goes on to say with what: :func:`note`).
NOTE = "this image is more like the built-in model's images than like your corrections"
STATS = ("running_mean", "running_var")

_lock = threading.Lock()
_cache: dict[tuple[str, str], dict] = {}  # (name, file hash): its state, on the CPU


def note(pulled: bool) -> str:
    """Return what Predict says about an image predicted closer to the built-in model."""
    text = f"{NOTE}: predicted with the built-in model's normalisation statistics"
    if not pulled:
        return text
    share = "half" if PULL == 0.5 else f"{PULL:.0%}"
    return f"{text} and {share} of what the retrain changed in the weights"


def first_norm_pair(model):
    """Return the first (convolution, batch norm) pair of `model` and the norm's name."""
    import torch.nn as nn

    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.running_mean is not None
            ):
                return conv, bn, f"{name}.{bn_name}" if name else bn_name
    return None


def base_statistics(bundle: ModelBundle) -> dict | None:
    """Return the running statistics of the built-in model `bundle` was retrained from.

    None when there is none (see :func:`napari_unet.core.finetune.blend_base`) or when they
    equal `bundle`'s own (the built-in model itself).
    """
    state = _base_for(bundle)
    return None if state is None else {k: v for k, v in state.items() if k.endswith(STATS)}


def _base_for(bundle: ModelBundle) -> dict | None:
    """Return the state of the built-in model `bundle` was retrained from, or None.

    None when there is none, when its tensors do not have `bundle`'s names and shapes
    (another architecture), or when its running statistics equal `bundle`'s own (the
    built-in model itself).
    """
    from napari_unet.core.finetune import tied_to_builtin

    # checked each time: the built-in model may have been replaced since it was cached
    if first_norm_pair(bundle.model) is None or not tied_to_builtin(bundle):
        return None
    state = _base_state(bundle)
    if state is None:  # pragma: no cover - removed between the two checks
        return None
    own = bundle.model.state_dict()
    floats = [k for k, v in own.items() if v.is_floating_point()]
    if any(k not in state or state[k].shape != own[k].shape for k in floats):
        return None  # another architecture: nothing to swap
    stats = [k for k in floats if k.endswith(STATS)]
    if not stats or all(bool((own[k].detach().cpu() == state[k]).all()) for k in stats):
        return None
    return state


def _base_state(bundle: ModelBundle) -> dict | None:
    """Return the state (on the CPU) of the built-in model `bundle` is tied to, cached."""
    from napari_unet.core.finetune import blend_base

    base = bundle.meta["retrain_base"]
    key = (str(base["name"]), str(base["sha256"]))
    with _lock:
        state = _cache.get(key)
        if state is None:
            origin = blend_base(bundle)
            if origin is None:
                return None
            state = _cache[key] = {
                k: v.detach().to("cpu").clone() for k, v in origin.model.state_dict().items()
            }
    return state


def _sample(
    image, lo: np.ndarray, hi: np.ndarray, norm: Normalisation, factor: float
) -> np.ndarray:
    """Return a central crop of the middle plane as the network sees it, normalised.

    At most :data:`SAMPLE_SIDE` network pixels square: the crop is resized by `factor`
    (prediction's, see :func:`napari_unet.core.predict.object_scale`).
    """
    from scipy import ndimage as ndi

    lead = tuple(int(s) // 2 for s in image.shape[1:-2])
    H, W = int(image.shape[-2]), int(image.shape[-1])
    side = max(1, int(round(SAMPLE_SIDE / factor)))
    h, w = min(H, side), min(W, side)
    y0, x0 = (H - h) // 2, (W - w) // 2
    crop = np.asarray(image[(slice(None),) + lead + (slice(y0, y0 + h), slice(x0, x0 + w))])
    crop = norm.apply(crop.astype(np.float32), lo, hi)
    if factor != 1:
        crop = ndi.zoom(crop, (1, factor, factor), order=1, grid_mode=True, mode="nearest")
    return np.ascontiguousarray(crop, dtype=np.float32)


def _nll(mu, var, mean, running_var, eps: float) -> float:
    v = running_var + eps
    return float((((mu - mean) ** 2 + var) / v + v.log()).mean())


def choose(
    bundle: ModelBundle,
    image,
    lo: np.ndarray,
    hi: np.ndarray,
    norm: Normalisation,
    factor: float = 1.0,
) -> tuple[ModelBundle, str | None]:
    """Return the model to predict `image` with, and a note when it is not `bundle` itself.

    Parameters
    ----------
    bundle : ModelBundle
    image : array-like ``(C, ..., Y, X)``
        The prepared image (raw values), as prediction reads it; lazy arrays are read
        on one crop only.
    lo, hi : ndarray
        Its normalisation ranges (:meth:`napari_unet.core.data.Normalisation.ranges`).
    norm : Normalisation
    factor : float
        The factor prediction resizes the image by for the network (its
        :func:`napari_unet.core.predict.object_scale`): the statistics are those of
        what the network sees.

    Returns
    -------
    ModelBundle
        `bundle`, or a copy with the built-in model's running statistics and the weights
        ``built-in + PULL * (bundle - built-in)`` (same metadata, on the same device).
    str or None
        :func:`note` (which starts with :data:`NOTE`) when the copy is returned.
    """
    import torch

    ref = _base_for(bundle)
    if ref is None:
        return bundle, None
    conv, bn, name = first_norm_pair(bundle.model)
    x = torch.as_tensor(_sample(image, lo, hi, norm, float(factor)))[None]
    with torch.no_grad():  # float64 on the CPU only (an MPS device has none)
        a = conv(x.to(device=conv.weight.device, dtype=conv.weight.dtype)).float().cpu()
    a = a.double()
    mu, var = a.mean(dim=(0, 2, 3)), a.var(dim=(0, 2, 3))
    own = _nll(
        mu,
        var,
        bn.running_mean.detach().cpu().double(),
        bn.running_var.detach().cpu().double(),
        bn.eps,
    )
    base = _nll(
        mu,
        var,
        ref[f"{name}.running_mean"].double(),
        ref[f"{name}.running_var"].double(),
        bn.eps,
    )
    if own <= base:
        return bundle, None
    variant = copy.copy(bundle)
    variant.model = copy.deepcopy(bundle.model)
    pulled = PULL < 1
    with torch.no_grad():
        for key, value in variant.model.state_dict().items():
            if not value.is_floating_point():
                continue  # counters stay the retrain's
            start = ref[key].to(device=value.device, dtype=torch.float32)
            if key.endswith(STATS):
                value.copy_(start.to(value.dtype))
            elif pulled:  # computed in float32 whatever the model's precision
                value.copy_((start + PULL * (value.float() - start)).to(value.dtype))
    return variant, note(pulled)
