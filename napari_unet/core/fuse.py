"""Inference copies of a UNet with every BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is an affine map per channel, so it can be folded into the
weights and bias of the preceding convolution: the same function, one pass over the
activations fewer per layer. On the CPU BatchNorm took about 10% of the prediction time
(profiled on the default UNet, 512-pixel tiles); see ``bench/predict_large.py``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fused_for_inference"]


def fused_for_inference(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with each Conv2d + BatchNorm2d pair fused.

    ``model`` itself is not changed. Pairs are found inside ``nn.Sequential``
    containers (a convolution directly followed by a batch norm); anything else is
    copied as it is.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.Module
        Gives the same outputs as ``model.eval()`` up to float rounding.
    """
    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in fused.modules():
            if not isinstance(module, nn.Sequential):
                continue
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                conv, bn = module._modules[a], module._modules[b]
                if (
                    isinstance(conv, nn.Conv2d)
                    and isinstance(bn, nn.BatchNorm2d)
                    and bn.track_running_stats
                    and bn.running_mean is not None
                ):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
    return fused
