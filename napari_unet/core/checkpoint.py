"""Saving and loading models with everything needed to predict, safely.

A checkpoint is a ``torch.save`` file holding only tensors and plain strings:
``{"format": "napari-unet", "format_version": 1, "meta": <JSON text>,
"state_dict": {name: tensor}}``. It is loaded with ``torch.load(...,
weights_only=True)``, PyTorch's restricted unpickler, which refuses any object
that is not a tensor or a primitive container: a file carrying a pickle payload
that would run code is rejected, never executed. Writes are atomic (temporary
file in the same folder, flushed, then renamed over the target).

The weights may be stored as float16 (``save_checkpoint(..., half=True)``, half the
size: the built-in models are); they are loaded as float32. A built-in model's file
(:mod:`napari_unet.core.builtin`) is checked against its index checksum before it is
loaded, and is never written; :func:`install_model` makes a model a built-in one.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from napari_unet.core.errors import CheckpointError, NapariUnetError
from napari_unet.core.io import atomic_write
from napari_unet.core.model import UNet, UNetSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from napari_unet.core.builtin import BuiltinModel

FORMAT = "napari-unet"
FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    """A model with the metadata needed to use it.

    Attributes
    ----------
    model : UNet
    meta : dict
        JSON-able: ``spec`` (architecture), ``outputs`` (names of the output maps),
        ``normalisation``, ``train_config``, ``history``, ``version``.
    """

    model: UNet
    meta: dict

    @property
    def spec(self) -> UNetSpec:
        """The architecture."""
        return self.model.spec

    @property
    def in_channels(self) -> int:
        """Channels the model expects (1 grey, 3 RGB, ...)."""
        return self.spec.in_channels

    @property
    def outputs(self) -> list[str]:
        """Names of the output maps, e.g. ``["foreground", "boundary"]``."""
        return list(self.meta["outputs"])

    @property
    def device(self) -> torch.device:
        """Device the weights are on."""
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> ModelBundle:
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(device)
        return self


def new_bundle(spec: UNetSpec, meta: dict) -> ModelBundle:
    """Create a freshly initialised model with ``meta`` (``spec`` is filled in)."""
    meta = dict(meta)
    meta["spec"] = spec.to_dict()
    return ModelBundle(UNet(spec), meta)


def _payload(bundle: ModelBundle, half: bool = False) -> dict:
    from napari_unet import __version__

    meta = dict(bundle.meta)
    meta["spec"] = bundle.spec.to_dict()
    meta["version"] = __version__
    state = {k: v.detach().to("cpu").clone() for k, v in bundle.model.state_dict().items()}
    if half:
        for k, v in state.items():
            if v.is_floating_point():
                state[k] = v.to(torch.float16)
                if not bool(torch.isfinite(state[k]).all()) and bool(torch.isfinite(v).all()):
                    raise NapariUnetError(
                        f"the weights {k!r} do not fit in float16 (values up to "
                        f"{float(v.abs().max()):.3g}); save the model without half=True."
                    )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": json.dumps(meta),
        "state_dict": state,
    }


def save_checkpoint(
    bundle: ModelBundle, path: str | Path, *, overwrite: bool = True, half: bool = False
) -> Path:
    """Write ``bundle`` to ``path`` atomically.

    Parameters
    ----------
    bundle : ModelBundle
    path : str or Path
    overwrite : bool
        When False, an existing file is never replaced.
    half : bool
        Store the floating-point weights as float16 (half the file size; they are
        loaded as float32, the predictions barely differ).

    Returns
    -------
    Path

    Raises
    ------
    NapariUnetError
        ``path`` exists (without ``overwrite``) or is a built-in model's file, which is
        never written.
    """
    from napari_unet.core.builtin import check_not_builtin

    path = Path(path)
    check_not_builtin(path)
    if path.exists() and not overwrite:
        raise NapariUnetError(f"{path} exists; choose another name or allow overwriting.")
    return _write_checkpoint(bundle, path, half=half)


def _write_checkpoint(bundle: ModelBundle, path: Path, *, half: bool = False) -> Path:
    """Write ``bundle`` to ``path`` atomically, whatever is there (no checks)."""
    buf = io.BytesIO()
    torch.save(_payload(bundle, half=half), buf)
    with atomic_write(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    return path


def _check_meta(path: Path, meta: dict, spec: UNetSpec) -> None:
    """Refuse a model whose outputs or normalisation cannot be used (an edited file)."""
    from napari_unet.core.data import Normalisation

    outputs = meta.get("outputs")
    if (
        not isinstance(outputs, list)
        or len(outputs) != spec.out_channels
        or not all(isinstance(o, str) for o in outputs)
    ):
        raise CheckpointError(
            f"{path} is a napari-unet model whose metadata is damaged: 'outputs' should name "
            f"its {spec.out_channels} output map(s), got {outputs!r}. Re-save it from "
            "napari-unet or train it again."
        )
    norm = meta.get("normalisation", {})
    try:
        if not isinstance(norm, dict):
            raise TypeError(f"{norm!r} is not a mapping")
        checked = Normalisation.from_dict(norm)
        if not 0 <= checked.low < checked.high <= 100:
            raise ValueError(f"percentiles {checked.low}, {checked.high}")
    except (TypeError, ValueError, NapariUnetError) as exc:
        raise CheckpointError(
            f"{path} is a napari-unet model whose metadata is damaged: its 'normalisation' "
            f"cannot be used ({exc}). Re-save it from napari-unet or train it again."
        ) from exc


#: First bytes of files people pick by mistake instead of a model.
_MAGIC = {
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"II+\x00": "a BigTIFF image",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"BM": "a BMP image",
    b"\x89HDF": "an HDF5 file (Keras / ilastik?)",
    b"%PDF": "a PDF document",
}


def _foreign_kind(path: Path) -> str | None:
    """Return what `path` is when its first bytes rule out a PyTorch file, else None."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if not head:
        return "an empty file"
    return None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a model saved by :func:`save_checkpoint` without executing code from the file.

    Parameters
    ----------
    path : str or Path
    device : str or torch.device
        Where to put the weights ("auto" picks CUDA, MPS or CPU).

    Returns
    -------
    ModelBundle
        In eval mode.

    Raises
    ------
    CheckpointError
        Missing, truncated, foreign, unsafe or incompatible file, or a built-in model
        whose file does not match its checksum.
    """
    from napari_unet.core.builtin import verify_builtin
    from napari_unet.core.device import select_device

    path = Path(path)
    if not path.is_file():
        if path.is_symlink():
            raise CheckpointError(
                f"Model file {path} is a symbolic link that leads to no file (its target is "
                "missing, or the link points to itself or around in a loop)."
            )
        if path.is_dir():
            raise CheckpointError(
                f"{path} is a folder, not a model file; choose the .pt file saved by napari-unet."
            )
        raise CheckpointError(f"Model file {path} does not exist.")
    if not os.access(path, os.R_OK):
        raise CheckpointError(
            f"cannot read the model file {path}: permission denied; make it readable "
            "(e.g. chmod u+r) or copy it somewhere you can read it."
        )
    kind = _foreign_kind(path)
    if kind is not None:
        raise CheckpointError(
            f"{path} is {kind}, not a model file; choose a .pt file saved by napari-unet."
        )
    builtin = verify_builtin(path)  # a damaged built-in file: say so, and reinstall
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than weights (possibly code); it was not loaded. "
            "Only load model files written by napari-unet."
        ) from e
    except Exception as e:  # noqa: BLE001 - garbage bytes make the unpickler raise anything
        raise CheckpointError(
            f"{path} is not a readable napari-unet model (truncated or not a PyTorch file): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a napari-unet model (no napari-unet header); "
            "train a model with napari-unet or pick another file."
        )
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-unet (file format {version}, this version "
            f"reads up to {FORMAT_VERSION}); upgrade napari-unet to load it."
        )
    try:
        meta = json.loads(obj["meta"])
        spec = UNetSpec.from_dict(meta["spec"])
        model = UNet(spec)
        state = obj["state_dict"]
        if isinstance(state, dict):  # float16 weights (save_checkpoint(half=True)) -> float32
            state = {
                k: v.float() if isinstance(v, torch.Tensor) and v.dtype == torch.float16 else v
                for k, v in state.items()
            }
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is a napari-unet model whose contents are damaged or incompatible: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    _check_meta(path, meta, spec)
    if builtin is not None:  # fine-tunes inherit it: they can replay its training data
        meta["origin"] = builtin.name
        # retrains of it (not a Train run from it) stay within reach of its weights
        meta["retrain_base"] = {"name": builtin.name, "sha256": builtin.sha256}
    model.eval()
    bundle = ModelBundle(model, meta)
    return bundle.to(select_device(device) if isinstance(device, str) else device)


def install_model(
    source: str | os.PathLike[str],
    name: str,
    title: str,
    description: str = "",
    *,
    folder: str | Path | None = None,
    half: bool = True,
    replay: Sequence[str] = (),
) -> BuiltinModel:
    """Copy a trained model into a models folder and list it in the folder's index.

    The model is loaded safely and written again (float16 weights with `half`), the
    entry (channels and object diameter from the model, the file's SHA-256) replaces
    one of the same name in ``builtin.json`` or is appended. This is how built-in
    models are added to the package (``folder`` =
    :data:`napari_unet.core.builtin.PACKAGE_MODELS_DIR`).

    Parameters
    ----------
    source : str or path-like
        A model file saved by napari-unet.
    name, title, description : str
        The entry's name (also the file name, ``<name>.pt``), title and description.
    folder : str or Path, optional
        The models folder (default :func:`napari_unet.core.builtin.models_dir`); made if
        missing.
    half : bool
        Store the weights as float16 (half the size; loaded as float32).
    replay : sequence of str
        Shipped samples that were among the model's training images, replayed when it
        is fine-tuned (:attr:`napari_unet.core.builtin.BuiltinModel.replay`).

    Returns
    -------
    BuiltinModel
    """
    from napari_unet.core.builtin import add_to_index, index_entry, models_dir

    folder = Path(folder) if folder is not None else models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    bundle = load_checkpoint(source, device="cpu")
    file = f"{name}.pt"
    diameter = bundle.meta.get("object_diameter")
    entry = index_entry(
        {
            "name": name,
            "title": title,
            "file": file,
            "channels": bundle.in_channels,
            "description": description,
            "object_diameter": float(diameter) if diameter else None,
            "replay": list(replay),
        },
        folder,
    )  # checked before anything is written
    _write_checkpoint(bundle, folder / file, half=half)
    return add_to_index(entry)
