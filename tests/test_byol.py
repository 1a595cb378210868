"""BYOL: its loss against a NumPy reference, the EMA target against its formula at a given step
(and never trained by the optimizer), and the method contract."""

import numpy as np
import pytest
import tensorflow as tf

from method_contract import MethodContract
from ssl_zoo.methods.byol import BYOL, byol_loss, byol_momentum

IMAGES = np.random.default_rng(0).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
CONTRACT = MethodContract(
    method={"name": "byol", "image_size": 20, "head_hidden_units": [32], "projection_dim": 8,
            "predictor_hidden_units": [16], "base_momentum": 0.9},
    image_size=20,
    images=IMAGES,
    keras_fit=False,
)


def test_loss_matches_the_numpy_reference():
    rng = np.random.default_rng(1)
    p, z = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    want = 2 - 2 * np.sum(p * z, axis=1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1))
    np.testing.assert_allclose(byol_loss(p, z).numpy(), want, rtol=1e-5, atol=1e-6)
    # The target side is a constant: no gradient reaches it.
    zt = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(byol_loss(tf.constant(p), zt))
    assert tape.gradient(loss, zt) is None


def test_momentum_follows_the_cosine_schedule():
    assert float(byol_momentum(0.996, 0, 100)) == pytest.approx(0.996)
    assert float(byol_momentum(0.996, 100, 100)) == pytest.approx(1.0)
    assert float(byol_momentum(0.996, 50, 100)) == pytest.approx(0.998, abs=1e-6)


def test_target_is_the_ema_of_the_online_encoder_at_that_step(tmp_path):
    trainer = CONTRACT.trainer(tmp_path, epochs=2, steps_per_epoch=3)
    model, target = trainer.model, trainer.state["target"]
    online_names = [w.path for w in model.get_layer("backbone").trainable_weights
                    + model.get_layer("pretext_head").trainable_weights]
    batches = iter(trainer._train_dataset(epoch=0, skip=0))
    trainer.train_step(next(batches))  # step 0 -> 1
    before_target = [w.numpy().copy() for w in target.trainable_weights]
    trainer.train_step(next(batches))  # the step at k = 1 of K = 6
    online = [w.numpy() for w in model.get_layer("backbone").trainable_weights
              + model.get_layer("pretext_head").trainable_weights]
    tau = 1 - (1 - 0.9) * (np.cos(np.pi * 1 / 6) + 1) / 2
    assert len(online) == len(target.trainable_weights) == len(online_names)
    for t, b, o in zip(target.trainable_weights, before_target, online):
        np.testing.assert_allclose(t.numpy(), tau * b + (1 - tau) * o, rtol=1e-5, atol=1e-6)
    # The optimizer never touches the target: none of its variables is trainable in the model.
    model_vars = {id(v) for v in model.trainable_variables}
    assert not any(id(v) in model_vars for v in target.weights)


def test_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_contract_distributed_and_resumed(tmp_path):
    CONTRACT.run_slow(tmp_path)


def test_bad_momentum_is_named():
    from ssl_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="base_momentum"):
        BYOL(base_momentum=1.0)


def test_batch_norm_over_each_view_calls_both_networks_once_per_view():
    """"each": the online and the target network are called once per view (each batch normalised
    by its own statistics, as the BYOL authors' code); "both": one call on the 2N views. They differ
    in training mode and agree in inference mode (moving statistics)."""
    from ssl_zoo.errors import ConfigError

    settings = dict(image_size=20, head_hidden_units=(16,), projection_dim=8, predictor_hidden_units=(16,))
    both, each = BYOL(**settings), BYOL(**settings, batch_norm_views="each")
    model = both.build_model()
    target = both.build_state(model)["target"]
    views = [tf.constant(v / 1.0, tf.float32) for v in (IMAGES[:4], IMAGES[4:8])]
    p1, p2 = (model(v, training=True)["prediction"] for v in views)
    z1, z2 = (target(v, training=True) for v in views)
    reference = np.concatenate([byol_loss(p1, z2), byol_loss(p2, z1)])
    np.testing.assert_allclose(each._forward(model, target, views, training=True)[0], reference,
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(both._forward(model, target, views, training=True)[0], reference, atol=1e-3)
    np.testing.assert_allclose(both._forward(model, target, views, training=False)[0],
                               each._forward(model, target, views, training=False)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="batch_norm_views"):
        BYOL(batch_norm_views="per_view")


def test_held_out_accuracy_leaves_out_the_target_of_the_predictions_own_view():
    """A prediction equal to its own view's target projection (which the metric must leave out)
    and next nearest to its other view's counts as correct; one nearest another image's target does
    not. Rows: [view 1; view 2] predictions; keys: [view 2; view 1] targets, as `_forward` gives."""
    rng = np.random.default_rng(3)
    z1 = rng.normal(size=(3, 8)).astype(np.float32)
    z2 = z1 + 0.1 * rng.normal(size=(3, 8)).astype(np.float32)
    p1, p2 = z1.copy(), z2.copy()
    p1[2] = z2[0]  # image 2's first view predicts image 0's second view
    metrics = BYOL._metrics(tf.zeros(6), tf.constant(np.concatenate([p1, p2])), tf.constant(np.concatenate([z2, z1])))
    assert float(metrics["correct"]) == 5.0 and float(metrics["count"]) == 6.0
    # The metric of the runs made before: the own view's target is a candidate, and wins every row.
    earlier = BYOL._metrics(tf.zeros(6), tf.constant(np.concatenate([p1, p2])), tf.constant(np.concatenate([z2, z1])),
                            count_own_view_target=True)
    assert float(earlier["correct"]) == 0.0
    # A card says which of the two its number is: records made before the option have no such field.
    from ssl_zoo.cards import method_card
    card = method_card("byol")
    assert "but that of its own view" in card.pretext_eval_text({"name": "byol", "count_own_view_target": False})
    assert "its own view included" in card.pretext_eval_text({"name": "byol"})
