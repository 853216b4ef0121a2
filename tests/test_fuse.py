import torch

from napari_unet.core.fuse import fused_for_inference
from napari_unet.core.model import UNet, UNetSpec


def test_fused_model_gives_the_same_outputs_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = UNet(UNetSpec(in_channels=1, out_channels=2, depth=2, base_channels=4))
    for m in model.modules():  # non-trivial running statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    fused = fused_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_model_without_batch_norm_is_copied_unchanged():
    model = UNet(
        UNetSpec(in_channels=1, out_channels=1, depth=2, base_channels=4, batch_norm=False)
    )
    fused = fused_for_inference(model.eval())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))
