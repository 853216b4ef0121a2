"""Install a model as a built-in model in a test's own models folder."""

from __future__ import annotations


def install_builtin(bundle, tmp_path, monkeypatch, name="tiny"):
    """`bundle` installed as the built-in model `name` of a fresh models folder.

    Returns the folder and the model loaded from it, as the user gets it (tied to the
    built-in file: ``meta["retrain_base"]``).
    """
    from napari_unet.core.builtin import ENV_VAR, resolve_model
    from napari_unet.core.checkpoint import install_model, load_checkpoint, save_checkpoint

    folder = tmp_path / "models"
    source = save_checkpoint(bundle, tmp_path / "base.pt")
    install_model(source, name, name.title(), folder=folder, half=False)
    monkeypatch.setenv(ENV_VAR, str(folder))
    return folder, load_checkpoint(resolve_model(name))
