import pytest


@pytest.mark.gui
def test_viewer_demo_opens_samples_and_widgets(make_napari_viewer):
    from napari_unet.demo import launch_viewer_demo

    viewer = launch_viewer_demo(make_napari_viewer(), run=False)
    names = [layer.name for layer in viewer.layers]
    assert "fluo_dense" in names and "fluo_dense_ground_truth" in names
    assert len(names) == 12
    docked = set(viewer.window.dock_widgets)
    for widget in ("Train", "Predict", "Split nuclei"):
        assert any(widget in key for key in docked), docked
