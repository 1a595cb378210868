"""Context encoder: masks cover what they say, the reconstruction and GAN losses against NumPy
references, the generator step leaves the discriminator unchanged and vice versa, the held-out
check with its baselines and picture, and the method contract (two optimizers and a
discriminator in the state: two replicas == one, SIGKILL + resume)."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_BACKBONE
from method_contract import MethodContract
from ssl_zoo import losses
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.adversarial import conv_discriminator, discriminator_step
from ssl_zoo.methods.context_encoder import ContextEncoder, onion_peel_fill
from ssl_zoo.pretext.inpainting import center_mask, fill_hole, loss_weights, masked_l2, random_region_mask

RNG = np.random.default_rng(0)
METHOD = {"name": "context_encoder", "image_size": 16, "decoder_channels": 4, "discriminator_widths": [4, 8]}
OPTIMIZERS = {"generator": {"name": "adamw", "learning_rate": 2e-3, "beta_1": 0.5, "weight_decay": 0.0},
              "discriminator": {"name": "adamw", "learning_rate": 4e-4, "beta_1": 0.5, "weight_decay": 0.0}}


def test_center_mask_is_the_central_square_of_that_area():
    mask = center_mask(32, 0.25).numpy()[..., 0]
    assert mask.sum() == 256 and mask[8:24, 8:24].all() and mask.shape == (32, 32)
    with pytest.raises(ConfigError, match="hide something"):
        center_mask(4, 0.01)


def test_random_region_mask_covers_its_area_and_follows_its_seed():
    masks = [random_region_mask(32, tf.constant([3, i], tf.int64), 0.25).numpy()[..., 0] for i in range(20)]
    for m in masks:
        assert set(np.unique(m)) <= {0.0, 1.0} and m.sum() == 256
    assert not all((m == masks[0]).all() for m in masks[1:])  # placed differently per seed
    again = random_region_mask(32, tf.constant([3, 0], tf.int64), 0.25).numpy()[..., 0]
    np.testing.assert_array_equal(again, masks[0])
    # Over 20 seeds, most of the image is sometimes hidden: the hole has no fixed place.
    assert (np.mean(masks, axis=0) > 0).mean() > 0.9


def test_loss_weights_are_one_in_the_hole_and_heavier_on_the_overlap_ring():
    hole = center_mask(32, 0.25)
    w = loss_weights(hole, 1, 10.0).numpy()[..., 0]
    assert (w[8:24, 8:24] == 1.0).all()
    assert (w == 10.0).sum() == 18 * 18 - 16 * 16 and (w[7:25, 7:25] > 0).all()
    assert (w == 0.0).sum() == 32 * 32 - 18 * 18
    np.testing.assert_array_equal(loss_weights(hole, 0, 10.0), hole)


def test_fill_hides_only_the_hole():
    image = RNG.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    hole = center_mask(16, 0.25)
    filled = fill_hole(image, hole, tf.constant([1.0, 2.0, 3.0])).numpy()
    inside = hole.numpy()[..., 0] > 0
    np.testing.assert_array_equal(filled[inside], np.tile([1.0, 2.0, 3.0], (inside.sum(), 1)))
    np.testing.assert_array_equal(filled[~inside], image[~inside])


def test_masked_l2_matches_the_numpy_reference():
    target, prediction = RNG.normal(size=(3, 8, 8, 3)), RNG.normal(size=(3, 8, 8, 3))
    hole = np.stack([center_mask(8, 0.25).numpy(), random_region_mask(8, tf.constant([1, 2], tf.int64)).numpy(),
                     center_mask(8, 0.25).numpy()])
    weights = loss_weights(tf.constant(hole), 1, 10.0).numpy()
    want = (weights * (prediction - target) ** 2).sum(axis=(1, 2, 3)) / (3 * hole.sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(masked_l2(target, prediction, weights, hole).numpy(), want, rtol=1e-5)


def test_gan_losses_match_the_numpy_reference():
    real, fake = RNG.normal(size=(6, 1)) * 3, RNG.normal(size=(6, 1)) * 3
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(losses.gan_discriminator_loss(real, fake).numpy(),
                               (-np.log(sigmoid(real)) - np.log(1 - sigmoid(fake)))[:, 0], rtol=1e-5)
    np.testing.assert_allclose(losses.gan_generator_loss(fake).numpy(), -np.log(sigmoid(fake))[:, 0], rtol=1e-5)
    # Stable where a naive log(sigmoid) would give inf.
    assert np.isfinite(losses.gan_discriminator_loss(np.array([[-200.0]]), np.array([[200.0]])).numpy()).all()


def test_onion_peel_fills_a_constant_image_with_its_constant():
    image = np.full((2, 16, 16, 3), 0.3, np.float32)
    hole = tf.constant(np.stack([center_mask(16, 0.25).numpy()] * 2))
    filled = onion_peel_fill(fill_hole(image, hole, -1.0), hole).numpy()
    np.testing.assert_allclose(filled, image, atol=1e-6)


def _trainer(tmp_path):
    return CONTRACT.trainer(tmp_path, epochs=1, steps_per_epoch=2)


def _values(variables):
    return [v.numpy().copy() for v in variables]


def test_generator_step_leaves_the_discriminator_unchanged_and_vice_versa(tmp_path):
    trainer = _trainer(tmp_path)
    method, ctx = trainer.method, trainer.context
    disc = trainer.state["discriminator"]
    batch = next(iter(trainer._train_dataset(epoch=0, skip=0)))
    g_before, d_before = _values(trainer.model.trainable_variables), _values(disc.variables)

    @tf.function
    def g_step(b):
        return method.generator_step(ctx, b)

    metrics, completed = g_step(batch)
    assert all((a == b.numpy()).all() for a, b in zip(d_before, disc.variables))
    assert any((a != b.numpy()).any() for a, b in zip(g_before, trainer.model.trainable_variables))
    # The completed image keeps every visible pixel of the real one.
    visible = batch["targets"]["hole"].numpy() == 0
    np.testing.assert_allclose(completed.numpy()[np.broadcast_to(visible, completed.shape)],
                               batch["targets"]["image"].numpy()[np.broadcast_to(visible, completed.shape)])
    assert float(metrics["count"]) == 4 and float(metrics["fill_error_sum"]) > 0

    g_mid = _values(trainer.model.variables)
    d_metrics = tf.function(lambda r, f: discriminator_step(disc, ctx.optimizers["discriminator"], r, f))(
        batch["targets"]["image"], completed)
    assert all((a == b.numpy()).all() for a, b in zip(g_mid, trainer.model.variables))
    assert any((a != b.numpy()).any() for a, b in zip(d_before, disc.trainable_variables))
    assert 0 <= float(d_metrics["d_real_sum"]) <= 4 and float(d_metrics["discriminator_loss_sum"]) > 0


def test_discriminator_learns_to_tell_real_from_fake():
    disc = conv_discriminator(8, (4, 8))
    import keras

    opt = keras.optimizers.Adam(1e-2)
    real = tf.constant(RNG.uniform(0.5, 1.0, (16, 8, 8, 3)), tf.float32)
    fake = tf.constant(RNG.uniform(-1.0, -0.5, (16, 8, 8, 3)), tf.float32)
    first = float(discriminator_step(disc, opt, real, fake)["discriminator_loss_sum"])
    for _ in range(30):
        last = discriminator_step(disc, opt, real, fake)
    assert float(last["discriminator_loss_sum"]) < 0.2 * first
    assert float(last["d_real_sum"]) > 15 and float(last["d_fake_sum"]) < 1


def test_bad_configuration_is_named():
    with pytest.raises(ConfigError, match="mask"):
        ContextEncoder(mask="square")
    with pytest.raises(ConfigError, match="hole_area"):
        ContextEncoder(hole_area=1.5)
    with pytest.raises(ConfigError, match="multiple"):
        ContextEncoder(image_size=20, backbone=dict(TINY_BACKBONE))


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
    held-out errors with both baselines, the picture, the card line."""
    from helpers import diagnose_untrained_run

    written, picture, _ = diagnose_untrained_run(tmp_path, {"name": "tiny_ce", "method": dict(METHOD),
                                                            "backbone": dict(TINY_BACKBONE), "optimizers": OPTIMIZERS})
    report = written["inpainting_check"]
    assert report["examples"] == 8 and report["mask"] == "random_region"
    assert report["fill_error"] > 0 and report["context_fill_error"] > 0 and report["hole_error"] > 0
    assert report["picture"] == "x_pretext.png" and picture.stat().st_size > 1000
    line = ContextEncoder.card_diagnostics({"inpainting_check": report})[0]
    assert "random region holes of 25%" in line and f"{report['fill_error']:.4f}" in line


