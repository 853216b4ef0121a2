"""The UNet and its parts.

The parts (:class:`DoubleConv`, :class:`Down`, :class:`Up`) are kept apart
from the assembled :class:`UNet`, as in Pytorch-UNet and
segmentation_models.pytorch. Any input size works: the input is mirror-padded
to a multiple of ``2**depth`` inside :meth:`UNet.forward` and the output is
cropped back to the input size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_unet.core.errors import NapariUnetError

UPSAMPLING_MODES = ("bilinear", "transpose")


@dataclass(frozen=True)
class UNetSpec:
    """Everything needed to rebuild a :class:`UNet` (stored in checkpoints).

    Parameters
    ----------
    in_channels : int
        Channels of the input image (1 grey, 3 RGB, ...).
    out_channels : int
        Output maps (logits), e.g. 2 for foreground + boundary.
    depth : int
        Number of down-sampling steps (the input is padded to ``2**depth``).
    base_channels : int
        Feature maps of the first level; doubled at every level.
    batch_norm : bool
        BatchNorm after every convolution.
    upsampling : {"bilinear", "transpose"}
        Bilinear interpolation + 1x1 convolution, or transposed convolution.
    """

    in_channels: int = 1
    out_channels: int = 2
    depth: int = 4
    base_channels: int = 32
    batch_norm: bool = True
    upsampling: str = "bilinear"

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.out_channels < 1:
            raise NapariUnetError(
                f"UNet needs at least 1 input and 1 output channel, got in_channels="
                f"{self.in_channels}, out_channels={self.out_channels}."
            )
        if not 1 <= self.depth <= 7:
            raise NapariUnetError(f"UNet depth must be between 1 and 7, got {self.depth}.")
        if self.base_channels < 1:
            raise NapariUnetError(f"base_channels must be positive, got {self.base_channels}.")
        if self.upsampling not in UPSAMPLING_MODES:
            raise NapariUnetError(
                f"upsampling must be one of {UPSAMPLING_MODES}, got {self.upsampling!r}."
            )

    def to_dict(self) -> dict:
        """Return the spec as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetSpec:
        """Build a spec from :meth:`to_dict` output, ignoring unknown keys."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def multiple(self) -> int:
        """Spatial sizes are padded internally to a multiple of this."""
        return 2**self.depth


class DoubleConv(nn.Sequential):
    """(3x3 conv, [BatchNorm], ReLU) twice."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = True) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers.append(nn.Conv2d(c_in, out_ch, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max-pool followed by a :class:`DoubleConv`."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = True) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch, batch_norm))


class Up(nn.Module):
    """Up-sample, concatenate the skip connection, then a :class:`DoubleConv`."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, mode: str, batch_norm: bool) -> None:
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_ch, in_ch // 2, 1),
            )
        self.conv = DoubleConv(in_ch // 2 + skip_ch, out_ch, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Up-sample ``x`` to the size of ``skip`` and fuse them."""
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """UNet (Ronneberger et al. 2015) with same-size output.

    Parameters
    ----------
    spec : UNetSpec
        Architecture; see :class:`UNetSpec`.

    Examples
    --------
    >>> import torch
    >>> net = UNet(UNetSpec(in_channels=3, out_channels=2, depth=3, base_channels=8))
    >>> net(torch.zeros(1, 3, 37, 50)).shape
    torch.Size([1, 2, 37, 50])
    """

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.base_channels * 2**i for i in range(spec.depth + 1)]
        self.inc = DoubleConv(spec.in_channels, widths[0], spec.batch_norm)
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], spec.batch_norm) for i in range(spec.depth)
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], spec.upsampling, spec.batch_norm)
            for i in reversed(range(spec.depth))
        )
        self.head = nn.Conv2d(widths[0], spec.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, out_channels, H, W)`` for ``x`` of ``(N, C, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.spec.in_channels:
            raise NapariUnetError(
                f"UNet expects input (N, {self.spec.in_channels}, H, W), got {tuple(x.shape)}."
            )
        h, w = x.shape[-2:]
        m = self.spec.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # reflect padding needs pad < size; replicate covers tiny inputs
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)[..., :h, :w]


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
