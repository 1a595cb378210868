"""Split-brain autoencoder: the split backbone's halves see what they say (grey half blind to
colour, colour half blind to grey), its stages concatenate them under the usual names and survive
the random-init twin and safe-mode loading; the lightness bins; the held-out check of both halves
with its picture; and the method contract."""

import keras
import numpy as np
import pytest

from helpers import TINY_BACKBONE
from method_contract import MethodContract
from ssl_zoo.backbones import STAGES, build_backbone, stage_model
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.split_brain import SplitBrain, lightness_bins

RNG = np.random.default_rng(0)
SPLIT_BACKBONE = {**TINY_BACKBONE, "arch": "split_resnet", "width": 0.25}
METHOD = {"name": "split_brain", "image_size": 16, "head_hidden_units": 8, "gamut_images": 12, "l_bins": 10}


def _stages(backbone, x):
    return {k: np.asarray(v) for k, v in stage_model(backbone, STAGES)(x, training=False).items()}


def test_split_backbone_halves_see_only_their_part_of_the_signal():
    backbone = build_backbone(SPLIT_BACKBONE)
    half = {"l": 8, "ab": 8}  # width 0.25 / 2 -> 8 channels in each half's stem
    x = RNG.uniform(40, 200, (2, 16, 16, 3)).astype("float32")
    base = _stages(backbone, x)
    for s in STAGES:
        assert base[s].shape[-1] % 2 == 0
    assert base["stem"].shape[-1] == half["l"] + half["ab"]
    # Same luma, other colour: (B - Y, R - Y) changes, Y does not -> the grey half's channels stay.
    luma = np.array([0.2126, 0.7152, 0.0722], np.float32)
    shift = np.array([10.0, 0.0, 0.0], np.float32)
    shift[1] = -shift[0] * luma[0] / luma[1]  # R up, G down by what keeps Y
    recoloured = _stages(backbone, x + shift)
    # Same colour differences, other grey: add the same amount to R, G and B.
    brighter = _stages(backbone, x + 20.0)
    for s in STAGES:
        c = base[s].shape[-1] // 2
        np.testing.assert_allclose(recoloured[s][..., :c], base[s][..., :c], atol=1e-4, err_msg=s)
        assert not np.allclose(recoloured[s][..., c:], base[s][..., c:], atol=1e-4), s
        np.testing.assert_allclose(brighter[s][..., c:], base[s][..., c:], atol=1e-4, err_msg=s)
        assert not np.allclose(brighter[s][..., :c], base[s][..., :c], atol=1e-4), s


def test_split_backbone_round_trips_and_its_random_twin_keeps_the_fixed_fronts(tmp_path):
    from ssl_zoo.evaluation.run import random_init_like

    backbone = build_backbone(SPLIT_BACKBONE)
    twin = random_init_like(backbone, seed=3)
    for name in ("grey", "chroma"):
        np.testing.assert_array_equal(twin.get_layer(name).get_weights()[0], backbone.get_layer(name).get_weights()[0])
    backbone.save(tmp_path / "split.keras")
    loaded = keras.saving.load_model(tmp_path / "split.keras", safe_mode=True)
    x = RNG.uniform(0, 255, (1, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(backbone(x)), rtol=1e-5, atol=1e-5)


def test_lightness_bins():
    got = lightness_bins(np.array([0.0, 4.99, 5.0, 50.0, 99.9, 100.0, 130.0, -3.0]), 20).numpy()
    np.testing.assert_array_equal(got, [0, 0, 1, 10, 19, 19, 19, 0])


def test_bad_configuration_is_named():
    with pytest.raises(ConfigError, match="split_resnet"):
        SplitBrain(backbone=dict(TINY_BACKBONE))
    with pytest.raises(ConfigError, match="l_bins"):
        SplitBrain(backbone=dict(SPLIT_BACKBONE), l_bins=0)


CONTRACT = MethodContract(
    method=dict(METHOD),
    image_size=16,
    images=RNG.integers(0, 256, (12, 20, 20, 3), dtype=np.uint8),
    backbone={k: v for k, v in SPLIT_BACKBONE.items() if k != "image_size"},
    keras_fit=False,  # its loss needs the gamut `prepare` found: the zoo's step, not a Keras loss
)


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas(tmp_path):
    CONTRACT.run_slow(tmp_path)


def test_diagnose_reports_both_halves_and_draws_the_colorization(tmp_path):
    from helpers import diagnose_untrained_run

    report, picture, _ = diagnose_untrained_run(tmp_path, {"name": "tiny_split", "method": dict(METHOD),
                                                           "backbone": dict(SPLIT_BACKBONE)})
    colour, lightness = report["colorization_check"], report["lightness_check"]
    assert colour["examples"] == 8 and 0 <= colour["accuracy"] <= 1 and picture.stat().st_size > 1000
    assert lightness["l_bins"] == 10 and 0 <= lightness["accuracy"] <= 1
    assert lightness["uniform_chance"] == 0.1 and 0.1 <= lightness["commonest_bin_accuracy"] <= 1
    lines = SplitBrain.card_diagnostics(report)
    assert len(lines) == 2 and "lightness from colour" in lines[1]
