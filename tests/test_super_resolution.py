"""Super-resolution: the shrink/enlarge transform and PSNR against NumPy, the untrained generator
returns its bicubic input, the content loss against a NumPy reference, the generator step leaves
the discriminator unchanged and vice versa, the held-out check with its baselines and picture,
and the method contract (two optimizers and a discriminator in the state: two replicas == one,
SIGKILL + resume)."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_BACKBONE
from method_contract import MethodContract
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.adversarial import conv_discriminator, discriminator_features, discriminator_step
from ssl_zoo.methods.super_resolution import SuperResolution, psnr, shrink_and_enlarge

RNG = np.random.default_rng(0)
METHOD = {"name": "super_resolution", "image_size": 16, "scale": 2, "skip_stages": ["stage2"],
          "decoder_channels": 4, "discriminator_widths": [4, 8]}
OPTIMIZERS = {"generator": {"name": "adamw", "learning_rate": 2e-3, "beta_1": 0.5, "weight_decay": 0.0},
              "discriminator": {"name": "adamw", "learning_rate": 4e-4, "beta_1": 0.5, "weight_decay": 0.0}}


def test_shrink_and_enlarge_loses_detail_but_keeps_a_smooth_image():
    smooth = np.broadcast_to(np.linspace(0, 255, 16, dtype=np.float32)[None, :, None], (16, 16, 3))
    small, enlarged = (x.numpy() for x in shrink_and_enlarge(tf.constant(smooth), 4))
    assert small.shape == (4, 4, 3) and enlarged.shape == (16, 16, 3)
    assert small.min() >= 0 and small.max() <= 255 and enlarged.min() >= 0 and enlarged.max() <= 255
    # A ramp survives (up to the clipped ends), a checkerboard of the finest period does not.
    assert np.abs(enlarged - smooth)[:, 3:-3].max() < 6.0
    checker = (np.indices((16, 16)).sum(0) % 2 * 255.0)[..., None].repeat(3, -1).astype(np.float32)
    _, blurred = shrink_and_enlarge(tf.constant(checker), 2)
    assert np.abs(blurred.numpy() - 127.5).max() < 10.0


def test_psnr_matches_the_numpy_reference():
    a, b = RNG.uniform(-1, 1, (3, 8, 8, 3)), RNG.uniform(-1, 1, (3, 8, 8, 3))
    want = 10 * np.log10(4.0 / ((a - b) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(psnr(a, b).numpy(), want, rtol=1e-5)
    assert np.isfinite(psnr(a, a).numpy()).all()


def test_untrained_generator_returns_its_bicubic_input_and_the_backbone_is_exported():
    method = SuperResolution(**{k: v for k, v in METHOD.items() if k != "name"}, backbone=dict(TINY_BACKBONE))
    model = method.build_model()
    image = tf.constant(RNG.integers(0, 256, (20, 20, 3)), tf.uint8)
    example = method.example_transform(image, 16, tf.constant([1, 2], tf.int64))
    out = model(example["inputs"][None], training=False).numpy()[0]
    np.testing.assert_allclose(out, example["targets"]["enlarged"].numpy(), atol=1e-5)
    backbone = method.export_backbone(model, method.build_state(model))
    assert len(backbone.outputs) == 1 and backbone.outputs[0].shape[-1] == backbone.get_layer("pooled").output.shape[-1]
    assert not any("pretext_head" in layer.name or "discriminator" in layer.name for layer in backbone.layers)


def test_content_loss_matches_the_numpy_reference():
    method = SuperResolution(**{k: v for k, v in METHOD.items() if k != "name"}, backbone=dict(TINY_BACKBONE))
    disc = conv_discriminator(16, (4, 8))
    real = tf.constant(RNG.uniform(-1, 1, (2, 16, 16, 3)), tf.float32)
    fake = tf.constant(RNG.uniform(-1, 1, (2, 16, 16, 3)), tf.float32)
    # The features by hand: conv -> leaky ReLU, twice.
    want, xr, xf = 0.0, real.numpy(), fake.numpy()
    for i in range(2):
        conv = disc.get_layer(f"discriminator_conv{i}")
        xr, xf = (np.where(y > 0, y, 0.2 * y) for y in (conv(xr).numpy(), conv(xf).numpy()))
        want = want + ((xr - xf) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(method.content_loss(disc, real, fake).numpy(), want / 2, rtol=1e-5)
    assert [f.shape[1] for f in discriminator_features(disc, real)] == [8, 4]
    # A constant target: no gradient reaches the real images' features.
    with tf.GradientTape() as tape:
        tape.watch(real)
        loss = tf.reduce_sum(method.content_loss(disc, real, fake))
    assert tape.gradient(loss, real) is None


def _values(variables):
    return [v.numpy().copy() for v in variables]


def test_generator_step_leaves_the_discriminator_unchanged_and_vice_versa(tmp_path):
    trainer = CONTRACT.trainer(tmp_path, epochs=1, steps_per_epoch=2)
    method, ctx = trainer.method, trainer.context
    disc = trainer.state["discriminator"]
    batch = next(iter(trainer._train_dataset(epoch=0, skip=0)))
    g_before, d_before = _values(trainer.model.trainable_variables), _values(disc.variables)

    metrics, output = tf.function(lambda b: method.generator_step(ctx, b))(batch)
    assert all((a == b.numpy()).all() for a, b in zip(d_before, disc.variables))
    assert any((a != b.numpy()).any() for a, b in zip(g_before, trainer.model.trainable_variables))
    assert output.shape == batch["targets"]["image"].shape and float(metrics["count"]) == 4
    assert float(metrics["bicubic_psnr_sum"]) > 0 and float(metrics["content_sum"]) >= 0

    g_mid = _values(trainer.model.variables)
    d_metrics = tf.function(lambda r, f: discriminator_step(disc, ctx.optimizers["discriminator"], r, f))(
        batch["targets"]["image"], output)
    assert all((a == b.numpy()).all() for a, b in zip(g_mid, trainer.model.variables))
    assert any((a != b.numpy()).any() for a, b in zip(d_before, disc.trainable_variables))
    assert float(d_metrics["discriminator_loss_sum"]) > 0


def test_bad_configuration_is_named():
    with pytest.raises(ConfigError, match="scale"):
        SuperResolution(scale=3)
    with pytest.raises(ConfigError, match="skip_stages"):
        SuperResolution(skip_stages=["stage4"])
    with pytest.raises(ConfigError, match="loss weights"):
        SuperResolution(content_weight=-1.0)
    with pytest.raises(ConfigError, match="multiple"):
        SuperResolution(image_size=20, scale=2, backbone=dict(TINY_BACKBONE))


CONTRACT = MethodContract(
    method=dict(METHOD),
    image_size=16,
    images=RNG.integers(0, 256, (12, 20, 20, 3), dtype=np.uint8),
    backbone=dict(TINY_BACKBONE),
    optimizers=OPTIMIZERS,
    keras_fit=False,  # its own step: two optimizers and a discriminator
)


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas_and_resume(tmp_path):
    CONTRACT.run_slow(tmp_path)


def test_diagnose_on_a_run_folder_writes_report_and_picture(tmp_path):
    """End to end on an untrained run folder: recorded recipe, image folder, safe-mode load,
    PSNR with both baselines (the untrained generator is the bicubic one), the picture, the
    card line."""
    from helpers import diagnose_untrained_run

    written, picture, _ = diagnose_untrained_run(tmp_path, {"name": "tiny_sr", "method": dict(METHOD),
                                                            "backbone": dict(TINY_BACKBONE), "optimizers": OPTIMIZERS})
    report = written["super_resolution_check"]
    assert report["examples"] == 8 and report["scale"] == 2
    assert report["psnr"] == pytest.approx(report["bicubic_psnr"], abs=1e-3)
    assert report["bicubic_psnr"] > report["nearest_psnr"] > 0
    assert report["picture"] == "x_pretext.png" and picture.stat().st_size > 1000
    line = SuperResolution.card_diagnostics({"super_resolution_check": report})[0]
    assert "x2" in line and f"{report['bicubic_psnr']:.2f} dB" in line
