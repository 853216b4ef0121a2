import threading

import numpy as np
import pytest
from _synthetic import nuclei_image

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.metrics import evaluate
from napari_unet.core.predict import PredictConfig, iter_predict, predict, predict_probabilities
from napari_unet.core.train import TrainConfig, TrainResult, iter_train, train

TINY = dict(depth=2, base_channels=8, patch_size=64, batch_size=4, steps_per_epoch=10, device="cpu")


def _run(gen, on_progress):
    """Drive a training generator to its end, calling `on_progress` on each report."""
    while True:
        try:
            p = next(gen)
        except StopIteration as e:
            return e.value
        on_progress(p)


@pytest.fixture(scope="module")
def data():
    pairs = [nuclei_image(seed=s) for s in range(4)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("m") / "model.pt"
    cfg = TrainConfig(epochs=8, checkpoint_path=str(ckpt), lr=3e-3, **TINY)
    return train(*data, cfg, names=["a", "b", "c", "d"])


def test_training_learns_and_reports(trained):
    r = trained
    assert isinstance(r, TrainResult)
    assert r.stopped == "epochs" and r.steps == 80
    assert r.checkpoint is not None and r.checkpoint.exists()
    assert r.device.startswith("CPU")
    assert len(r.history) == 8
    assert r.bundle.outputs == ["foreground", "boundary"]
    # the loss goes down
    assert r.history[-1]["train_loss"] < 0.8 * r.history[0]["train_loss"]
    assert r.best_score == max(h["score"] for h in r.history)
    # each validation says how much of its time went to predicting (the unit in which
    # the time kept free for the end-of-training fit is counted)
    assert all(0 <= h["predict_seconds"] <= h["val_seconds"] for h in r.history)
    meta = r.bundle.meta
    assert meta["normalisation"]["mode"] == "percentile"
    assert meta["train_config"]["epochs"] == 8


def test_prediction_settings_are_fitted_on_validation_images(trained):
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.tune import SPLIT_DEPTHS, THRESHOLDS

    tuned = trained.bundle.meta["postprocess"]
    assert tuned["threshold"] in THRESHOLDS and tuned["h"] in SPLIT_DEPTHS
    assert tuned["n_images"] == 1  # one of the four images is held back
    # the winner scores at least as well as the class defaults on the same images
    assert tuned["score"] >= tuned["default"]["score"]
    assert tuned["score"] == pytest.approx(0.5 * (tuned["f1"] + tuned["dsb_score"]))
    # stored in the file, and prediction uses it unless told otherwise
    saved = load_checkpoint(trained.checkpoint)
    assert saved.meta["postprocess"]["threshold"] == tuned["threshold"]
    cfg = PredictConfig.for_model(saved)
    assert (cfg.threshold, cfg.h) == (tuned["threshold"], tuned["h"])
    assert PredictConfig.for_model(saved, threshold=0.33).threshold == 0.33
    assert PredictConfig.for_model(saved, min_distance=9).h is None  # markers by distance
    img, _ = nuclei_image(seed=11)
    fitted = predict(trained.bundle, img).labels
    assert np.array_equal(fitted, predict(trained.bundle, img, config=cfg).labels)


@pytest.mark.parametrize(
    "stored",
    [None, "x", {"threshold": 1.5, "h": -1}, {"threshold": True, "h": float("nan")}, {}],
)
def test_bad_fitted_settings_in_a_file_are_ignored(trained, stored):
    import copy

    bundle = copy.copy(trained.bundle)
    bundle.meta = dict(trained.bundle.meta, postprocess=stored)
    cfg = PredictConfig.for_model(bundle)
    assert (cfg.threshold, cfg.h) == (PredictConfig().threshold, PredictConfig().h)


def test_progress_is_typed_and_ordered(data):
    kinds, notes = [], []
    gen = iter_train(*data, TrainConfig(epochs=1, **TINY))
    for p in gen:
        kinds.append(p.kind)
        assert 0.0 <= p.fraction <= 1.0
        if p.kind == "step" and p.loss is None:  # a note, not a training step
            notes.append(p.message)
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("step") - len(notes) == 10 and "validation" in kinds
    # the end-of-training fit says that it runs (1 held-back image: no choice of weights)
    assert notes == ["fitting the prediction settings on 1 held-back image(s)"]


def test_prediction_finds_the_nuclei(trained):
    img, lab = nuclei_image(seed=11)
    res = predict(trained.bundle, img, config=PredictConfig(device="cpu"))
    assert res.labels.shape == img.shape and res.labels.dtype == np.uint32
    assert set(res.probabilities) == {"foreground", "boundary"}
    score = evaluate([lab], [res.labels])
    assert score["dice"] > 0.8, score
    assert score["f1"] > 0.5, score


def test_stop_returns_best_so_far(data, tmp_path):
    stop = threading.Event()
    ckpt = tmp_path / "m.pt"
    gen = iter_train(*data, TrainConfig(epochs=100, checkpoint_path=str(ckpt), **TINY), stop=stop)
    steps = 0

    def on_progress(p):
        nonlocal steps
        if p.kind == "step":
            steps += 1
            if steps == 3:
                stop.set()

    result = _run(gen, on_progress)
    assert result.stopped == "user" and result.steps == 3
    assert result.checkpoint == ckpt and ckpt.exists()


def test_stop_before_first_step_writes_nothing(data, tmp_path):
    stop = threading.Event()
    stop.set()
    ckpt = tmp_path / "m.pt"
    r = train(*data, TrainConfig(epochs=5, checkpoint_path=str(ckpt), **TINY), stop=stop)
    assert r.stopped == "user" and r.steps == 0 and r.checkpoint is None and not ckpt.exists()


def test_time_budget(data):
    notes = []

    def on_progress(p):
        if p.kind == "step" and p.loss is None:
            notes.append(p.message)

    r = _run(iter_train(*data, TrainConfig(minutes=0.05, **TINY)), on_progress)
    assert r.stopped == "budget"
    assert r.history and r.history[-1]["elapsed"] < 30
    # under a budget the fit may end early, on fewer images: the note says "up to"
    assert notes == ["fitting the prediction settings on up to 1 held-back image(s)"]
    assert r.bundle.meta["postprocess"]["n_images"] == 1


def test_early_stopping_only_when_asked(data, monkeypatch):
    import napari_unet.core.train as train_mod

    # a score that never improves after the first validation
    def flat(*args, **kwargs):
        return {"val_loss": 1.0, "dice": 0.5, "score": 0.5, "predict_seconds": 0.0}

    monkeypatch.setattr(train_mod, "validate", flat)
    cfg = dict(epochs=6, tune_postprocessing=False, **TINY)
    assert TrainConfig().patience is None  # the default trains to the end
    r = train(*data, TrainConfig(**cfg))
    assert r.stopped == "epochs" and len(r.history) == 6
    r = train(*data, TrainConfig(patience=2, **cfg))
    assert r.stopped == "early_stopping" and len(r.history) == 3 and r.steps == 30
    for bad in (-1, 1.5):
        with pytest.raises(NapariUnetError, match="patience"):
            TrainConfig(patience=bad).validate()


def test_divergence_keeps_a_finite_model(data):
    r = train(*data, TrainConfig(epochs=50, lr=1e12, **TINY))
    assert r.stopped == "diverged"
    import torch

    assert all(torch.isfinite(p).all() for p in r.bundle.model.parameters())


def test_fine_tuning_extends_history(trained, data):
    r = train(data[0][:2], data[1][:2], TrainConfig(epochs=1, **TINY), init=trained.bundle)
    assert len(r.bundle.meta["history"]) == len(trained.history) + len(r.history)
    # the original model is untouched
    assert len(trained.bundle.meta["history"]) == len(trained.history)
    assert "postprocess" in trained.bundle.meta
    # settings fitted to the old weights are refitted when possible; when not, the
    # starting model's are kept (better than the defaults), marked as such
    cfg = TrainConfig(epochs=1, tune_postprocessing=False, **TINY)
    r2 = train(data[0][:2], data[1][:2], cfg, init=trained.bundle)
    kept = r2.bundle.meta["postprocess"]
    assert kept["source"] == "starting model"
    assert kept["threshold"] == trained.bundle.meta["postprocess"]["threshold"]


def test_binary_masks_train_a_semantic_model(data):
    masks = [(lab > 0).astype(np.uint8) * 255 for lab in data[1]]
    r = train(data[0], masks, TrainConfig(epochs=1, **TINY))
    assert r.bundle.outputs == ["foreground"]
    res = predict(r.bundle, data[0][0], config=PredictConfig(device="cpu"))
    assert list(res.probabilities) == ["foreground"]


def test_a_semantic_model_is_validated_on_objects_when_the_labels_are_instances(data):
    r = train(*data, TrainConfig(epochs=2, targets="semantic", **TINY))
    assert r.bundle.outputs == ["foreground"]
    scores = [h for h in r.history if "f1" in h]
    assert scores and all(h["score"] == h["f1"] for h in scores)
    # binary masks do not say where touching objects meet: scored by pixels (Dice)
    masks = [(lab > 0).astype(np.uint8) for lab in data[1]]
    r = train(data[0], masks, TrainConfig(epochs=2, targets="semantic", **TINY))
    validated = [h for h in r.history if "dice" in h]
    assert validated and all("f1" not in h and h["score"] == h["dice"] for h in validated)


def test_sparse_annotation_trains(data):
    img, lab = data[0][0], data[1][0].copy()
    sparse = np.zeros_like(lab)
    sparse[:48] = np.where(lab[:48] > 0, lab[:48] + 1, 1)  # top half annotated
    r = train([img], [sparse], TrainConfig(epochs=1, sparse=True, **TINY))
    assert r.steps == 10


def test_tiles_blend_without_seams(trained):
    img, _ = nuclei_image(shape=(200, 260), n=40, seed=5)
    whole = predict_probabilities(
        trained.bundle, img, config=PredictConfig(tile_size=512, device="cpu")
    )
    tiled = predict_probabilities(
        trained.bundle, img, config=PredictConfig(tile_size=64, overlap=32, device="cpu")
    )
    assert whole.shape == tiled.shape == (2, 200, 260)
    inner = (slice(None), slice(16, -16), slice(16, -16))
    diff = np.abs(whole[inner] - tiled[inner]).max()
    assert diff < 0.1, diff


def test_stacks_dask_and_stop(trained):
    da = pytest.importorskip("dask.array")
    img, _ = nuclei_image(seed=3)
    stack = np.stack([img, img[::-1]])
    res = predict(
        trained.bundle,
        da.from_array(stack, chunks=(1, 48, 48)),
        config=PredictConfig(tile_size=64, overlap=16, device="cpu"),
        axes="TYX",  # two frames, labelled one by one
    )
    assert res.labels.shape == stack.shape and res.settings["axes"] == "TYX"
    n0 = len(np.unique(res.labels[0])) - 1
    # ids stay unique across slices
    assert n0 > 0 and res.labels[1][res.labels[1] > 0].min() > res.labels[0].max()
    stop = threading.Event()
    gen = iter_predict(
        trained.bundle,
        stack,
        config=PredictConfig(tile_size=64, overlap=16, batch_size=1, device="cpu"),
        stop=stop,
    )
    next(gen)
    stop.set()
    with pytest.raises(StopIteration) as e:
        while True:
            next(gen)
    assert e.value.value is None


def test_channel_checks(trained):
    img, _ = nuclei_image(seed=1)
    rgb = np.stack([img] * 3, -1)
    with pytest.raises(NapariUnetError, match="3 channels but the model was trained on 1"):
        predict(trained.bundle, rgb, channel_axis=-1)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (17, 300)])
