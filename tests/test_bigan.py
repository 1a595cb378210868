"""BiGAN: z comes from the example seed (a resumed run draws the same), the generator and joint
discriminator's shapes, the swapped-label losses against NumPy, the E/G step leaves the
discriminator unchanged and vice versa, the held-out check with its baselines and picture, and
the method contract (two optimizers and a discriminator in the state: two replicas == one,
SIGKILL + resume)."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_BACKBONE
from method_contract import MethodContract
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.adversarial import discriminator_step
from ssl_zoo.methods.bigan import BiGAN, dcgan_generator, joint_discriminator

RNG = np.random.default_rng(0)
METHOD = {"name": "bigan", "image_size": 16, "latent_dim": 8, "generator_channels": 4,
          "discriminator_widths": [4, 8], "discriminator_hidden": 16}
OPTIMIZERS = {"generator": {"name": "adamw", "learning_rate": 4e-4, "beta_1": 0.5, "weight_decay": 0.0},
              "discriminator": {"name": "adamw", "learning_rate": 4e-4, "beta_1": 0.5, "weight_decay": 0.0}}


def _method():
    return BiGAN(**{k: v for k, v in METHOD.items() if k != "name"}, backbone=dict(TINY_BACKBONE))


def test_z_is_drawn_from_the_example_seed():
    method = _method()
    image = tf.constant(RNG.integers(0, 256, (20, 20, 3)), tf.uint8)
    a = method.example_transform(image, 16, tf.constant([5, 1], tf.int64))
    again = method.example_transform(image, 16, tf.constant([5, 1], tf.int64))
    other = method.example_transform(image, 16, tf.constant([5, 2], tf.int64))
    z = a["inputs"]["z"].numpy()
    np.testing.assert_array_equal(z, again["inputs"]["z"].numpy())
    assert not np.allclose(z, other["inputs"]["z"].numpy())
    assert z.shape == (8,) and z.min() >= -1 and z.max() <= 1
    np.testing.assert_allclose(a["targets"]["image"].numpy(), a["inputs"]["images"].numpy() / 127.5 - 1, atol=1e-6)


def test_generator_draws_images_in_range_and_the_discriminator_judges_pairs():
    gen = dcgan_generator(8, 32, 4)
    images = gen(tf.constant(RNG.uniform(-1, 1, (3, 8)), tf.float32)).numpy()
    assert images.shape == (3, 32, 32, 3) and np.abs(images).max() <= 1
    disc = joint_discriminator(32, 8, (4, 8), 16)
    logits = disc([images, RNG.uniform(-1, 1, (3, 8)).astype(np.float32)])
    assert logits.shape == (3, 1)
    # The code matters to the judgement: the same image with another code gets another logit.
    other = disc([images, RNG.uniform(-1, 1, (3, 8)).astype(np.float32)])
    assert not np.allclose(logits.numpy(), other.numpy())
    with pytest.raises(ConfigError, match="power of 2"):
        BiGAN(image_size=24)


def test_swapped_label_losses_match_the_numpy_reference(tmp_path):
    trainer = CONTRACT.trainer(tmp_path, epochs=1, steps_per_epoch=2)
    batch = next(iter(trainer._train_dataset(epoch=0, skip=0)))
    per_example, parts = trainer.method._losses(trainer.model, trainer.state["discriminator"], batch, training=False)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    real, fake = parts["real_logits"].numpy()[:, 0], parts["fake_logits"].numpy()[:, 0]
    # E: -log(1 - sigmoid(real)) = softplus(real); G: -log sigmoid(fake) = softplus(-fake).
    np.testing.assert_allclose(parts["encoder"].numpy(), softplus(real), rtol=1e-5)
    np.testing.assert_allclose(per_example.numpy(), softplus(real) + softplus(-fake), rtol=1e-5)
    np.testing.assert_array_equal(parts["fake"][1].numpy(), batch["inputs"]["z"].numpy())


def _values(variables):
    return [v.numpy().copy() for v in variables]


def test_encoder_generator_step_leaves_the_discriminator_unchanged_and_vice_versa(tmp_path):
    trainer = CONTRACT.trainer(tmp_path, epochs=1, steps_per_epoch=2)
    method, ctx = trainer.method, trainer.context
    disc = trainer.state["discriminator"]
    batch = next(iter(trainer._train_dataset(epoch=0, skip=0)))
    encoder = trainer.model.get_layer("backbone").trainable_variables
    generator = trainer.model.get_layer("generator").trainable_variables
    e_before, g_before, d_before = _values(encoder), _values(generator), _values(disc.variables)

    metrics, (real, fake) = tf.function(lambda b: method.generator_step(ctx, b))(batch)
    assert all((a == b.numpy()).all() for a, b in zip(d_before, disc.variables))
    # Both halves move: E and G share the one "generator" optimizer.
    assert any((a != b.numpy()).any() for a, b in zip(e_before, encoder))
    assert any((a != b.numpy()).any() for a, b in zip(g_before, generator))
    assert float(metrics["count"]) == 4 and real[1].shape == (4, 8) and fake[0].shape == (4, 16, 16, 3)

    model_mid = _values(trainer.model.variables)
    d_metrics = tf.function(lambda r, f: discriminator_step(disc, ctx.optimizers["discriminator"], r, f))(real, fake)
    assert all((a == b.numpy()).all() for a, b in zip(model_mid, trainer.model.variables))
    assert any((a != b.numpy()).any() for a, b in zip(d_before, disc.trainable_variables))
    assert float(d_metrics["discriminator_loss_sum"]) > 0


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
    reconstruction and code errors with their baselines, the picture, the card line."""
    from helpers import diagnose_untrained_run

    written, picture, _ = diagnose_untrained_run(tmp_path, {"name": "tiny_bigan", "method": dict(METHOD),
                                                            "backbone": dict(TINY_BACKBONE), "optimizers": OPTIMIZERS})
    report = written["bigan_check"]
    assert report["examples"] == 8
    for key in ("reconstruction_error", "other_image_error", "code_error", "other_code_error"):
        assert report[key] > 0
    assert report["picture"] == "x_pretext.png" and picture.stat().st_size > 1000
    line = BiGAN.card_diagnostics({"bigan_check": report})[0]
    assert f"{report['reconstruction_error']:.4f}" in line and f"{report['other_code_error']:.4f}" in line


def test_held_out_report_is_the_mean_per_image_and_refuses_too_few_images():
    """The report the generative methods' `diagnose` share: sums over images become means, and a
    split too small for BiGAN's other-image baseline is one sentence naming the check and split."""
    from types import SimpleNamespace

    from ssl_zoo.methods.held_out import held_out_means

    recipe = SimpleNamespace(data=SimpleNamespace(source="folder:images", eval_split="test"))
    report = held_out_means(_method(), {"reconstruction_error": 3.0, "count": 4.0}, recipe, None, "BiGAN check",
                            least=2)
    assert report["examples"] == 4 and report["split"] == "test" and report["reconstruction_error"] == 0.75
    assert report["method"]["latent_dim"] == 8 and "backbone" not in report["method"]
    with pytest.raises(ConfigError, match=r"BiGAN check: needs at least 2 images in split 'val', found 1"):
        held_out_means(_method(), {"reconstruction_error": 3.0, "count": 1.0}, recipe, "val", "BiGAN check", least=2)
