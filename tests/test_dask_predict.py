"""Prediction as dask tasks equals whole-image prediction, objects across block borders included."""

import numpy as np
import pytest
import tifffile
from _synthetic import nuclei_image

from napari_unet.cli import main
from napari_unet.core.checkpoint import save_checkpoint
from napari_unet.core.dask_predict import open_zarr_image, predict_to_zarr
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.predict import PredictConfig, predict
from napari_unet.core.train import TrainConfig, train

zarr = pytest.importorskip("zarr")

CFG = PredictConfig(tile_size=64, overlap=16, device="cpu")
BLOCK, MARGIN = 96, 40


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pairs = [nuclei_image(seed=s) for s in range(4)]
    cfg = TrainConfig(
        epochs=6,
        lr=3e-3,
        depth=2,
        base_channels=8,
        patch_size=64,
        batch_size=4,
        steps_per_epoch=10,
        device="cpu",
        val_fraction=0.0,
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: 1 thread is as fast, and far faster on a busy CPU
    try:
        r = train([p[0] for p in pairs], [p[1] for p in pairs], cfg)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_checkpoint(r.bundle, path)
    return r.bundle, path


def one_to_one(a: np.ndarray, b: np.ndarray) -> bool:
    """True if the labelings are equal up to renumbering (background included)."""
    if ((a > 0) != (b > 0)).any():
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def crossing_objects(labels: np.ndarray, block: int) -> int:
    """Objects having pixels on both sides of a block border (rows or columns)."""
    n = 0
    for ids in np.unique(labels)[1:]:
        ys, xs = np.nonzero(labels == ids)
        n += int(ys.min() // block != ys.max() // block or xs.min() // block != xs.max() // block)
    return n


def test_blocks_on_a_local_cluster_equal_predict(model, tmp_path):
    distributed = pytest.importorskip("distributed")
    bundle, _ = model
    img, _ = nuclei_image(shape=(300, 260), n=120, seed=3)
    ref = predict(bundle, img, config=CFG)
    assert crossing_objects(ref.labels, BLOCK) >= 5  # the test exercises the borders
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        s = predict_to_zarr(
            bundle, img, tmp_path / "out.zarr", config=CFG, block_size=BLOCK, margin=MARGIN
        )
    g = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    prob = g["probabilities"][:]
    for k, name in enumerate(bundle.outputs):
        np.testing.assert_allclose(prob[k], ref.probabilities[name], atol=1e-5)
    lab = g["labels"][:]
    assert lab.dtype == np.uint32 and lab.shape == img.shape
    assert one_to_one(ref.labels, lab)
    assert s.n_objects == int(ref.labels.max()) == len(np.unique(lab)) - 1
    assert sorted(np.unique(lab)[1:]) == list(range(1, s.n_objects + 1))
    assert s.n_blocks == 9 and s.n_cut == 0


def test_stack_and_boundary_split_equal_predict(model, tmp_path):
    bundle, _ = model
    stack = np.stack([nuclei_image(shape=(200, 170), n=60, seed=s)[0] for s in (5, 6)])
    cfg = PredictConfig(tile_size=64, overlap=16, device="cpu", split_method="boundary")
    ref = predict(bundle, stack, config=cfg, axes="TYX")  # zarr input: plane by plane
    s = predict_to_zarr(
        bundle,
        stack,
        tmp_path / "s.zarr",
        config=cfg,
        block_size=BLOCK,
        margin=MARGIN,
        scheduler="threads",
    )
    lab = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["labels"][:]
    assert lab.shape == stack.shape
    assert one_to_one(ref.labels, lab)  # ids unique across slices too
    assert s.n_objects == int(ref.labels.max())


def test_clumps_wider_than_the_margin_are_reported(model, tmp_path):
    bundle, _ = model
    img = np.full((200, 200), 0.1, np.float32)
    img[20:180, 90:110] = 0.9  # one bar, 160 px long, across two block borders
    s = predict_to_zarr(
        bundle, img, tmp_path / "b.zarr", config=CFG, block_size=64, margin=16, scheduler="sync"
    )
    assert s.n_cut >= 1


def test_bad_settings_raise(model, tmp_path):
    bundle, _ = model
    img = np.zeros((100, 100), np.float32)
    with pytest.raises(NapariUnetError, match="block_size"):
        predict_to_zarr(bundle, img, tmp_path / "x.zarr", config=CFG, block_size=32)
    with pytest.raises(NapariUnetError, match="margin"):
        predict_to_zarr(bundle, img, tmp_path / "x.zarr", config=CFG, block_size=64, margin=65)
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(NapariUnetError, match="exists"):
        predict_to_zarr(bundle, img, tmp_path / "x.zarr", config=CFG, block_size=64)


def write_ome_zarr(path, data, axes):
    g = zarr.open_group(str(path), mode="w")
    g.create_array("0", data=data, chunks=(1,) * (data.ndim - 2) + (64, 64))
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "channel" if a == "c" else "space"} for a in axes],
            "datasets": [{"path": "0"}],
        }
    ]