def test_tiny_and_odd_images_predict(trained, shape):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    res = predict(trained.bundle, img, config=PredictConfig(tile_size=64, device="cpu"))
    assert res.labels.shape == shape


def test_bad_config():
    with pytest.raises(NapariUnetError, match="loss"):
        TrainConfig(loss="focal").validate()
    with pytest.raises(NapariUnetError, match="patch_size"):
        TrainConfig(patch_size=4).validate()


def test_tuning_picks_settings_that_separate_touching_nuclei():
    from scipy import ndimage as ndi

    from napari_unet.core.tune import tune_postprocessing

    yy, xx = np.mgrid[:64, :96]
    gt = np.zeros((64, 96), np.int32)
    gt[(yy - 32) ** 2 + (xx - 30) ** 2 < 14**2] = 1
    gt[((yy - 32) ** 2 + (xx - 54) ** 2 < 14**2) & (gt == 0)] = 2  # touches nucleus 1
    fg = ndi.gaussian_filter((gt > 0).astype(float), 2.0)  # soft edges, like a model's output
    prob = np.stack([fg, np.zeros_like(fg)])
    tuned = tune_postprocessing([prob], [gt], ["foreground", "boundary"])
    assert tuned["f1"] == 1.0 and tuned["dsb_score"] > 0.5  # both nuclei found, one each
    assert tuned["score"] >= tuned["default"]["score"]
    assert tuned["n_images"] == 1


