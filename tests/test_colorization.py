"""Colorization: Lab maths against scikit-image, the gamut and rebalancing weights on known
distributions, soft encoding, the loss against NumPy, the grey front, and the method contract."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_BACKBONE
from method_contract import MethodContract
from ssl_zoo.pretext.colorization import (AbGamut, annealed_mean, lab_to_rgb, rgb_to_lab, soft_encode)

RNG = np.random.default_rng(0)
# Every 8th value of each channel (32^3 colours, the corners of the cube included) + random pixels.
_GRID_VALUES = np.append(np.arange(0, 256, 8), 255)
COLOURS = np.concatenate([
    np.stack(np.meshgrid(_GRID_VALUES, _GRID_VALUES, _GRID_VALUES, indexing="ij"), -1).reshape(-1, 3),
    RNG.integers(0, 256, (20000, 3)),
]).astype(np.uint8)
# Measured against scikit-image 0.26 on COLOURS: 0.0046 (float32 against float64).
LAB_ATOL = 0.01


def test_rgb_to_lab_matches_scikit_image():
    skimage_color = pytest.importorskip("skimage.color")
    ref = skimage_color.rgb2lab(COLOURS[None])[0]
    got = rgb_to_lab(COLOURS).numpy()
    assert np.abs(got - ref).max() < LAB_ATOL, np.abs(got - ref).max()


def test_lab_of_known_colours():
    # Published CIE Lab (D65) of sRGB white, black, red, green, blue.
    got = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])).numpy()
    expected = [[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86]]
    np.testing.assert_allclose(got, expected, atol=0.02)


def test_lab_round_trip():
    back = lab_to_rgb(rgb_to_lab(COLOURS)).numpy()
    assert np.abs(back - COLOURS).max() < 0.01
    # Out-of-gamut Lab values come back clipped into [0, 255], not as NaN.
    odd = lab_to_rgb(np.array([[50.0, 120.0, -120.0], [100.0, -100.0, 100.0]])).numpy()
    assert np.isfinite(odd).all() and odd.min() >= 0 and odd.max() <= 255


def test_gamut_of_isolated_bins_is_their_distribution_and_weights_follow_the_formula():
    # Three bins far apart (smoothing spills into empty neighbours only, the same share for each).
    centres = np.array([[-55.0, 35.0], [5.0, 5.0], [65.0, -45.0]])
    ab = np.repeat(centres, [700, 200, 100], axis=0) + RNG.uniform(-4, 4, (1000, 2))
    g = AbGamut.from_ab(ab, rebalance_lambda=0.5)
    assert g.num_bins == 3 and g.pixels == 1000
    np.testing.assert_allclose(np.sort(g.centres, axis=0), np.sort(centres, axis=0))
    order = np.argsort(-g.prior)
    np.testing.assert_allclose(g.prior[order], [0.7, 0.2, 0.1], atol=1e-6)
    raw = 1.0 / (0.5 * np.array([0.7, 0.2, 0.1]) + 0.5 / 3)
    np.testing.assert_allclose(g.weights[order], raw / np.sum(np.array([0.7, 0.2, 0.1]) * raw), rtol=1e-5)
    assert np.isclose(np.sum(g.prior * g.weights), 1.0)
    assert g.weights[order[2]] > g.weights[order[0]]  # the rare colour weighs more
    # lambda = 1: uniform weights (no rebalancing is lambda = 0's opposite: weights ∝ 1/p).
    np.testing.assert_allclose(AbGamut.from_ab(ab, rebalance_lambda=1.0).weights, 1.0, rtol=1e-6)
    np.testing.assert_allclose(AbGamut.from_ab(ab, rebalance_lambda=0.0).weights[order],
                               (1 / np.array([0.7, 0.2, 0.1])) / 3, rtol=1e-5)


def test_gamut_smoothing_moves_mass_between_neighbouring_bins():
    ab = np.repeat([[5.0, 5.0], [15.0, 5.0]], [900, 100], axis=0)
    g = AbGamut.from_ab(ab)
    small = int(np.argmin(g.prior))
    assert 0.1 < g.prior[small] < 0.5  # sigma 5 on a grid of 10 shares some of the big bin's mass


def test_gamut_survives_json():
    g = AbGamut.from_ab(RNG.uniform(-60, 60, (5000, 2)))
    again = AbGamut.from_json(g.to_json())
    np.testing.assert_allclose(again.centres, g.centres)
    np.testing.assert_allclose(again.weights, g.weights, rtol=1e-5)


def test_soft_encoding_sums_to_one_and_peaks_at_the_true_bin():
    g = AbGamut.from_ab(RNG.uniform(-80, 80, (20000, 2)))
    ab = np.concatenate([g.centres[:50] + RNG.uniform(-4.9, 4.9, (50, 2)), RNG.uniform(-70, 70, (50, 2))])
    soft, nearest = soft_encode(ab, g.centres)
    soft, nearest = soft.numpy(), nearest.numpy()
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-5)
    assert ((soft > 0).sum(-1) == 5).all()
    d2 = ((ab[:, None] - g.centres[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(nearest, d2.argmin(-1))
    np.testing.assert_array_equal(soft.argmax(-1), nearest)
    np.testing.assert_array_equal(nearest[:50], np.arange(50))  # inside a bin's square: that bin
    # The weights are the Gaussian of the distance (sigma 5), normalised over the 5 nearest.
    idx = np.argsort(d2, -1)[:, :5]
    w = np.exp(-np.take_along_axis(d2, idx, -1) / 50.0)
    np.testing.assert_allclose(np.take_along_axis(soft, idx, -1), w / w.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_loss_matches_numpy():
    from ssl_zoo.methods.colorization import Colorization

    method = Colorization(backbone=dict(TINY_BACKBONE), image_size=16)
    method.set_gamut(AbGamut.from_ab(RNG.uniform(-60, 60, (20000, 2))))
    q = method.gamut.num_bins
    targets = RNG.uniform(-50, 50, (3, 4, 4, 2)).astype(np.float32)
    logits = RNG.normal(0, 2, (3, 4, 4, q)).astype(np.float32)
    got = method.loss(tf.constant(targets), tf.constant(logits)).numpy()
    d2 = ((targets[..., None, :] - method.gamut.centres) ** 2).sum(-1)
    idx = np.argsort(d2, -1)[..., :5]
    w = np.exp(-np.take_along_axis(d2, idx, -1) / 50.0)
    soft = np.zeros_like(d2)
    np.put_along_axis(soft, idx, w / w.sum(-1, keepdims=True), -1)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    per_position = -(soft * log_p).sum(-1) * method.gamut.weights[idx[..., 0]]
    np.testing.assert_allclose(got, per_position.reshape(3, -1).mean(-1), rtol=1e-5)
    metrics = method.metrics(tf.constant(targets), tf.constant(logits), tf.constant(got))
    np.testing.assert_allclose(float(metrics["grey_ab_error_sum"]), np.linalg.norm(targets, axis=-1).mean((1, 2)).sum(),
                               rtol=1e-5)


def test_targets_made_per_batch_are_each_views_own_lab():
    """The pipeline converts a whole batch to Lab at once; each view's target is what converting it
    alone gives (the per-image conversion the released entry was trained with)."""
    from ssl_zoo.data.pipeline import build_pretext_dataset
    from ssl_zoo.data.sources import ArraySource
    from ssl_zoo.methods.colorization import Colorization
    from ssl_zoo.methods.split_brain import SplitBrain

    source = ArraySource(RNG.integers(0, 256, (6, 20, 20, 3), dtype=np.uint8), np.zeros(6, np.int64))
    split_backbone = {**TINY_BACKBONE, "arch": "split_resnet", "width": 0.25}
    for method in (Colorization(backbone=dict(TINY_BACKBONE), image_size=16),
                   SplitBrain(backbone=split_backbone, image_size=16)):
        batch = next(iter(build_pretext_dataset(source, "train", method, batch_size=6, image_size=16, training=True)))
        for i, view in enumerate(batch["inputs"]):
            lab = tf.image.resize(rgb_to_lab(view), [method.target_size] * 2, method="area")
            want = {"ab": lab[..., 1:], "lightness": lab[..., 0]}
            got = batch["targets"] if isinstance(batch["targets"], dict) else {"ab": batch["targets"]}
            for k, v in got.items():
                np.testing.assert_allclose(v[i], want[k], atol=1e-4)


def test_annealed_mean_between_mean_and_mode():
    centres = np.array([[-20.0, 0.0], [0.0, 0.0], [30.0, 10.0]], np.float32)
    logits = np.log(np.array([[0.2, 0.5, 0.3]], np.float32))
    np.testing.assert_allclose(annealed_mean(logits, centres, temperature=1.0).numpy(),
                               [[0.2 * -20 + 0.3 * 30, 0.3 * 10]], rtol=1e-5)
    np.testing.assert_allclose(annealed_mean(logits, centres, temperature=0.01).numpy(), [[0.0, 0.0]], atol=1e-3)


def test_grey_front_ignores_colour_and_stays_frozen(tmp_path):
    import keras

    from ssl_zoo.backbones import build_backbone, keep_fixed_layers_frozen
    from ssl_zoo.backbones.resnet import LUMA_709

    backbone = build_backbone({**TINY_BACKBONE, "grey": True})
    x = RNG.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    grey = np.repeat((x * np.array(LUMA_709, np.float32)).sum(-1, keepdims=True), 3, axis=-1)
    np.testing.assert_allclose(backbone(x), backbone(grey), rtol=1e-4, atol=1e-5)
    backbone.trainable = True
    keep_fixed_layers_frozen(backbone)
    assert not backbone.get_layer("grey").trainable
    backbone.save(tmp_path / "grey.keras")
    again = keras.saving.load_model(tmp_path / "grey.keras", safe_mode=True)
    np.testing.assert_allclose(again(x), backbone(x), rtol=1e-5, atol=1e-5)


def test_refuses_a_colour_backbone_and_a_size_off_the_stride():
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.methods.colorization import Colorization

    with pytest.raises(ConfigError, match="grey"):
        Colorization(backbone={**TINY_BACKBONE, "grey": False})
    with pytest.raises(ConfigError, match="multiple"):
        Colorization(backbone=dict(TINY_BACKBONE), image_size=20)
    with pytest.raises(ConfigError, match="gamut"):
        Colorization(backbone=dict(TINY_BACKBONE), image_size=16).build_model()


def test_picture_and_card_lines(tmp_path):
    from ssl_zoo.methods.colorization import Colorization, draw_colorizations

    g = AbGamut.from_ab(RNG.uniform(-60, 60, (20000, 2)))
    views = RNG.uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    path = draw_colorizations(views, RNG.normal(0, 1, (3, 4, 4, g.num_bins)), g, tmp_path / "c.png", 4)
    assert path.stat().st_size > 1000
    lines = Colorization.card_diagnostics({"colorization_check": {
        "examples": 100, "split": "test", "num_bins": 200, "accuracy": 0.3, "commonest_bin_accuracy": 0.1,
        "uniform_chance": 0.005, "annealed_mean_temperature": 0.38, "ab_error": 9.5, "grey_ab_error": 14.0,
        "picture": "x_pretext.png"}})
    assert "30.0" in lines[0] and len(lines) == 1  # the picture is linked by the cards folder's card


CONTRACT = MethodContract(
    method={"name": "colorization", "image_size": 16, "head_hidden_units": 8, "gamut_images": 12},
    image_size=16,
    images=RNG.integers(0, 256, (12, 20, 20, 3), dtype=np.uint8),
    backbone=dict(TINY_BACKBONE),
    keras_fit=False,  # its loss needs the gamut `prepare` found: the zoo's step, not a Keras loss
)


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas(tmp_path):
    CONTRACT.run_slow(tmp_path)


def test_diagnose_on_a_run_folder_writes_report_and_picture(tmp_path, capsys):
    """End to end on an (untrained) colorization run: recorded recipe, image folder, gamut from the
    training split, safe-mode load, held-out metrics and baselines, the picture; a method that draws
    no picture refuses --picture in one sentence."""
    import json

    from helpers import diagnose_untrained_run

    written, picture, method = diagnose_untrained_run(tmp_path, {
        "name": "tiny_colorization", "method": {"name": "colorization", "image_size": 16, "head_hidden_units": 8},
        "backbone": dict(TINY_BACKBONE)})
    report = written["colorization_check"]
    assert report["examples"] == 8 and report["num_bins"] == method.gamut.num_bins
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["commonest_bin_accuracy"] <= 1.0
    assert 0.0 <= report["rebalanced_accuracy"] <= 1.0 and 0.0 <= report["rebalanced_commonest_bin_accuracy"] <= 1.0
    assert report["grey_ab_error"] > 0 and report["picture"] == "x_pretext.png" and picture.stat().st_size > 1000
    assert str(tmp_path) not in json.dumps({k: v for k, v in report.items() if k not in ("run", "overrides")})


def test_picture_is_refused_by_a_method_that_draws_none(tmp_path, caplog):
    import json

    from ssl_zoo.cli import main
    from ssl_zoo.train.recipe import recipe_from_dict

    recipe = recipe_from_dict({"name": "r", "method": {"name": "relative_patch"},
                               "backbone": {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar"}})
    (tmp_path / "run.json").write_text(json.dumps({"recipe": recipe.to_dict()}))
    assert main(["diagnose", str(tmp_path), "--picture", str(tmp_path / "p.png")]) == 2
    assert "draws no picture of its pretext task" in caplog.text
