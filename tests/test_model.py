import pytest
import torch

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.model import UNet, UNetSpec, count_parameters


@pytest.mark.parametrize("upsampling", ["bilinear", "transpose"])
@pytest.mark.parametrize("depth", [1, 3, 4])
@pytest.mark.parametrize("hw", [(16, 16), (37, 50), (64, 33), (5, 7)])
def test_forward_backward_any_size(upsampling, depth, hw):
    net = UNet(
        UNetSpec(in_channels=3, out_channels=2, depth=depth, base_channels=4, upsampling=upsampling)
    )
    x = torch.randn(2, 3, *hw, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 2, *hw)
    y.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_batchnorm_switch_and_parameter_count():
    with_bn = UNet(UNetSpec(1, 1, 2, 8, batch_norm=True))
    without = UNet(UNetSpec(1, 1, 2, 8, batch_norm=False))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.modules())
    # widths double per level: base 16 has about 4x the parameters of base 8
    ratio = count_parameters(UNet(UNetSpec(1, 1, 3, 16))) / count_parameters(
        UNet(UNetSpec(1, 1, 3, 8))
    )
    assert 3.5 < ratio < 4.1


def test_wrong_channels_is_a_clear_error():
    net = UNet(UNetSpec(in_channels=3, out_channels=1, depth=2, base_channels=4))
    with pytest.raises(NapariUnetError, match=r"\(N, 3, H, W\)"):
        net(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize(
    "kw",
    [
        dict(depth=0),
        dict(depth=9),
        dict(in_channels=0),
        dict(upsampling="nearest"),
        dict(base_channels=0),
    ],
)
def test_invalid_spec(kw):
    with pytest.raises(NapariUnetError):
        UNetSpec(**kw)


def test_spec_round_trip():
    s = UNetSpec(2, 3, 3, 8, False, "transpose")
    assert UNetSpec.from_dict({**s.to_dict(), "unknown": 1}) == s