def test_the_fit_uses_every_held_back_image_and_honours_stop():
    pairs = [nuclei_image(seed=s) for s in range(8)]
    imgs, labs = [p[0] for p in pairs], [p[1] for p in pairs]
    cfg = TrainConfig(epochs=1, val_fraction=0.25, val_max_images=1, **TINY)
    r = train(imgs, labs, cfg)
    assert r.bundle.meta["n_val_images"] == 2
    assert r.bundle.meta["postprocess"]["n_images"] == 2  # validation scored only 1
    # Stop while the settings are fitted: training is kept, no settings are stored
    stop = threading.Event()
    gen = iter_train(imgs, labs, cfg, stop=stop)
    messages = []

    def on_progress(p):
        messages.append(p.message)
        if "fitting the prediction settings" in p.message:
            stop.set()

    result = _run(gen, on_progress)
    assert result.stopped == "epochs"
    assert "postprocess" not in result.bundle.meta
    assert "stopped before the prediction settings were fitted" in messages[-1]


def test_the_final_weights_are_kept_when_they_score_better(trained):
    import copy

    import torch

    from napari_unet.core.data import Normalisation, prepare_samples
    from napari_unet.core.final_fit import fit_prediction_settings

    img, lab = nuclei_image(seed=21)
    norm = Normalisation.from_dict(trained.bundle.meta["normalisation"])
    val = prepare_samples([img], [lab], normalisation=norm)
    good = {k: v.clone() for k, v in trained.bundle.model.state_dict().items()}
    bad = {k: torch.zeros_like(v) for k, v in good.items()}  # predicts 0.5 everywhere
    bundle = copy.deepcopy(trained.bundle)
    bundle.model.load_state_dict(bad)
    tuned = fit_prediction_settings(bundle, val, torch.device("cpu"), last_state=good)
    assert tuned["weights"]["weights"] == "last"
    assert tuned["weights"]["last_score"] > tuned["weights"]["best_score"]
    assert all(torch.equal(v, good[k]) for k, v in bundle.model.state_dict().items())
    bundle.model.load_state_dict(good)
    tuned = fit_prediction_settings(bundle, val, torch.device("cpu"), last_state=bad)
    assert tuned["weights"]["weights"] == "best"
    assert all(torch.equal(v, good[k]) for k, v in bundle.model.state_dict().items())


