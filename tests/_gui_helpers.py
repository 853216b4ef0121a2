"""Helpers for the widget tests (real napari viewer under Xvfb)."""

from __future__ import annotations

import numpy as np

from napari_unet import PLUGIN_NAME

PLUGIN = PLUGIN_NAME

#: Worker timeouts (ms): generous, the machines running the tests are shared.
TIMEOUT = 120_000


def open_widget(viewer, name):
    """Open a napari-unet dock widget through the manifest, as a user does."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def make_tiny(train_widget, *, epochs=1, patch=64):
    """Settings that train in about a second on a CPU (20 steps of a small UNet)."""
    train_widget.epochs.setValue(epochs)
    train_widget.patch_size.setValue(patch)
    train_widget.batch_size.setValue(2)
    train_widget.depth.setValue(2)
    train_widget.base_channels.setValue(8)
    train_widget.device.setCurrentText("cpu")


def wait_idle(qtbot, widget, timeout=TIMEOUT):
    """Wait until `widget` has no worker running."""
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def error_messages():
    """Messages of the error notifications shown so far."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [
        str(n.message)
        for n in notification_manager.records
        if n.severity == NotificationSeverity.ERROR
    ]


def layer_snapshot(viewer):
    """Names and data copies of every layer, to check that nothing changed."""
    return {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}


def assert_unchanged(viewer, snapshot):
    assert [layer.name for layer in viewer.layers] == list(snapshot)
    for layer in viewer.layers:
        np.testing.assert_array_equal(layer.data, snapshot[layer.name])


def tiny_model_file(path, in_channels=1):
    """Save an untrained, tiny UNet (fast to predict with) and return its path."""
    import torch

    from napari_unet.core.checkpoint import new_bundle, save_checkpoint
    from napari_unet.core.model import UNetSpec

    spec = UNetSpec(in_channels=in_channels, out_channels=2, depth=2, base_channels=4)
    meta = {"outputs": ["foreground", "boundary"], "normalisation": {"low": 1.0, "high": 99.8}}
    # the same weights every time, whatever ran before: a random tiny net can come out
    # with every ReLU of a level dead, and then predict one constant everywhere
    ramp = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64).repeat(1, in_channels, 1, 1)
    with torch.random.fork_rng():
        for seed in range(100):
            torch.manual_seed(seed)
            bundle = new_bundle(spec, meta)
            with torch.no_grad():
                out = torch.sigmoid(bundle.model.eval()(ramp))
            if float(out.std()) > 1e-3:
                break
    return save_checkpoint(bundle, path)
