"""``napari-unet demo``: the whole job on the built-in sample nuclei.

:func:`run_headless_demo` needs no display: with a built-in model installed
(:mod:`napari_unet.core.builtin`) it first predicts every sample with it and scores
that; then it trains (fine-tunes the built-in model, or a new model without one) on
all samples but one, predicts every sample, splits touching nuclei, scores the result
against the ground truth and writes label TIFFs. :func:`launch_viewer_demo` opens napari
with the samples and the three widgets docked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELD_OUT = "fluo_small"


def demo_outputs(out: Path) -> list[Path]:
    """Return the files :func:`run_headless_demo` writes into `out`."""
    from napari_unet.samples import SAMPLE_NAMES

    return [Path(out) / "model.pt"] + [Path(out) / f"{name}.tif" for name in SAMPLE_NAMES]


def run_headless_demo(out: Path, minutes: float = 1.0, log: Callable[[str], None] = print) -> dict:
    """Train, predict, split and evaluate on the shipped samples.

    Parameters
    ----------
    out : Path
        Folder for the model (``model.pt``) and the label images (``<name>.tif``).
    minutes : float
        Training time budget.
    log : callable
        Receives progress lines.

    Returns
    -------
    dict
        JSON-able summary: device, training steps and time, and scores on the
        held-out sample and on all samples; with a built-in model, ``builtin``: its
        name and its own scores before fine-tuning.
    """
    from napari_unet.core.data import guess_channel_axis
    from napari_unet.core.io import write_labels_tiff
    from napari_unet.core.metrics import evaluate
    from napari_unet.core.predict import predict
    from napari_unet.core.progress import drain
    from napari_unet.core.train import TrainConfig, iter_train
    from napari_unet.samples import load_samples

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples()
    train_set = [s for s in samples if s[0] != HELD_OUT]
    keys = ("f1", "precision", "recall", "dsb_score", "dice")

    def scores(bundle):
        """Predict every sample; return the labels and the held-out and overall scores."""
        preds = []
        for _name, image, _labels in samples:
            ax = guess_channel_axis(image.shape, bundle.in_channels)
            preds.append(predict(bundle, image, channel_axis=ax).labels)
        gts, names = [s[2] for s in samples], [s[0] for s in samples]
        i = names.index(HELD_OUT)
        return preds, evaluate([gts[i]], [preds[i]]), evaluate(gts, preds, names=names)

    init, builtin_summary = None, None
    builtin = _builtin_for(samples)
    if builtin is not None:
        from napari_unet.core.checkpoint import load_checkpoint

        log(f"demo: predicting the samples with the built-in model {builtin.name!r} ...")
        init = load_checkpoint(builtin.path)
        _, held, everything = scores(init)
        builtin_summary = {
            "name": builtin.name,
            "held_out": {"name": HELD_OUT, **{k: round(held[k], 3) for k in keys}},
            "all_samples": {k: round(everything[k], 3) for k in keys},
        }
        log(
            f"demo: built-in model {builtin.name!r} as it is: held-out {HELD_OUT} F1@0.5 "
            f"{held['f1']:.3f}, all samples F1@0.5 {everything['f1']:.3f}"
        )
    log(
        f"demo: {'fine-tuning the built-in model' if init is not None else 'training'} for "
        f"{minutes:g} min on {len(train_set)} sample images (held out: {HELD_OUT}) ..."
    )
    cfg = TrainConfig(
        minutes=minutes,
        checkpoint_path=str(out / "model.pt"),
        val_fraction=0.2,
        patch_size=128,
        batch_size=4,
        steps_per_epoch=25,
    )
    t0 = time.perf_counter()
    gen = iter_train(
        [s[1] for s in train_set],
        [s[2] for s in train_set],
        cfg,
        names=[s[0] for s in train_set],
        init=init,
    )

    def show(p) -> None:
        if p.kind in ("start", "validation", "done"):
            log("  " + p.message)

    result = drain(gen, show)
    train_s = time.perf_counter() - t0
    preds, held, everything = scores(result.bundle)
    for (name, _image, _labels), labels in zip(samples, preds, strict=True):
        write_labels_tiff(out / f"{name}.tif", labels, overwrite=True)
    summary = {
        "device": result.device,
        "train_seconds": round(train_s, 1),
        "train_steps": result.steps,
        "stopped": result.stopped,
        "model": str(result.checkpoint),
        "held_out": {"name": HELD_OUT, **{k: round(held[k], 3) for k in keys}},
        "all_samples": {k: round(everything[k], 3) for k in keys},
        "labels_written_to": str(out),
    }
    if builtin_summary is not None:
        summary["builtin"] = builtin_summary
    log(f"demo: held-out {HELD_OUT}: F1@0.5 {held['f1']:.3f}, DSB score {held['dsb_score']:.3f}")
    return summary


def _builtin_for(samples: list) -> Any:
    """Return the first installed built-in model whose channels fit every sample, or None."""
    from napari_unet.core.builtin import list_models

    channels = {image.shape[-1] if image.ndim == 3 else 1 for _, image, _ in samples}
    return next((m for m in list_models() if all(m.fits(c) for c in channels)), None)


def launch_viewer_demo(viewer=None, run: bool = True):
    """Open napari with the sample images and the Train, Predict and Split nuclei widgets.

    Parameters
    ----------
    viewer : napari.Viewer, optional
        Use this viewer instead of a new one.
    run : bool
        Start napari's event loop (blocks until the window is closed).

    Returns
    -------
    napari.Viewer
    """
    import napari

    from napari_unet import PLUGIN_NAME
    from napari_unet.samples import load_samples

    viewer = viewer or napari.Viewer(title="napari-unet demo")
    for name, image, labels in load_samples():
        viewer.add_image(image, name=name, rgb=image.ndim == 3, visible=False)
        viewer.add_labels(labels, name=f"{name}_ground_truth", visible=False)
    viewer.layers[0].visible = True
    viewer.layers[1].visible = True
    viewer.layers.selection.active = viewer.layers[1]
    for widget in ("Train", "Predict", "Split nuclei"):
        viewer.window.add_plugin_dock_widget(PLUGIN_NAME, widget)
    if run:
        napari.run()
    return viewer