def test_the_fit_ends_by_its_deadline_with_the_images_it_could_use(trained):
    import copy
    import time

    import torch

    from napari_unet.core.data import Normalisation, prepare_samples
    from napari_unet.core.final_fit import fit_prediction_settings

    pairs = [nuclei_image(seed=s) for s in (21, 22, 23)]
    norm = Normalisation.from_dict(trained.bundle.meta["normalisation"])
    val = prepare_samples([p[0] for p in pairs], [p[1] for p in pairs], normalisation=norm)
    bundle = copy.deepcopy(trained.bundle)
    cpu = torch.device("cpu")
    last = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    # time to spare: every image; already late: the first one only, weights still chosen
    early = fit_prediction_settings(bundle, val, cpu, deadline=time.perf_counter() + 3600)
    assert early["n_images"] == 3
    late = fit_prediction_settings(
        bundle, val, cpu, last_state=last, deadline=time.perf_counter() - 1
    )
    assert late["n_images"] == 1 and late["weights"]["weights"] in ("best", "last")


def test_the_fit_takes_at_most_its_share_of_a_time_budget(monkeypatch):
    from types import SimpleNamespace

    from napari_unet.core import tune
    from napari_unet.core.final_fit import TUNE_SHARE, fit_per_pass, plan_fit

    held_back = [SimpleNamespace(shape=(100, 100)) for _ in range(10)]
    val = held_back[:2]  # the subset scored at each validation: 20,000 px predicted in 2 s
    # no time budget, or plenty: all held-back images, predicted twice and fitted
    per_image = 2.0 + fit_per_pass()  # cost per 2 images, in predictions of the subset
    assert plan_fit(val, 20_000, held_back, 2.0, None) == (held_back, 5 * per_image)
    assert plan_fit(val, 20_000, held_back, 2.0, 1e6) == (held_back, 5 * per_image)
    # each image costs (2 + fit) s: the budget allows 5 images
    budget = 5.5 * per_image / TUNE_SHARE  # 5 images and a half
    kept, cost = plan_fit(val, 20_000, held_back, 2.0, budget)
    assert kept == held_back[:5] and cost == pytest.approx(2.5 * per_image)
    # a short budget: the validation subset, predicted once
    assert plan_fit(val, 20_000, held_back, 2.0, 10.0) == (val, 1.0 + fit_per_pass())
    # the fit's threads shorten the time kept for it, down to its serial part
    monkeypatch.setattr(tune, "fit_threads", lambda *a: 1)
    one = plan_fit(val, 20_000, held_back, 2.0, None)[1]
    monkeypatch.setattr(tune, "fit_threads", lambda *a: 4)
    four = plan_fit(val, 20_000, held_back, 2.0, None)[1]
    assert one == pytest.approx(5 * (2.0 + fit_per_pass(1)))
    assert fit_per_pass(1) > fit_per_pass(2) > fit_per_pass(4) > 0.25 * fit_per_pass(1)
    assert four < one


