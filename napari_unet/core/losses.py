"""Training losses, the pull towards a starting model, and the average of the weights.

:func:`loss_function` builds the loss the trainer minimises (BCE, Dice or both, over
the pixels the targets' weights count); :class:`Anchor` is the L2-SP penalty that keeps
a fine-tuned model near its starting weights (``TrainConfig.anchor``);
:class:`WeightAverage` is the exponential moving average of the weights that is
validated and kept instead of the weights themselves (``TrainConfig.ema``). torch is
imported when one of them is built, not at import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when training starts, not at import
    import torch

__all__ = ["LOSSES", "loss_function", "Anchor", "WeightAverage"]

#: The losses :func:`loss_function` knows ("weighted_bce" computes as "bce": the border
#: weights come with the targets).
LOSSES = ("bce_dice", "bce", "dice", "weighted_bce")


def loss_function(kind: str):
    """Return the loss of this kind as ``loss(logits, target, weight, per_sample=False)``.

    Parameters
    ----------
    kind : {"bce_dice", "bce", "dice", "weighted_bce"}

    Returns
    -------
    callable
        Takes logits, targets and pixel weights, all ``(B, K, M, N)``, and returns the
        loss pooled over the batch (a scalar tensor), or with ``per_sample=True`` one
        value per patch ``(B,)``. Each output channel counts where its weights are
        above 0; a channel without any such pixel is left out of the mean.
    """
    import torch
    import torch.nn.functional as F

    def loss(
        logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, per_sample: bool = False
    ) -> torch.Tensor:
        # pooled over the batch; with per_sample, one value per patch (B,) instead
        dims = (2, 3) if per_sample else (0, 2, 3)
        total = logits.new_zeros((logits.shape[0],) if per_sample else ())
        denom_w = weight.sum(dim=dims)
        used = (denom_w > 0).to(logits.dtype)
        n_used = used.sum(dim=-1).clamp(min=1)
        if kind in ("bce", "bce_dice", "weighted_bce"):
            bce = F.binary_cross_entropy_with_logits(
                logits, target, weight=weight, reduction="none"
            )
            per_ch = bce.sum(dim=dims) / denom_w.clamp(min=1)
            total = total + (per_ch * used).sum(dim=-1) / n_used
        if kind in ("dice", "bce_dice"):
            valid = (weight > 0).to(logits.dtype)
            p = torch.sigmoid(logits) * valid
            t = target * valid
            inter = (p * t).sum(dim=dims)
            card = p.sum(dim=dims) + t.sum(dim=dims)
            dice = 1 - (2 * inter + 1.0) / (card + 1.0)
            total = total + (dice * used).sum(dim=-1) / n_used
        return total

    return loss


class Anchor:
    """L2-SP: the mean squared distance of the weights from their starting values.

    Parameters
    ----------
    model : torch.nn.Module
        The model being fine-tuned, holding its starting weights.
    weight : float
        Factor of the penalty in the loss.
    """

    def __init__(self, model, weight: float) -> None:
        self.weight = float(weight)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.start = [p.detach().clone() for p in self.params]
        self.n = max(1, sum(p.numel() for p in self.params))

    def penalty(self):
        """Return ``weight`` times the mean squared difference from the start (a tensor)."""
        total = sum(((p - p0) ** 2).sum() for p, p0 in zip(self.params, self.start, strict=True))
        return self.weight * total / self.n


class WeightAverage:
    """Exponential moving average of a model's weights (and batch-norm statistics).

    Parameters
    ----------
    model : torch.nn.Module
    decay : float
        The most the average keeps of itself at each step; the decay grows from 0 as
        ``1 - 9 / (10 + step)`` up to it, so the average spans about the last tenth of
        the steps.
    """

    def __init__(self, model, decay: float) -> None:
        self.decay = float(decay)
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._float = [k for k, v in self.state.items() if v.is_floating_point()]

    def update(self, model) -> None:
        """Move the average towards the model's weights after a step."""
        import torch

        self.steps += 1
        d = min(self.decay, 1.0 - 9.0 / (10.0 + self.steps))
        cur = model.state_dict()
        with torch.no_grad():
            torch._foreach_lerp_(
                [self.state[k] for k in self._float], [cur[k].detach() for k in self._float], 1 - d
            )
            for k, v in cur.items():
                if k not in self._float:
                    self.state[k].copy_(v)

    @contextmanager
    def swapped_in(self, model) -> Iterator[None]:
        """Hold the average in the model for the block; its own weights come back after."""
        self.swap(model)
        try:
            yield
        finally:
            self.swap(model)

    def swap(self, model) -> None:
        """Exchange the model's weights with the average (call twice to swap back)."""
        import torch

        cur = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model.load_state_dict(self.state)
        self.state = cur
