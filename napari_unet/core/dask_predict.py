"""Prediction as dask tasks: images larger than memory, and folders on a cluster.

:func:`predict_to_zarr` predicts a (zarr, OME-Zarr, dask or numpy) image block by
block and writes the probabilities and the labels into a zarr group. It gives
the labels of :func:`napari_unet.core.predict.predict` (up to renumbering), also
for objects that cross block borders:

1. **Probabilities.** The image is cut into blocks of ``block_size`` pixels,
   each read with an overlap of one tile (``dask.array.overlap``). A block
   predicts exactly the tiles of the whole-image tile grid that touch it and
   blends them with the same weights, in the same order, as the whole-image
   prediction, so the probabilities equal those of ``predict`` (to float
   rounding of the network on different batches, about 1e-6).
2. **Labels, pass 1.** Each block labels its probabilities with ``margin``
   pixels of context (``labels_from_output``, as ``predict`` does). The
   labelling acts on each 4-connected clump of ``foreground > threshold`` on
   its own (threshold, hole filling, watershed splitting are all per clump),
   so a clump that lies inside a block's context gets the same objects as in
   the whole image. A clump belongs to the block that holds its first pixel
   (raster order). Pass 1 returns, per block, only the first pixel and the
   object count of each clump it owns: a few bytes per clump.
3. **Numbering.** The clumps are sorted by their first pixel (global raster
   order) and numbered consecutively: every object gets one id, whatever
   block it lies in.
4. **Labels, pass 2.** Each block labels its context again and writes, inside
   its own core, every clump it sees with the id of that clump's owner. An
   object across a border is thus painted by both blocks with the same id.

A clump wider than ``margin`` pixels cannot be seen whole by its owner: it is
counted in :attr:`DaskPredictSummary.n_cut` (and the command line warns);
raise ``margin`` for such images.

Memory per task is bounded by the block size (with its overlap), not by the
image; the labels of pass 1 are never kept.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.data import Normalisation
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.norm_sets import choose as choose_statistics
from napari_unet.core.predict import (
    SPLIT_METHODS,
    ObjectScale,
    PredictConfig,
    TileGrid,
    _reflect,
    _Repeat,
    _scaled_shape,
    infer_tiles,
    labels_from_output,
    object_scale,
    prepare_image,
)

if TYPE_CHECKING:
    from napari_unet.core.checkpoint import ModelBundle

__all__ = [
    "DaskPredictSummary",
    "predict_to_zarr",
    "open_zarr_image",
    "is_zarr_path",
    "predict_files_dask",
]

_FOUR = ndi.generate_binary_structure(2, 1)

#: Held while a worker moves the shared model to its device: tasks running in threads
#: of one process share the model, and moving it while another thread runs it crashes.
_MOVE_LOCK = threading.Lock()


def _prepare_model(bundle: ModelBundle, device) -> None:
    """Put the model on ``device`` in eval mode (channels-last except on MPS), once."""
    import torch

    want_cl = device.type != "mps"
    first = next(p for p in bundle.model.parameters() if p.ndim == 4)
    ready = bundle.device == device and (
        first.is_contiguous(memory_format=torch.channels_last) or not want_cl
    )
    if ready:
        return
    with _MOVE_LOCK:
        first = next(p for p in bundle.model.parameters() if p.ndim == 4)
        if bundle.device != device:
            bundle.to(device)
        if want_cl and not first.is_contiguous(memory_format=torch.channels_last):
            bundle.model.to(memory_format=torch.channels_last)
        bundle.model.eval()


@dataclass
class DaskPredictSummary:
    """What :func:`predict_to_zarr` wrote.

    Attributes
    ----------
    path : Path
        The zarr group holding ``labels`` and ``probabilities``.
    shape : tuple of int
        Shape of the labels, ``(..., Y, X)``.
    n_objects : int
        Objects found (ids are 1..n_objects).
    n_blocks : int
        Blocks (tasks per stage).
    n_cut : int
        Clumps wider than ``margin``: they may be cut at a block border.
    seconds : float
    outputs : list of str
    scale : ObjectScale
        The object diameter used and the factor the image was resized by for the
        network (see :func:`napari_unet.core.predict.object_scale`).
    """

    path: Path
    shape: tuple[int, ...]
    n_objects: int
    n_blocks: int
    n_cut: int
    seconds: float
    outputs: list[str] = field(default_factory=list)
    scale: ObjectScale = field(default_factory=ObjectScale)


def is_zarr_path(path: str | Path) -> bool:
    """Return True if ``path`` is a folder holding a zarr array or group (v2 or v3)."""
    p = Path(path)
    return p.is_dir() and any((p / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))


def open_zarr_image(path: str | Path) -> tuple[object, int | None]:
    """Open a zarr array or an OME-Zarr image lazily.

    Parameters
    ----------
    path : str or Path
        A zarr array, or a group with OME-NGFF ``multiscales`` metadata (its
        first, full-resolution dataset is used).

    Returns
    -------
    array : zarr.Array
    channel_axis : int or None
        The axis of type "channel" from the OME-Zarr axes, if any.

    Raises
    ------
    NapariUnetError
        If ``path`` is not a zarr array or OME-Zarr image.
    """
    import zarr

    p = Path(path)
    if not is_zarr_path(p):
        raise NapariUnetError(f"{p} is not a zarr array or group (no .zarray, .zgroup, zarr.json).")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable stores
        raise NapariUnetError(f"cannot open {p} as zarr: {exc}") from exc
    if isinstance(node, zarr.Array):
        return node, None
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        arrays = sorted(name for name, _ in node.arrays())
        raise NapariUnetError(
            f"{p} is a zarr group without OME-Zarr 'multiscales' metadata; give one of its "
            f"arrays instead, e.g. {p / arrays[0]}"
            if arrays
            else f"{p} is an empty zarr group."
        )
    first = ms[0]
    arr = node[first["datasets"][0]["path"]]
    axes = first.get("axes") or []
    kinds = [a.get("type") if isinstance(a, dict) else None for a in axes]
    ch = kinds.index("channel") if "channel" in kinds else None
    return arr, ch


def _axis_chunks(n: int, block: int, minimum: int) -> tuple[int, ...]:
    """Chunks of length ``block`` along an axis of length ``n``, none shorter than ``minimum``."""
    if n <= max(block, minimum):
        return (n,)
    chunks = [block] * (n // block)
    rest = n - block * len(chunks)
    if rest:
        if rest < minimum:
            chunks[-1] += rest
        else:
            chunks.append(rest)
    return tuple(chunks)


def _starts(chunks: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)


def _predict_block(
    block: np.ndarray,
    origin: tuple[int, int],
    core: tuple[int, int, int, int],
    grid: TileGrid,
    bundle: ModelBundle,
    lo: np.ndarray,
    hi: np.ndarray,
    norm: Normalisation,
    config: PredictConfig,
) -> np.ndarray:
    """Probabilities ``(K, y1 - y0, x1 - x0)`` of the core of one block (C, Yb, Xb)."""
    from napari_unet.core.device import select_device

    device = select_device(config.device)
    _prepare_model(bundle, device)
    model = bundle.model
    y0, y1, x0, x1 = core
    oy, ox = origin
    K = model.spec.out_channels
    th, tw = grid.th, grid.tw
    acc = np.zeros((K, y1 - y0, x1 - x0), np.float32)
    wsum = np.zeros((y1 - y0, x1 - x0), np.float32)
    ty = [t for t in grid.ys if t < y1 and t + th > y0]
    tx = [t for t in grid.xs if t < x1 and t + tw > x0]
    bs = max(1, int(config.batch_size))
    for ty0 in ty:  # same order as the whole-image strips: rows, then columns
        rows = _reflect(np.arange(ty0, ty0 + th), grid.H) - oy
        tiles = []
        for tx0 in tx:
            cols = _reflect(np.arange(tx0, tx0 + tw), grid.W) - ox
            tiles.append((tx0, block[:, rows[:, None], cols[None, :]].astype(np.float32)))
        for b in range(0, len(tiles), bs):
            chunk = tiles[b : b + bs]
            prob = infer_tiles(
                model,
                [t for _, t in chunk],
                norm,
                lo,
                hi,
                device,
                flips=config.flips,
                precision=config.precision,
            )
            for (tx0, _), p in zip(chunk, prob, strict=True):
                # the part of this tile inside the core
                a0, a1 = max(ty0, y0), min(ty0 + th, y1)
                b0, b1 = max(tx0, x0), min(tx0 + tw, x1)
                wt = grid.weight[a0 - ty0 : a1 - ty0, b0 - tx0 : b1 - tx0]
                acc[:, a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] += (
                    p[:, a0 - ty0 : a1 - ty0, b0 - tx0 : b1 - tx0] * wt
                )
                wsum[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] += wt
    return acc / wsum


def _clumps(
    prob: np.ndarray, outputs: list[str], config: PredictConfig, pixel_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels of a context region, its 4-connected foreground clumps and their count."""
    lab = labels_from_output(prob, outputs, config, pixel_scale=pixel_scale)
    clumps, n = ndi.label(prob[0] > config.threshold, structure=_FOUR)
    return lab, clumps, int(n)


