import numpy as np
import keras
import pytest

from ssl_zoo.backbones import STAGES, build_backbone, resnet, stage_model


def test_cifar_stem_stage_shapes():
    model = resnet(18, 0.125, "cifar", 32)
    outs = stage_model(model, STAGES)(np.zeros((2, 32, 32, 3), np.float32))
    shapes = {k: tuple(v.shape) for k, v in outs.items()}
    assert shapes == {
        "stem": (2, 32, 32, 8), "stage1": (2, 32, 32, 8), "stage2": (2, 16, 16, 16),
        "stage3": (2, 8, 8, 32), "stage4": (2, 4, 4, 64), "pooled": (2, 64),
    }


def test_imagenet_stem_and_bottleneck():
    model = resnet(50, 0.125, "imagenet", 64)
    outs = stage_model(model, ["stem", "stage4", "pooled"])(np.zeros((1, 64, 64, 3), np.float32))
    assert tuple(outs["stem"].shape) == (1, 16, 16, 8)  # /2 conv, /2 max-pool
    assert tuple(outs["stage4"].shape) == (1, 2, 2, 64 * 4)  # bottleneck expansion 4
    assert tuple(outs["pooled"].shape) == (1, 256)


@pytest.mark.parametrize("depth,blocks", [(18, 8), (34, 16), (50, 16)])
def test_depths_have_the_papers_block_counts(depth, blocks):
    model = resnet(depth, 0.125, "cifar", 16)
    adds = [layer for layer in model.layers if layer.name.endswith("_add")]
    assert len(adds) == blocks


def test_config_round_trip_gives_the_same_function():
    model = build_backbone({"arch": "resnet", "depth": 18, "width": 0.125, "image_size": 16})
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x), clone(x), atol=1e-6)
    assert [w.shape for w in model.weights] == [w.shape for w in clone.weights]


def test_keras_file_loads_in_safe_mode_without_custom_objects(tmp_path):
    model = resnet(18, 0.125, "cifar", 16)
    path = tmp_path / "backbone.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    x = np.full((1, 16, 16, 3), 128.0, np.float32)
    np.testing.assert_allclose(model(x), loaded(x), atol=1e-6)
    assert loaded.get_layer("stage3") is not None


def test_normalisation_is_inside_the_model():
    model = resnet(18, 0.125, "cifar", 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    norm = keras.Model(model.input, model.get_layer("normalize").output)
    out = norm(np.full((1, 16, 16, 3), 255.0 * 0.75, np.float32))
    np.testing.assert_allclose(out, np.ones((1, 16, 16, 3)), atol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="depth"):
        resnet(19)
    with pytest.raises(ValueError, match="stem"):
        resnet(18, stem="vit")
    with pytest.raises(ValueError, match="unknown stages"):
        stage_model(resnet(18, 0.125, image_size=16), ["stage9"])


def test_sobel_front_is_grey_gradients_frozen_and_survives_loading_floor_and_unfreezing(tmp_path):
    import scipy.ndimage

    import ssl_zoo
    from ssl_zoo.evaluation.run import random_init_like

    model = resnet(18, 0.125, "cifar", 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), sobel=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    front = keras.Model(model.input, model.get_layer("sobel_gradients").output)
    grey = ((x / 255.0 - 0.5) / 0.25).mean(-1)
    for i in range(2):
        # Conv2D is a correlation: its "x" kernel [1 0 -1] is d/dx with the sign of left minus right.
        gx = scipy.ndimage.correlate(grey[i], np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], float), mode="constant")
        gy = scipy.ndimage.correlate(grey[i], np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float), mode="constant")
        np.testing.assert_allclose(np.asarray(front(x))[i], np.stack([gx, gy], -1), atol=2e-4)
    assert {w.path.split("/")[0] for w in model.non_trainable_weights} >= {"sobel_grey", "sobel_gradients"}
    assert not any(w.path.startswith("sobel") for w in model.trainable_weights)

    model.save(tmp_path / "sobel.keras")
    loaded = ssl_zoo.load_backbone(tmp_path / "sobel.keras")  # trainable=True by default
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
    assert not any(w.path.startswith("sobel") for w in loaded.trainable_weights)
    floor = random_init_like(model, seed=1)
    np.testing.assert_array_equal(floor.get_layer("sobel_gradients").get_weights()[0],
                                  model.get_layer("sobel_gradients").get_weights()[0])
    assert not np.allclose(floor.get_layer("stem_conv").get_weights()[0], model.get_layer("stem_conv").get_weights()[0])


def test_pytorch_init_draws_torchs_default_scale_and_keeps_the_architecture():
    """init = "pytorch": kernels uniform in +-1/sqrt(fan_in) and every gamma 1 (PyTorch's defaults);
    the saved config is the zoo init's, and fixed filters (the grey front) are left alone."""
    import keras

    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.errors import ConfigError

    config = {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": 16, "grey": True}
    zoo = build_backbone(config, name="b")
    torch_like = build_backbone({**config, "init": "pytorch"}, name="b")
    assert zoo.get_config() == torch_like.get_config()
    np.testing.assert_array_equal(zoo.get_layer("grey").get_weights()[0], torch_like.get_layer("grey").get_weights()[0])
    for layer in torch_like.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.trainable:
            kernel = np.asarray(layer.kernel)
            bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
            assert 0.9 * bound < np.abs(kernel).max() <= bound * (1 + 1e-6)
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(np.asarray(layer.gamma), 1.0)
    zero_gamma = [layer for layer in zoo.layers if isinstance(layer, keras.layers.BatchNormalization)
                  and not np.asarray(layer.gamma).any()]
    assert len(zero_gamma) == 8  # the last batch norm of each of ResNet-18's residual branches
    with pytest.raises(ConfigError, match="init must be one of"):
        build_backbone({**config, "init": "torch"})


def test_stem_without_relu_only_drops_the_activation():
    """stem_relu = false (LightlySSL's `children()` backbone): the same weights, the stem's output is
    its batch norm's (negative values kept), the ReLU the only difference."""
    from ssl_zoo.backbones import build_backbone

    for stem in ("cifar", "imagenet"):
        config = {"arch": "resnet", "depth": 18, "width": 0.125, "stem": stem, "image_size": 32}
        with_relu = build_backbone(config, name="b")
        without = build_backbone({**config, "stem_relu": False}, name="b")
        names = {layer.name for layer in without.layers}
        assert "stem_relu" in {layer.name for layer in with_relu.layers} and "stem_relu" not in names
        assert with_relu.count_params() == without.count_params()
        without.set_weights(with_relu.get_weights())
        images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
        stem_out = np.asarray(keras_stage(without, "stem")(images))
        if stem == "cifar":  # the batch norm's output itself (the ImageNet stem max-pools it after)
            assert stem_out.min() < 0
        # ReLU commutes with the max-pool, so with the same weights the stems differ by the ReLU alone.
        np.testing.assert_allclose(np.maximum(stem_out, 0), np.asarray(keras_stage(with_relu, "stem")(images)),
                                   atol=1e-5)


def keras_stage(model, name):
    import keras

    return keras.Model(model.input, model.get_layer(name).output)