def test_weight_average_follows_the_weights_and_swaps_back():
    import torch

    from napari_unet.core.losses import WeightAverage

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    ema = WeightAverage(model, decay=0.2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].num_batches_tracked.fill_(7)
    for _ in range(3):
        ema.update(model)
    # the decay grows as 1 - 9 / (10 + step) up to its cap: 2/11, then 0.2, 0.2
    w = torch.tensor(2 / 11 * 0.2 * 0.2)
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(ema.state[k], w * start[k] + (1 - w) * v)
    assert int(ema.state["1.num_batches_tracked"]) == 7
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    averaged = {k: v.clone() for k, v in ema.state.items()}
    ema.swap(model)
    assert all(torch.equal(v, averaged[k]) for k, v in model.state_dict().items())
    ema.swap(model)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_training_with_a_weight_average_keeps_the_average(data, tmp_path):
    from napari_unet.core.checkpoint import load_checkpoint

    kw = dict(TINY, epochs=2, lr=3e-3, tune_postprocessing=False)
    plain = train(*data, TrainConfig(**kw))
    again = train(*data, TrainConfig(**kw))
    ckpt = tmp_path / "ema.pt"
    averaged = train(*data, TrainConfig(ema=0.9, checkpoint_path=str(ckpt), **kw))
    assert averaged.steps == plain.steps == 20
    assert all(np.isfinite(h["score"]) for h in averaged.history)
    p = plain.bundle.model.state_dict()
    a = averaged.bundle.model.state_dict()
    # same seed, same batches: a plain run repeats itself exactly ...
    g = again.bundle.model.state_dict()
    assert all(np.array_equal(g[k].numpy(), p[k].numpy()) for k in p)
    assert [h["val_loss"] for h in again.history] == [h["val_loss"] for h in plain.history]
    # ... so only the averaging makes the validated and the kept weights differ
    pairs = zip(averaged.history, plain.history, strict=True)
    assert all(h["val_loss"] != q["val_loss"] for h, q in pairs)
    assert any(not np.array_equal(a[k].numpy(), p[k].numpy()) for k in a)
    # the file holds the kept (averaged) weights
    saved = load_checkpoint(ckpt).model.state_dict()
    assert all(np.array_equal(saved[k].numpy(), a[k].numpy()) for k in a)
    assert averaged.bundle.meta["train_config"]["ema"] == 0.9