def test_cli_predicts_an_ome_zarr(model, tmp_path, capsys):
    bundle, path = model
    img, _ = nuclei_image(shape=(250, 230), n=80, seed=8)
    write_ome_zarr(tmp_path / "big.ome.zarr", img[None], "cyx")
    arr, ch = open_zarr_image(tmp_path / "big.ome.zarr")
    assert arr.shape == (1, 250, 230) and ch == 0
    args = ["predict", "--model", path, "--images", tmp_path / "big.ome.zarr"]
    args += ["--out", tmp_path / "out", "--tile-size", "64", "--overlap", "16"]
    args += ["--block-size", "96", "--block-margin", "40", "--device", "cpu"]
    assert main(list(map(str, args))) == 0
    lab = zarr.open_group(str(tmp_path / "out" / "big.zarr"), mode="r")["labels"][:]
    assert one_to_one(predict(bundle, img, config=CFG).labels, lab)
    capsys.readouterr()
    assert main(list(map(str, args))) == 2  # never overwrites
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-unet: error:") and "exist" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--block-size", "32"], "block_size"),
        (["--block-size", "96", "--block-margin", "200"], "margin"),
        (["--block-margin", "0"], "--block-margin"),
        (["--ids-file", "ids.txt"], "--ids-file"),
    ],
)
def test_cli_zarr_errors_are_one_line(model, tmp_path, capsys, extra, needle):
    _, path = model
    zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(100, 100), dtype="f4")
    args = ["predict", "--model", path, "--images", tmp_path / "a.zarr", "--out", tmp_path / "o"]
    args += ["--tile-size", "64", *extra]
    assert main(list(map(str, args))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-unet: error:") and needle in err and len(err.splitlines()) == 1


def test_cli_folder_on_a_dask_cluster(model, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    bundle, path = model
    folder = tmp_path / "imgs"
    folder.mkdir()
    imgs = [nuclei_image(shape=(120, 100), n=15, seed=s)[0] for s in (20, 21, 22)]
    for i, im in enumerate(imgs):
        tifffile.imwrite(folder / f"im{i}.tif", im)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        args = ["predict", "--model", path, "--images", folder, "--out", tmp_path / "o"]
        args += ["--tile-size", "64", "--overlap", "16", "--device", "cpu"]
        args += ["--scheduler", cluster.scheduler_address]
        assert main(list(map(str, args))) == 0, capsys.readouterr().err
    for i, im in enumerate(imgs):
        got = tifffile.imread(tmp_path / "o" / f"im{i}.tif")
        assert one_to_one(predict(bundle, im, config=CFG).labels, got)


def test_cli_unreachable_scheduler_is_one_line(model, tmp_path, capsys):
    pytest.importorskip("distributed")
    _, path = model
    folder = tmp_path / "imgs"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((64, 64), np.float32))
    args = ["predict", "--model", path, "--images", folder, "--out", tmp_path / "o"]
    args += ["--scheduler", "tcp://127.0.0.1:1"]
    assert main(list(map(str, args))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-unet: error:") and "127.0.0.1:1" in err
    assert len(err.splitlines()) == 1
