"""Siamese / context-free models over several views (`ssl_zoo.methods.views`): the two fusions,
what they feed the head, and that the exported backbone is the same either way."""

import keras
import numpy as np
import pytest

from helpers import assert_round_trips_in_safe_mode, assert_two_step_fit
from method_contract import MethodContract
from ssl_zoo.backbones import stage_model
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods import build_method, extract_backbone

P = 16  # patch / tile size of the tiny models: a 2x2 last-stage map, so spatial != pooled
# No fixed input size, as in the zoo's recipes: the per-view fc learns the map size from the views.
BACKBONE = {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar"}
METHODS = {
    # name: (method parameters, views per example, crop size the transform needs)
    "relative_patch": ({"patch_size": P, "gap": 3, "jitter": 2}, 2, 60),  # 3 * 16 + 2 * 3 + 2 * 2 = 58
    "jigsaw": ({"num_permutations": 10, "tile_size": P}, 9, 51),  # cells of 17 px
}


def _method(name, **kw):
    params, _, _ = METHODS[name]
    return build_method(name, backbone=dict(BACKBONE), head_hidden_units=(16,), **{**params, **kw})


def _views(name, n=3, seed=0):
    views = METHODS[name][1]
    return np.random.default_rng(seed).uniform(0, 255, (n, views, P, P, 3)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_spatial_fusion_puts_a_shared_fc_on_each_view_s_unpooled_map(name):
    model = _method(name, fusion="spatial", per_view_units=12).build_model()
    x = _views(name)
    fused = keras.Model(model.input, model.get_layer("pretext_head").input)(x).numpy()
    views = x.shape[1]
    assert fused.shape == (3, views * 12)
    # By hand: the backbone's last-stage map of every view, through the one per-view fc.
    maps = stage_model(extract_backbone(model), ("stage4",))(x.reshape(-1, P, P, 3))["stage4"]
    assert maps.shape[1:3] == (2, 2)  # 16 px views at stride 8
    per_view = model.get_layer("pretext_head_per_view")(maps, training=False).numpy()
    np.testing.assert_allclose(fused, per_view.reshape(3, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_pooled_fusion_concatenates_the_backbone_features(name):
    model = _method(name).build_model()
    x = _views(name)
    fused = keras.Model(model.input, model.get_layer("pretext_head").input)(x).numpy()
    per_view = extract_backbone(model)(x.reshape(-1, P, P, 3)).numpy()
    np.testing.assert_allclose(fused, per_view.reshape(3, -1), rtol=1e-5, atol=1e-5)


def test_spatial_fusion_exports_the_ordinary_single_output_backbone(tmp_path):
    model = _method("relative_patch", fusion="spatial").build_model()
    x = _views("relative_patch")
    images = np.random.default_rng(3).uniform(0, 255, (2, 20, 20, 3)).astype(np.float32)
    backbone = assert_round_trips_in_safe_mode(model, x, images, tmp_path)
    assert len(backbone.outputs) == 1 and backbone.name == "backbone"
    assert backbone.output.shape[-1] == 64  # the pooled features of width 0.125 (8 * 8 channels)
    # Same variables as the pretext model's backbone: training the pretext model trains the export.
    exported = extract_backbone(model)
    assert {id(v) for v in exported.weights} <= {id(v) for v in model.weights}
    ordinary = _method("relative_patch").build_model()
    assert [w.shape for w in extract_backbone(ordinary).weights] == [w.shape for w in exported.weights]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_step_keras_fit_with_spatial_fusion(name):
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 66, 3), dtype=np.uint8)
    assert_two_step_fit(_method(name, fusion="spatial"), images, METHODS[name][2])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_unknown_fusion_is_a_config_error_before_any_model_is_built(name):
    with pytest.raises(ConfigError, match="fusion must be one of"):
        _method(name, fusion="average")


@pytest.mark.slow  # ~45 s on a busy 2-core CPU, as the other replica tests
def test_spatial_fusion_two_replicas_match_one_replica(tmp_path):
    """The per-view fc's batch norm is synchronized too: two replicas equal one on the global batch."""
    params, _, crop = METHODS["relative_patch"]
    contract = MethodContract(method={"name": "relative_patch", **params, "head_hidden_units": [16], "fusion": "spatial"},
                              image_size=crop, images=np.random.default_rng(0).integers(0, 256, (12, crop, crop, 3),
                                                                                        dtype=np.uint8))
    contract.check_replicas_match(tmp_path)
