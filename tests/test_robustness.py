"""FGSM and PGD against their definitions on a model whose gradient is known, and the accuracy
report on a toy classifier."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssl_zoo.errors import ConfigError
from ssl_zoo.evaluation.robustness import fgsm, pgd, robust_accuracy


def _linear_model(weights):
    """Logits = x.flatten() @ W: d loss / d x is known in closed form."""
    inputs = keras.Input((2, 2, 3))
    dense = keras.layers.Dense(weights.shape[1], use_bias=False)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([weights])
    return model


def test_fgsm_moves_each_pixel_by_epsilon_along_the_gradient_sign():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 3)).astype(np.float32)
    model = _linear_model(w)
    x = rng.uniform(20, 230, (4, 2, 2, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    logits = x.reshape(4, -1) @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(3)[y]) @ w.T  # d CE / d x for logits = x W
    want = np.clip(x + 8 * np.sign(grad).reshape(x.shape), 0, 255)
    np.testing.assert_allclose(fgsm(model, x, y, 8.0).numpy(), want, rtol=1e-6, atol=1e-4)
    # Pixels at the range's edge stay in [0, 255].
    edge = np.zeros_like(x)
    assert float(tf.reduce_min(fgsm(model, edge, y, 8.0))) >= 0.0


def test_pgd_stays_in_the_ball_and_the_range_and_hurts_at_least_as_much_as_fgsm():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(12, 3)).astype(np.float32) * 0.05
    model = _linear_model(w)
    x = rng.uniform(0, 255, (64, 2, 2, 3)).astype(np.float32)
    y = np.argmax(x.reshape(64, -1) @ w, 1)  # the model is right on every clean image
    adv = pgd(model, x, y, 6.0, steps=10, seed=3).numpy()
    assert np.abs(adv - x).max() <= 6.0 + 1e-4 and adv.min() >= 0 and adv.max() <= 255
    np.testing.assert_array_equal(adv, pgd(model, x, y, 6.0, steps=10, seed=3).numpy())  # seeded start

    def accuracy(images):
        return float(np.mean(np.argmax(model(images), 1) == y))

    assert accuracy(x) == 1.0
    assert accuracy(adv) <= accuracy(fgsm(model, x, y, 6.0)) + 1 / 64 and accuracy(adv) < 1.0


def test_robust_accuracy_report():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(12, 3)).astype(np.float32) * 0.05
    model = _linear_model(w)
    x = rng.uniform(0, 255, (10, 2, 2, 3)).astype(np.float32)
    y = np.argmax(x.reshape(10, -1) @ w, 1)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    report = robust_accuracy(model, ds, epsilons=(1.0, 8.0), pgd_steps=3, max_examples=7)
    assert report["num_examples"] == 7
    acc = report["accuracy"]
    assert set(acc) == {"clean", "fgsm_eps1", "fgsm_eps8", "pgd3_eps1", "pgd3_eps8"}
    assert acc["clean"] == 1.0 and acc["pgd3_eps8"] <= acc["pgd3_eps1"] <= 1.0
    with pytest.raises(ConfigError, match="epsilons"):
        robust_accuracy(model, ds, epsilons=(0.0,))