def test_card_has_loss_curves_from_the_history(tmp_path):
    from ssl_zoo.methods import training_curves

    history = [{"epoch": 1, "step": 10, "seconds": 3.0, "train_loss": 0.9, "train_hole_error": 0.2,
                "eval_loss": 1.0, "eval_hole_error": 0.25, "learning_rate_generator": 1e-3},
               {"epoch": 2, "step": 20, "seconds": 3.0, "train_loss": 0.5, "train_hole_error": 0.1}]
    meta = {"name": "x", "history": history}
    lines = training_curves.card_lines(meta, "x_training.png")
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| epoch | train loss | eval loss | train hole_error | eval hole_error |"
    assert table[1] == "| 1 | 0.9 | 1 | 0.2 | 0.25 |" and table[2] == "| 2 | 0.5 | - | 0.1 | - |"
    assert "![Training curves](x_training.png)\n" in lines
    path = training_curves.card_plot(meta, tmp_path / ".x_training.partial.png")
    assert path.stat().st_size > 1000
    assert training_curves.card_plot({"name": "x", "history": []}, tmp_path / "none.png") is None
    # The methods that use it: the card writer finds them through the registry.
    from ssl_zoo.cards import plot_method_training

    assert plot_method_training({"name": "x", "history": history, "method": {"name": "context_encoder"}},
                                tmp_path / "ce.png") is not None