def _clump_table(
    lab: np.ndarray,
    clumps: np.ndarray,
    n: int,
    origin: tuple[int, int],
    interior: tuple[bool, bool, bool, bool],
    width: int,
    base_key: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per clump: global key of its first pixel, object count, completeness, and per object.

    Returns ``key (n+1,)``, ``count (n+1,)``, ``complete (n+1,)``, ``obj_clump``
    and ``obj_rank`` (indexed by label value: the clump of each object and its
    rank inside the clump, by first pixel).
    """
    h, w = clumps.shape
    flat = clumps.ravel()
    px = np.flatnonzero(flat)
    first = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, flat[px], px)
    fy, fx = np.divmod(first[1:], w)
    key = np.full(n + 1, -1, np.int64)
    key[1:] = base_key + (fy + origin[0]) * width + (fx + origin[1])
    complete = np.ones(n + 1, bool)
    top, bottom, left, right = interior  # which sides of the region are block borders
    for side, cut in (
        (clumps[0], top),
        (clumps[-1], bottom),
        (clumps[:, 0], left),
        (clumps[:, -1], right),
    ):
        if cut:
            complete[side[side > 0]] = False
    # objects -> clumps (an object's mask pixels lie in one clump; filled holes do not count)
    lflat = lab.ravel()
    both = np.flatnonzero((lflat > 0) & (flat > 0))
    n_lab = int(lflat.max()) if lflat.size else 0
    obj_clump = np.zeros(n_lab + 1, np.int64)
    obj_clump[lflat[both]] = flat[both]
    obj_first = np.full(n_lab + 1, np.iinfo(np.int64).max, np.int64)
    lpx = np.flatnonzero(lflat)
    np.minimum.at(obj_first, lflat[lpx], lpx)
    present = np.zeros(n_lab + 1, bool)
    present[lflat[lpx]] = True
    present[0] = False
    count = np.bincount(obj_clump[present], minlength=n + 1)[: n + 1]
    obj_rank = np.zeros(n_lab + 1, np.int64)
    ids = np.flatnonzero(present)
    order = ids[np.lexsort((obj_first[ids], obj_clump[ids]))]
    if order.size:
        cl = obj_clump[order]
        starts = np.r_[0, np.flatnonzero(np.diff(cl)) + 1]
        rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
        obj_rank[order] = rank
    return key, count, complete, obj_clump, obj_rank


@dataclass
class _LabelGeometry:
    H: int
    W: int
    lead: tuple[int, ...]
    ystarts: np.ndarray
    xstarts: np.ndarray
    margin_y: int
    margin_x: int
    pixel_scale: float = 1.0  # image pixels per model pixel (labels_from_output)

    def region(self, loc: tuple[int, ...]):
        """Slice index, core box, region origin and interior flags of a block."""
        lead_idx = tuple(loc[1:-2])
        iy, ix = loc[-2], loc[-1]
        y0, y1 = int(self.ystarts[iy]), int(self.ystarts[iy + 1])
        x0, x1 = int(self.xstarts[ix]), int(self.xstarts[ix + 1])
        oy, ox = max(0, y0 - self.margin_y), max(0, x0 - self.margin_x)
        ey, ex = min(self.H, y1 + self.margin_y), min(self.W, x1 + self.margin_x)
        interior = (oy > 0, ey < self.H, ox > 0, ex < self.W)
        slice_no = int(np.ravel_multi_index(lead_idx, self.lead)) if self.lead else 0
        return slice_no, (y0, y1, x0, x1), (oy, ox), interior

    def base_key(self, slice_no: int) -> int:
        return slice_no * self.H * self.W


def _label_pass1(block: np.ndarray, loc, geom: _LabelGeometry, outputs, config) -> np.ndarray:
    """Owned clumps of one block: rows of (key, object count, complete)."""
    slice_no, (y0, y1, x0, x1), (oy, ox), interior = geom.region(loc)
    prob = block.reshape((block.shape[0],) + block.shape[-2:])
    lab, clumps, n = _clumps(prob, outputs, config, geom.pixel_scale)
    key, count, complete, _, _ = _clump_table(
        lab, clumps, n, (oy, ox), interior, geom.W, geom.base_key(slice_no)
    )
    rel = key[1:] - geom.base_key(slice_no)
    fy, fx = np.divmod(rel, geom.W)
    owned = (fy >= y0) & (fy < y1) & (fx >= x0) & (fx < x1) & (count[1:] > 0)
    return np.stack([key[1:][owned], count[1:][owned], complete[1:][owned].astype(np.int64)], 1)


def _label_pass2(
    block: np.ndarray,
    keys: np.ndarray,
    bases: np.ndarray,
    geom: _LabelGeometry,
    outputs,
    config,
    block_info=None,
) -> np.ndarray:
    """Labels of one block's core with the global ids of the clumps it shows."""
    loc = block_info[0]["chunk-location"]
    slice_no, (y0, y1, x0, x1), (oy, ox), interior = geom.region(loc)
    prob = block.reshape((block.shape[0],) + block.shape[-2:])
    lab, clumps, n = _clumps(prob, outputs, config, geom.pixel_scale)
    key, _, _, obj_clump, obj_rank = _clump_table(
        lab, clumps, n, (oy, ox), interior, geom.W, geom.base_key(slice_no)
    )
    pos = np.searchsorted(keys, key)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    found = (keys[pos] == key) if len(keys) else np.zeros_like(key, bool)
    clump_base = np.where(found, bases[pos] if len(keys) else 0, 0)
    lut = np.where((obj_clump > 0) & found[obj_clump], clump_base[obj_clump] + obj_rank, 0).astype(
        np.uint32
    )
    lut[0] = 0
    core = lab[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    out = lut[core]
    return out.reshape((1,) * len(geom.lead) + out.shape)


def _resize_dask(arr, out_hw: tuple[int, int], block: int):
    """Resize the last two axes of a dask array to ``out_hw``, block by block.

    Each output block reads the source window it needs (with the anti-aliasing blur's
    reach) and gives exactly the pixels of a whole-image
    :func:`napari_unet.core.size.resize_yx`. Output blocks are ``block`` pixels wide.
    """
    import dask.array as da

    from napari_unet.core.size import _axis_plan, resize_window

    in_hw = (int(arr.shape[-2]), int(arr.shape[-1]))
    ych, xch = _axis_chunks(out_hw[0], block, 1), _axis_chunks(out_hw[1], block, 1)
    ys, xs = _starts(ych), _starts(xch)
    rows = []
    for iy in range(len(ych)):
        row = []
        for ix in range(len(xch)):
            rs = slice(int(ys[iy]), int(ys[iy + 1]))
            cs = slice(int(xs[ix]), int(xs[ix + 1]))
            y0, y1 = _axis_plan(in_hw[0], out_hw[0], rs.start, rs.stop)[:2]
            x0, x1 = _axis_plan(in_hw[1], out_hw[1], cs.start, cs.stop)[:2]
            src = arr[..., y0:y1, x0:x1]
            src = src.rechunk(src.chunks[:-2] + ((y1 - y0,), (x1 - x0,)))

            def resize(win, rs=rs, cs=cs, y0=y0, x0=x0):
                def read(a, b):
                    return win[..., a.start - y0 : a.stop - y0, b.start - x0 : b.stop - x0]

                return resize_window(read, in_hw, out_hw, rs, cs)

            out_chunks = src.chunks[:-2] + ((rs.stop - rs.start,), (cs.stop - cs.start,))
            row.append(src.map_blocks(resize, chunks=out_chunks, dtype=np.float32))
        rows.append(row)
    return da.block(rows)


def predict_to_zarr(
    bundle: ModelBundle,
    image,
    out: str | Path,
    *,
    channel_axis: int | None = None,
    config: PredictConfig | None = None,
    block_size: int = 1024,
    margin: int = 128,
    overwrite: bool = False,
    scheduler: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> DaskPredictSummary:
    """Predict labels of a (large) image as dask tasks into a zarr group.

    Parameters
    ----------
    bundle : ModelBundle
        A trained model.
    image : (..., M, N) array-like
        zarr, dask or numpy; leading axes (Z, T) are predicted slice by slice.
    out : str or Path
        The zarr group to write: ``labels`` ``(..., M, N)`` uint32 and
        ``probabilities`` ``(K, ..., M, N)`` float32, chunked by block.
    channel_axis : int or None
        Axis of the channels, or None for a single-channel image.
    config : PredictConfig, optional
        Tiling and labelling settings (as for :func:`predict`). With a model trained
        with object size normalisation the image is resized for the network as
        ``config.diameter`` says (block by block), and the probabilities back; the
        labels are made at the image's size.
    block_size : int
        Edge of the blocks (tasks), in pixels; at least the tile size.
    margin : int
        Context, in pixels, around a block when labelling; must exceed the
        widest clump of touching objects, and be at most ``block_size``.
    overwrite : bool
        Replace an existing ``out``.
    scheduler : str, optional
        A dask scheduler name ("threads", "synchronous", "processes"); None uses
        the current default (a ``distributed.Client`` when one is active).
    progress : callable, optional
        Called with a one-line message at each stage.

    Returns
    -------
    DaskPredictSummary

    Raises
    ------
    NapariUnetError
        For bad settings, an existing ``out`` without ``overwrite``, or an
        image that does not fit the model.
    """
    import dask
    import dask.array as da
    import torch
    import zarr

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    config = config or PredictConfig.for_model(bundle)
    if config.split_method not in SPLIT_METHODS:
        raise NapariUnetError(
            f"split_method must be one of {SPLIT_METHODS}, got {config.split_method!r}."
        )
    out = Path(out)
    if out.exists() and not overwrite:
        raise NapariUnetError(f"{out} exists; pass --overwrite or choose another output.")
    if not hasattr(image, "shape") or not hasattr(image, "ndim"):
        image = np.asarray(image)
    if not isinstance(image, da.Array):
        chunks = getattr(image, "chunks", None)
        if not (isinstance(chunks, tuple) and all(isinstance(c, int) for c in chunks)):
            chunks = "auto"
        image = da.from_array(image, chunks=chunks)
    img = prepare_image(image, bundle.in_channels, channel_axis)
    if isinstance(img, _Repeat):
        img = da.concatenate([img.img] * img.n, axis=0)
    norm = Normalisation.from_dict(bundle.meta.get("normalisation", {}))
    config.validate()
    scale = object_scale(bundle, img, config)
    lead = tuple(int(s) for s in img.shape[1:-2])
    H, W = int(img.shape[-2]), int(img.shape[-1])
    Hs, Ws = _scaled_shape((H, W), scale.factor)  # what the network sees
    grid = TileGrid.for_slice(Hs, Ws, config, bundle.spec.multiple)  # the whole image's
    if int(block_size) < grid.tile:
        raise NapariUnetError(
            f"block_size ({block_size}) must be at least the tile size ({grid.tile})."
        )
    if not 0 < int(margin) <= int(block_size):
        raise NapariUnetError(
            f"margin must be between 1 and block_size ({block_size}), got {margin}."
        )
    block, margin = int(block_size), int(margin)
    lead_ch = tuple((1,) * n for n in lead)
    lo, hi = norm.ranges(img)  # the same subsample as predict() reads
    # a retrain of a built-in model: closer to the built-in model for images like its
    # data, chosen as predict() does
    bundle, _ = choose_statistics(bundle, img, lo, hi, norm, scale.factor)
    ych = _axis_chunks(H, block, max(grid.th, margin))  # label blocks (image pixels)
    xch = _axis_chunks(W, block, max(grid.tw, margin))
    if scale.factor != 1:
        img = _resize_dask(
            img.rechunk(((img.shape[0],),) + lead_ch + img.chunks[-2:]), (Hs, Ws), block
        )
    ych_s = _axis_chunks(Hs, block, max(grid.th, margin))  # network blocks
    xch_s = _axis_chunks(Ws, block, max(grid.tw, margin))
    img = img.rechunk(((img.shape[0],),) + lead_ch + (ych_s, xch_s))
    ystarts, xstarts = _starts(ych), _starts(xch)
    ystarts_s, xstarts_s = _starts(ych_s), _starts(xch_s)
    K = bundle.spec.out_channels
    outputs = bundle.outputs
    n_blocks = int(np.prod(lead, dtype=np.int64)) * len(ych_s) * len(xch_s)
    bundle = copy.deepcopy(bundle)  # tasks move their copy to the workers' device
    _prepare_model(bundle, torch.device("cpu"))
    b_bundle = dask.delayed(bundle, pure=True)

    # --- probabilities, block by block, with one tile of input overlap
    dy = grid.th if len(ych_s) > 1 else 0
    dx = grid.tw if len(xch_s) > 1 else 0
    nd = img.ndim
    depth = {nd - 2: dy, nd - 1: dx}
    img_o = da.overlap.overlap(img, depth=depth, boundary={nd - 2: "none", nd - 1: "none"})

    def prob_block(blk, bnd, block_info=None):
        loc = block_info[0]["chunk-location"]
        iy, ix = loc[-2], loc[-1]
        y0, y1 = int(ystarts_s[iy]), int(ystarts_s[iy + 1])
        x0, x1 = int(xstarts_s[ix]), int(xstarts_s[ix + 1])
        oy, ox = max(0, y0 - dy), max(0, x0 - dx)
        plane = blk.reshape((blk.shape[0],) + blk.shape[-2:])
        p = _predict_block(plane, (oy, ox), (y0, y1, x0, x1), grid, bnd, lo, hi, norm, config)
        return p.reshape((K,) + (1,) * len(lead) + p.shape[-2:])

    probs = da.map_blocks(
        prob_block,
        img_o,
        b_bundle,
        chunks=((K,),) + lead_ch + (ych_s, xch_s),
        dtype=np.float32,
        meta=np.empty((0,) * nd, np.float32),
    )
    if scale.factor != 1:  # back to the image's size
        probs = _resize_dask(probs, (H, W), block).map_blocks(np.clip, 0.0, 1.0, dtype=np.float32)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    root = zarr.open_group(str(out), mode="w-")
    zchunk_lead = (1,) * len(lead)
    zprob = root.create_array(
        "probabilities",
        shape=(K,) + lead + (H, W),
        chunks=(K,) + zchunk_lead + (min(block, H), min(block, W)),
        dtype="float32",
    )
    zlab = root.create_array(
        "labels",
        shape=lead + (H, W),
        chunks=zchunk_lead + (min(block, H), min(block, W)),
        dtype="uint32",
    )
    root.attrs.update(
        {
            "napari_unet": {
                "outputs": outputs,
                "predict_config": config.to_dict(),
                "object_scale": scale.to_dict(),
                "block_size": block,
                "margin": margin,
                "normalisation": {"lo": lo.tolist(), "hi": hi.tolist()},
            }
        }
    )
    say(f"probabilities: {n_blocks} block(s) of up to {block} x {block} pixels")
    # local threads: one network at a time, torch already uses every core for it
    net_opts = {"num_workers": 1} if scheduler == "threads" else {}
    da.store(probs.rechunk(zprob.chunks), zprob, lock=False, scheduler=scheduler, **net_opts)

    # --- labels: pass 1 (clump table), numbering, pass 2 (paint cores)
    P = da.from_zarr(zprob).rechunk(((K,),) + lead_ch + (ych, xch))
    my = margin if len(ych) > 1 else 0
    mx = margin if len(xch) > 1 else 0
    P_o = da.overlap.overlap(
        P, depth={nd - 2: my, nd - 1: mx}, boundary={nd - 2: "none", nd - 1: "none"}
    )
    geom = _LabelGeometry(H, W, lead, ystarts, xstarts, my, mx, 1 / scale.factor)
    say("labels: pass 1 (objects per block)")
    blocks = P_o.to_delayed()
    tasks = [
        dask.delayed(_label_pass1)(blocks[loc], loc, geom, outputs, config)
        for loc in np.ndindex(*blocks.shape)
    ]
    tables = dask.compute(*tasks, scheduler=scheduler)
    table = np.concatenate(tables, 0) if tables else np.zeros((0, 3), np.int64)
    table = table[np.argsort(table[:, 0], kind="stable")]
    keys = table[:, 0].astype(np.int64)
    counts = table[:, 1].astype(np.int64)
    n_cut = int((table[:, 2] == 0).sum())
    bases = (np.cumsum(counts) - counts + 1).astype(np.int64)
    n_objects = int(counts.sum())
    if n_objects >= np.iinfo(np.uint32).max:
        raise NapariUnetError(f"{n_objects} objects do not fit uint32 labels.")
    say(f"labels: pass 2 ({n_objects} objects)")
    d_keys = dask.delayed(keys, pure=True)
    d_bases = dask.delayed(bases, pure=True)
    labels = da.map_blocks(
        _label_pass2,
        P_o,
        d_keys,
        d_bases,
        geom=geom,
        outputs=outputs,
        config=config,
        chunks=lead_ch + (ych, xch),
        drop_axis=0,
        dtype=np.uint32,
        meta=np.empty((0,) * (nd - 1), np.uint32),
    )
    da.store(labels.rechunk(zlab.chunks), zlab, lock=False, scheduler=scheduler)
    root.attrs.update({"n_objects": n_objects, "n_cut": n_cut})
    return DaskPredictSummary(
        path=out,
        shape=lead + (H, W),
        n_objects=n_objects,
        n_blocks=n_blocks,
        n_cut=n_cut,
        seconds=time.perf_counter() - t0,
        outputs=list(outputs),
        scale=scale,
    )


def _predict_one_file(bundle, path: str, target: str, channel_axis, config) -> str:
    from napari_unet.core.io import read_image, write_labels_tiff
    from napari_unet.core.predict import predict

    img = read_image(path)
    bundle = copy.deepcopy(bundle)  # tasks in threads of one worker must not share a model
    res = predict(bundle, img, channel_axis=channel_axis(img.shape), config=config)
    write_labels_tiff(target, res.labels, overwrite=True)
    return target


def predict_files_dask(
    bundle: ModelBundle,
    files: Sequence[Path],
    targets: Sequence[Path],
    *,
    channel_axis: Callable[[tuple[int, ...]], int | None],
    config: PredictConfig | None = None,
    scheduler: str | None = None,
) -> list[str]:
    """Predict many image files as dask tasks (one per file), writing label TIFFs.

    Parameters
    ----------
    bundle : ModelBundle
    files, targets : sequence of Path
        Input images and the label files to write (paths the workers can reach).
    channel_axis : callable
        Maps an image's shape to its channel axis (or None).
    config : PredictConfig, optional
    scheduler : str, optional
        As for :func:`predict_to_zarr`.

    Returns
    -------
    list of str
        The written files.
    """
    import dask

    config = config or PredictConfig.for_model(bundle)
    bundle = copy.deepcopy(bundle).to("cpu")
    d_bundle = dask.delayed(bundle, pure=True)
    tasks = [
        dask.delayed(_predict_one_file, pure=False)(d_bundle, str(f), str(t), channel_axis, config)
        for f, t in zip(files, targets, strict=True)
    ]
    return list(dask.compute(*tasks, scheduler=scheduler))