@pytest.mark.parametrize("value", [-0.1, 1.0, 2.0])
def test_weight_average_decay_is_checked(value):
    with pytest.raises(NapariUnetError, match="ema must be in"):
        TrainConfig(ema=value).validate()


def test_flips_average_the_four_mirrored_predictions():
    import torch

    from napari_unet.core.data import Normalisation
    from napari_unet.core.model import UNet, UNetSpec
    from napari_unet.core.predict import FLIPS, infer_tiles

    torch.manual_seed(0)
    model = UNet(UNetSpec(in_channels=1, out_channels=2, depth=2, base_channels=4)).eval()
    tile = np.random.default_rng(0).random((1, 32, 48)).astype(np.float32)
    args = (Normalisation(), np.zeros(1, np.float32), np.ones(1, np.float32), torch.device("cpu"))
    plain = infer_tiles(model, [tile], *args)[0]
    averaged = infer_tiles(model, [tile], *args, flips=True)[0]
    by_hand = np.mean(
        [
            np.flip(
                infer_tiles(model, [np.flip(tile, [a - 1 for a in axes]).copy()], *args)[0],
                [a - 1 for a in axes],
            )
            for axes in FLIPS
        ],
        axis=0,
    )
    assert len(FLIPS) == 4
    np.testing.assert_allclose(averaged, by_hand, atol=1e-6)
    assert np.abs(averaged - plain).max() > 1e-3  # an untrained model is not symmetric
    # so the averaged prediction of a mirrored tile is the mirrored averaged prediction
    mirrored = infer_tiles(model, [tile[:, ::-1, :].copy()], *args, flips=True)[0]
    np.testing.assert_allclose(mirrored[:, ::-1, :], averaged, atol=1e-6)


def test_predict_with_flips(trained):
    img, lab = nuclei_image(seed=11)
    cpu = PredictConfig(device="cpu")
    plain = predict_probabilities(trained.bundle, img, config=cpu)
    flipped = predict_probabilities(
        trained.bundle, img, config=PredictConfig(device="cpu", flips=True)
    )
    assert flipped.shape == plain.shape and 0 < np.abs(flipped - plain).max() < 0.5
    res = predict(trained.bundle, img, config=PredictConfig(device="cpu", flips=True))
    assert res.settings["flips"] is True
    assert evaluate([lab], [res.labels])["f1"] > 0.5


def test_train_config_from_dict_checks_names_and_types():
    assert TrainConfig.from_dict(TrainConfig(lr=0.002).to_dict()) == TrainConfig(lr=0.002)
    assert TrainConfig.from_dict({"minutes": 5}).minutes == 5  # a whole number is a float
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="patch_size must be int, got 'big'"):
        TrainConfig.from_dict({"patch_size": "big"})
    with pytest.raises(ValueError, match="augment must be bool"):
        TrainConfig.from_dict({"augment": 1})
    with pytest.raises(ValueError, match="epochs must be int or null"):
        TrainConfig.from_dict({"epochs": 2.5})
