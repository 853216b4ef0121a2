"""Distributed training with torchrun (2 CPU processes, gloo); train --config and --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from _synthetic import nuclei_image

from napari_unet.cli import main
from napari_unet.core.checkpoint import load_checkpoint, save_checkpoint
from napari_unet.core.distributed import Distributed
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.metrics import evaluate
from napari_unet.core.predict import PredictConfig, predict
from napari_unet.core.train import TrainConfig, train

TINY = ["--depth", "2", "--base-channels", "8", "--patch-size", "64", "--batch-size", "4"]
TINY_CFG = dict(depth=2, base_channels=8, patch_size=64, batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for s in range(4):
        im, lab = nuclei_image(seed=s)
        tifffile.imwrite(root / "images" / f"s{s}.tif", im)
        tifffile.imwrite(root / "labels" / f"s{s}.tif", lab.astype(np.uint16))
    return root


def torchrun(*args, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["--standalone", "-m", "napari_unet", *map(str, args)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen
    )


def test_from_env(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert Distributed.from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Distributed.from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(NapariUnetError, match="torchrun"):
        Distributed.from_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    d = Distributed.from_env()
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (3, 4, 1, 2)
    assert not d.is_main
    assert d.share(list(range(10))) == [3, 7]
    assert d.share([0, 1]) == [0, 1]  # fewer items than ranks: all, other seeds
    assert d.seed(0) != Distributed(0, 4).seed(0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(NapariUnetError, match="inconsistent"):
        Distributed.from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(NapariUnetError, match="whole number"):
        Distributed.from_env()


@pytest.mark.slow
def test_torchrun_trains_one_model_like_a_single_process(folders, tmp_path):
    out = tmp_path / "ddp.pt"
    args = ["train", "--images", folders / "images", "--labels", folders / "labels"]
    args += ["--out", out, "--epochs", "5", "--steps-per-epoch", "10", "--lr", "0.003"]
    args += ["--val-fraction", "0"]
    args += ["--device", "cpu", *TINY]
    p = torchrun(*args)
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log
    assert "rank 0 of 2" in log and "[rank 1] stopped (epochs) after 50 steps" in log
    ddp = load_checkpoint(out)
    imgs = [nuclei_image(seed=s) for s in range(4)]
    cfg = TrainConfig(epochs=5, steps_per_epoch=10, lr=3e-3, val_fraction=0, **TINY_CFG)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank here; far faster on a busy CPU
    try:
        single = train(
            [a for a, _ in imgs], [b for _, b in imgs], cfg, names=[f"s{s}" for s in range(4)]
        )
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(single.bundle, tmp_path / "single.pt")
    b = load_checkpoint(tmp_path / "single.pt")
    # the same model file: architecture, outputs, normalisation, metadata keys
    assert ddp.meta["spec"] == b.meta["spec"] and ddp.outputs == b.outputs
    assert ddp.meta["normalisation"] == b.meta["normalisation"]
    assert set(ddp.meta) == set(b.meta)
    assert ddp.meta["steps"] == 50 and len(ddp.meta["history"]) == 5
    assert "rank 0 of 2" in ddp.meta["device"]
    img, lab = nuclei_image(seed=11)
    scores = [
        evaluate([lab], [predict(m, img, config=PredictConfig(device="cpu")).labels])
        for m in (ddp, b)
    ]
    assert scores[0]["dice"] > 0.8 and scores[1]["dice"] > 0.8, scores
    assert abs(scores[0]["dice"] - scores[1]["dice"]) < 0.1, scores


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_the_same_step(folders, tmp_path):
    out = tmp_path / "m.pt"
    args = ["train", "--images", folders / "images", "--labels", folders / "labels"]
    args += ["--out", out, "--epochs", "1000", "--steps-per-epoch", "5", "--device", "cpu"]
    p = torchrun(*args, *TINY, start_new_session=True)
    t0 = time.monotonic()
    while not out.exists() and time.monotonic() - t0 < 120 and p.poll() is None:
        time.sleep(0.2)
    assert out.exists(), p.communicate()[0]
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    log, _ = p.communicate(timeout=120)
    # torchrun itself re-raises the signal (exit 1) once its workers have ended cleanly
    assert "best model (user" in log, log
    steps = [
        int(line.split("after ")[1].split()[0])
        for line in log.splitlines()
        if "stopped (user) after" in line
    ]
    assert len(steps) == 2 and steps[0] == steps[1], log
    assert load_checkpoint(out).meta["steps"] == steps[0]
    assert not (tmp_path / "m.pt.lock").exists()


def run(args, capsys):
    code = main(list(map(str, args)))
    return code, capsys.readouterr().err.strip()


def test_resume_same_file_starts_then_continues(folders, tmp_path, capsys):
    out = tmp_path / "r.pt"
    args = ["train", "--images", folders / "images", "--labels", folders / "labels"]
    args += ["--out", out, "--resume", out, "--epochs", "1", "--steps-per-epoch", "3"]
    args += ["--val-fraction", "0"]
    args += ["--device", "cpu", *TINY]
    code, err = run(args, capsys)
    assert code == 0, err
    assert "training from scratch" in err
    assert load_checkpoint(out).meta["steps"] == 3
    code, err = run(args, capsys)
    assert code == 0, err
    assert load_checkpoint(out).meta["steps"] == 6  # continued from the first run
    other = ["train", "--images", folders / "images", "--labels", folders / "labels"]
    other += ["--out", tmp_path / "new.pt", "--resume", tmp_path / "none.pt", "--epochs", "1"]
    code, err = run(other, capsys)  # resuming from another, missing file is an error
    assert code == 2 and "none.pt" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"epoch": 3}', "unknown setting"),
        ('{"patch_size": "big"}', "patch_size must be int"),
        ('{"augment": 1}', "augment must be bool"),
        ('{"patch_size": 8}', "patch_size must be at least 16"),
    ],
)
def test_bad_config_files_are_one_line_errors(folders, tmp_path, capsys, text, needle):
    cfg = tmp_path / "train_config.json"
    cfg.write_text(text)
    args = ["train", "--images", folders / "images", "--labels", folders / "labels"]
    args += ["--out", tmp_path / "m.pt", "--config", cfg]
    code, err = run(args, capsys)
    assert code == 2 and err.startswith("napari-unet: error:") and needle in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_config_file_settings_are_used_and_flags_win(folders, tmp_path, capsys):
    cfg = tmp_path / "train_config.json"
    settings = TrainConfig(minutes=5.0, steps_per_epoch=2, lr=0.002, seed=7, **TINY_CFG).to_dict()
    settings["_comment"] = "ignored"
    cfg.write_text(json.dumps(settings))
    args = ["train", "--images", folders / "images", "--labels", folders / "labels"]
    args += ["--out", tmp_path / "m.pt", "--config", cfg, "--epochs", "1", "--seed", "3"]
    code, err = run(args, capsys)
    assert code == 0, err
    tc = load_checkpoint(tmp_path / "m.pt").meta["train_config"]
    assert tc["lr"] == 0.002 and tc["base_channels"] == 8 and tc["steps_per_epoch"] == 2
    assert tc["seed"] == 3 and tc["epochs"] == 1 and tc["minutes"] is None


def test_score_reduction_in_a_one_process_group(monkeypatch):
    import socket

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("NAPARI_UNET_THREADS", str(torch.get_num_threads()))
    d = Distributed(0, 1, 0, 1)
    assert d.start(torch.device("cpu")).type == "cpu"
    try:
        entry = {"val_loss": 0.3, "dice": 0.8, "f1": 0.6, "score": 0.6}
        assert d.reduce_scores(entry, 100.0) == pytest.approx(entry)
        no_f1 = {"val_loss": 0.3, "dice": 0.8, "score": 0.8}
        assert d.reduce_scores(no_f1, 100.0) == pytest.approx(no_f1)
        assert d.reduce_scores(None, 0.0) == {}
        assert d.agree_max([0, 2.5]) == [0.0, 2.5]
        assert np.isnan(d.mean(float("nan")))
    finally:
        d.close()
    assert not torch.distributed.is_initialized()
