import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main


def run_cli(*args, cwd=None):
    """Run the real program in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "napari_unet", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


def test_help_lists_the_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("train", "predict", "split", "evaluate", "export-rle", "demo"):
        assert cmd in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["train", "--images", "/nonexistent", "--labels", "/nonexistent", "--out", "m.pt"],
            "/nonexistent",
        ),
        (["predict", "--model", "missing.pt", "--images", ".", "--out", "o"], "does not exist"),
        (["evaluate", "--pred", "/nonexistent", "--gt", "/nonexistent"], "/nonexistent"),
    ],
)
def test_errors_are_one_line_and_nonzero(args, needle, tmp_path, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("napari-unet: error:") and needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_command_line_on_real_nuclei(shared_data, tmp_path):
    """train -> predict -> evaluate -> split -> export-rle on real DSB2018 images."""
    import json as _json

    root = shared_data / "dsb2018_stage1_train"
    stats = sorted(_json.loads((root / "per_image_stats.json").read_text()), key=lambda s: s["id"])
    grey = [
        s["id"]
        for s in stats
        if s["rgb_equal"] and s["shape"][:2] == [256, 256] and 10 <= s["n_objects"] <= 60
    ]
    train_ids, test_ids = grey[:12], grey[12:16]
    (tmp_path / "train.txt").write_text("\n".join(train_ids))
    (tmp_path / "test.txt").write_text("\n".join(test_ids))
    model = tmp_path / "my model.pt"  # a space in the path, as users have
    r = run_cli(
        "train",
        "--images",
        root / "images",
        "--labels",
        root / "masks",
        "--ids-file",
        tmp_path / "train.txt",
        "--out",
        model,
        "--epochs",  # a fixed number of steps: the same model on a busy machine
        "5",
        "--patch-size",
        "128",
        "--steps-per-epoch",
        "25",
    )
    assert r.returncode == 0, r.stderr
    assert model.exists()
    assert "best model" in r.stderr and "CPU" in r.stderr

    pred = tmp_path / "pred"
    r = run_cli(
        "predict",
        "--model",
        model,
        "--images",
        root / "images",
        "--ids-file",
        tmp_path / "test.txt",
        "--out",
        pred,
        "--save-probabilities",
    )
    assert r.returncode == 0, r.stderr
    outs = sorted(pred.glob("*.tif"))
    labels = [p for p in outs if not p.stem.endswith("_probabilities")]
    assert len(labels) == 4 and len(outs) == 8
    lab = tifffile.imread(labels[0])
    assert lab.shape == (256, 256) and lab.dtype == np.uint16 and lab.max() > 0

    r = run_cli("evaluate", "--pred", pred, "--gt", root / "masks")
    # probabilities files have no ground truth: evaluate says so, and on labels alone it works
    assert r.returncode == 2 and "no ground truth" in r.stderr
    for p in pred.glob("*_probabilities.tif"):
        p.unlink()
    r = run_cli("evaluate", "--pred", pred, "--gt", root / "masks")
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout)
    assert scores["n_images"] == 4
    # 125 steps of CPU training on 12 images (about a minute on a quiet 2-core machine, where
    # one minute of training measured F1@0.5 0.965, Dice 0.94). The bounds leave room and still
    # catch a model that did not learn (an untrained one scores F1 0).
    assert scores["f1"] > 0.6, scores
    assert scores["dice"] > 0.7, scores
    assert 0 < scores["dsb_score"] <= 1

    # writing again refuses to overwrite the user's files
    r = run_cli(
        "predict",
        "--model",
        model,
        "--images",
        root / "images",
        "--ids-file",
        tmp_path / "test.txt",
        "--out",
        pred,
    )
    assert r.returncode == 2 and "--overwrite" in r.stderr

    split_out = tmp_path / "split"
    r = run_cli("split", "--input", pred, "--out", split_out)
    assert r.returncode == 0, r.stderr
    assert len(list(split_out.glob("*.tif"))) == 4

    csv = tmp_path / "sub.csv"
    r = run_cli("export-rle", "--labels", pred, "--out", csv)
    assert r.returncode == 0, r.stderr
    rows = csv.read_text().splitlines()
    assert rows[0] == "ImageId,EncodedPixels" and len(rows) > 4


@pytest.mark.slow
def test_headless_demo(tmp_path):
    r = run_cli("demo", "--headless", "--minutes", "0.3", "--out", tmp_path / "demo")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["train_steps"] > 0
    assert (tmp_path / "demo" / "model.pt").exists()
    assert len(list((tmp_path / "demo").glob("*.tif"))) == 6
    # the held-out score is that of the labels written for the held-out sample
    from napari_unet.core.metrics import evaluate
    from napari_unet.samples import load_samples

    name = summary["held_out"]["name"]
    [(_, _, truth)] = load_samples([name])
    written = tifffile.imread(tmp_path / "demo" / f"{name}.tif")
    assert summary["held_out"]["f1"] == round(evaluate([truth], [written])["f1"], 3)


def test_demo_without_a_display_says_so_in_one_line(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    r = subprocess.run(
        [sys.executable, "-m", "napari_unet", "demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no display" in lines[0] and "--headless" in lines[0]


def test_demo_never_overwrites_an_earlier_demo_silently(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "fluo_dense.tif").write_bytes(b"the user's file")
    assert main(["demo", "--headless", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "earlier demo" in err and "--overwrite" in err
    assert (out / "fluo_dense.tif").read_bytes() == b"the user's file"
