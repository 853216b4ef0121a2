"""Export a training set with its settings, to train on a cluster with the command line.

:func:`export_training_set` writes, into a folder::

    images/<name>.tif           the images, as they are (dtype and axes kept)
    labels/<name>_labels.tif    their labels, uint16 (uint32 above 65535)
    train_config.json           the training settings (``napari-unet train --config``)
    start_model.pt              the model to fine-tune, when there is one
    run_on_cluster.sh           the torchrun command, with a SLURM sbatch header

``napari-unet train --images images --labels labels --config train_config.json``
pairs each image with its labels by name. Nothing is ever overwritten: if any of
these files exists the export stops before writing anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import safe_stems
from napari_unet.core.train import TrainConfig

if TYPE_CHECKING:
    from napari_unet.core.checkpoint import ModelBundle

__all__ = ["ExportSummary", "export_training_set", "safe_stems"]

SCRIPT = "run_on_cluster.sh"
CONFIG = "train_config.json"
START_MODEL = "start_model.pt"


@dataclass
class ExportSummary:
    """What :func:`export_training_set` wrote.

    Attributes
    ----------
    folder : Path
    files : list of Path
        Every file written.
    command : str
        The training command, to run in ``folder``.
    """

    folder: Path
    files: list[Path]
    command: str


def _script(n_images: int, config: TrainConfig, start_model: bool) -> tuple[str, str]:
    resume = (
        f"RESUME=model.pt; [ -f model.pt ] || RESUME={START_MODEL}"
        if start_model
        else "RESUME=model.pt"
    )
    command = (
        'torchrun --standalone --nproc_per_node="$NPROC" -m napari_unet train \\\n'
        f"    --images images --labels labels --config {CONFIG} \\\n"
        '    --out model.pt --resume "$RESUME"'
    )
    budget = f"{config.minutes:g} minutes" if config.minutes else f"{config.epochs or 50} epochs"
    text = f"""#!/bin/bash
# Train a napari-unet model on a cluster with the training set exported from napari
# on {time.strftime("%Y-%m-%d %H:%M")}: {n_images} image(s) in images/, labels in labels/,
# the Train widget's settings in {CONFIG} (budget {budget}, device "{config.device}").
#
# Run it on a GPU node (or any machine) from this folder:   bash {SCRIPT}
# or submit it to SLURM:                                     sbatch {SCRIPT}
# (adapt the #SBATCH lines to your cluster: partition, account, GPUs, time).
# The best model is written to model.pt; load it in napari's Predict widget
# ("Model file") or use it with `napari-unet predict --model model.pt`.
# A restarted (requeued) job continues from model.pt. Several nodes: see
# docs/scaling.md (torchrun --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT).
#
#SBATCH --job-name=napari-unet
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=02:00:00
#SBATCH --output=napari-unet-%j.log
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-$(dirname "$0")}}"
# one process per GPU (1 on a machine without GPU); override with NPROC=...
NPROC="${{NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}}"
{resume}
{command}
"""
    return text, command


def export_training_set(
    folder: str | Path,
    names: Sequence[str],
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig,
    *,
    start_model: ModelBundle | None = None,
) -> ExportSummary:
    """Write a training set, its settings and a cluster script into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Created if missing; may exist, but none of the files to write may.
    names : sequence of str
        One name per pair (layer names); turned into safe, unique file stems.
    images, labels : sequence of ndarray
        The pairs, as :func:`napari_unet.core.train.iter_train` takes them.
    config : TrainConfig
        Written to ``train_config.json`` without ``checkpoint_path``.
    start_model : ModelBundle, optional
        A model to fine-tune (written to ``start_model.pt``).

    Returns
    -------
    ExportSummary

    Raises
    ------
    NapariUnetError
        Nothing to export, lengths differ, a file exists, or the folder cannot be
        written (nothing is written then, or the partial files are named).
    """
    from napari_unet.core.checkpoint import save_checkpoint
    from napari_unet.core.io import atomic_write, check_writable_folder, write_labels_tiff

    if not names:
        raise NapariUnetError(
            "There is nothing to export: pick Image + Labels pairs (or train once with "
            "corrections) first."
        )
    if not len(names) == len(images) == len(labels):
        raise NapariUnetError(
            f"{len(names)} names, {len(images)} images and {len(labels)} labels: one each."
        )
    config.validate()
    for name, img, lab in zip(names, images, labels, strict=True):
        if np.asarray(lab).dtype.kind not in "biu":
            raise NapariUnetError(f"The labels of {name!r} are not whole numbers.")
        if np.asarray(lab).size and np.asarray(lab).min() < 0:
            raise NapariUnetError(f"The labels of {name!r} hold negative values.")
        if np.asarray(img).ndim < 2:
            raise NapariUnetError(f"The image {name!r} is not an image (shape {img.shape}).")
    folder = Path(folder).expanduser()
    stems = safe_stems(names)
    image_files = [folder / "images" / f"{s}.tif" for s in stems]
    label_files = [folder / "labels" / f"{s}_labels.tif" for s in stems]
    extra = [folder / CONFIG, folder / SCRIPT] + ([folder / START_MODEL] if start_model else [])
    targets = image_files + label_files + extra
    clash = [t for t in targets if t.exists()]
    if clash:
        raise NapariUnetError(
            f"{folder} already holds {clash[0].relative_to(folder)}"
            + (f" and {len(clash) - 1} other file(s)" if len(clash) > 1 else "")
            + "; choose an empty folder (nothing is overwritten)."
        )
    check_writable_folder(folder)
    import tifffile

    written: list[Path] = []
    for path, img in zip(image_files, images, strict=True):
        with atomic_write(path) as tmp:
            tifffile.imwrite(tmp, np.asarray(img), compression="zlib")
        written.append(path)
    for path, lab in zip(label_files, labels, strict=True):
        written.append(write_labels_tiff(path, np.asarray(lab)))
    settings = config.to_dict()
    settings.pop("checkpoint_path", None)
    settings = {
        "_comment": "napari-unet training settings from the Train widget; "
        "use with: napari-unet train --config train_config.json",
        **settings,
    }
    with atomic_write(folder / CONFIG) as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    written.append(folder / CONFIG)
    if start_model is not None:
        written.append(save_checkpoint(start_model, folder / START_MODEL, overwrite=False))
    text, command = _script(len(names), config, start_model is not None)
    with atomic_write(folder / SCRIPT) as tmp:
        tmp.write_text(text, encoding="utf-8")
    (folder / SCRIPT).chmod(0o755)
    written.append(folder / SCRIPT)
    return ExportSummary(folder=folder, files=written, command=command)
