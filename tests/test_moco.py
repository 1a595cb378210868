"""MoCo v2: InfoNCE against a NumPy reference, the key encoder's momentum update against its
formula, the queue's order (and, in the contract, its survival of SIGKILL + resume), batch norm that
cannot pair a query with its key, and the method contract."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from method_contract import MethodContract
from ssl_zoo import losses
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.moco import MoCo, grouped, key_order

IMAGES = np.random.default_rng(0).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
METHOD = {"name": "moco", "image_size": 20, "head_hidden_units": [32], "projection_dim": 8, "queue_size": 16,
          "momentum": 0.9}
# One batch-norm group in the replica check: with groups, which images share statistics depends on
# how the batch is cut over replicas (as for the paper's per-GPU shuffle BN). The groups are
# tested on their own below.
CONTRACT = MethodContract(method={**METHOD, "bn_groups": 1}, image_size=20, images=IMAGES, keras_fit=False)
SYMMETRIC = MethodContract(method={**METHOD, "bn_groups": 1, "symmetric": True}, image_size=20, images=IMAGES,
                           keras_fit=False)
GROUPED = MethodContract(method={**METHOD, "bn_groups": 2}, image_size=20, images=IMAGES, keras_fit=False)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_info_nce_matches_the_numpy_reference():
    rng = np.random.default_rng(1)
    q, k, queue = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)), rng.normal(size=(11, 7))
    k[2] = q[2] * 3  # a positive that is the query itself ranks first
    t = 0.2
    logits = np.concatenate([np.sum(_unit(q) * _unit(k), 1, keepdims=True), _unit(q) @ _unit(queue).T], 1) / t
    want = -logits[:, 0] + np.log(np.exp(logits).sum(1))
    loss, correct = losses.info_nce(q, k, queue, t)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(correct.numpy(), logits.argmax(1) == 0)
    assert bool(correct.numpy()[2])
    # Keys and queue are constants: the gradient reaches the queries only.
    qv, kv, nv = tf.Variable(q), tf.Variable(k), tf.Variable(queue)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(losses.info_nce(qv, kv, nv, t)[0])
    grads = tape.gradient(total, [qv, kv, nv])
    assert grads[0] is not None and grads[1] is None and grads[2] is None


def test_key_groups_hold_a_share_of_every_query_group():
    order = key_order(8, 2)
    np.testing.assert_array_equal(order, [0, 4, 1, 5, 2, 6, 3, 7])
    for batch, groups in [(8, 2), (12, 3), (64, 4), (256, 8)]:
        order = key_order(batch, groups)
        assert sorted(order) == list(range(batch))
        size = batch // groups
        query_group = np.arange(batch) // size
        for j in range(groups):
            members = order[j * size:(j + 1) * size]
            # A share of every query group, equal within one image: no key group is a query group.
            share = np.bincount(query_group[members], minlength=groups)
            assert share.min() >= 1 and share.max() - share.min() <= (0 if size % groups == 0 else 1), share


def test_each_view_is_normalised_with_its_own_group_only(tmp_path):
    """With 2 groups, a query equals the encoder run on its query group alone, a key the key encoder
    run on its interleaved key group alone: the statistics a query and its key were normalised with
    come from two different subsets of the batch (batch norm in training mode)."""
    trainer = GROUPED.trainer(tmp_path, steps_per_epoch=1)
    method, model = trainer.method, trainer.model
    key_encoder = trainer.state["key_encoder"]
    rng = np.random.default_rng(2)
    first = tf.constant(rng.uniform(0, 255, (4, 20, 20, 3)).astype("float32"))
    second = tf.constant(rng.uniform(0, 255, (4, 20, 20, 3)).astype("float32"))
    queries = method.queries(model, first, training=True).numpy()
    keys = method.keys(key_encoder, second, training=True).numpy()
    np.testing.assert_allclose(queries[:2], model(first[:2], training=True).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(queries[2:], model(first[2:], training=True).numpy(), rtol=1e-5, atol=1e-5)
    # key_order(4, 2) = [0, 2, 1, 3]: keys 0 and 2 share statistics, as do 1 and 3.
    for group in ([0, 2], [1, 3]):
        alone = key_encoder(tf.gather(second, group), training=True).numpy()
        np.testing.assert_allclose(keys[group], alone, rtol=1e-5, atol=1e-5)
    # And the statistics matter (the test could not pass by accident): over the whole batch at once
    # the queries differ.
    assert not np.allclose(queries, model(first, training=True).numpy(), atol=1e-4)
    assert grouped(model, first, 1, True).shape == queries.shape


def test_momentum_update_and_queue_follow_their_formulas(tmp_path):
    trainer = CONTRACT.trainer(tmp_path, epochs=2, steps_per_epoch=3)
    model, state = trainer.model, trainer.state
    key_encoder, queue, position = state["key_encoder"], state["queue"], state["queue_position"]
    start = queue.numpy().copy()
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1.0, rtol=1e-5)
    batches = itertools.chain(trainer._train_dataset(epoch=0, skip=0), trainer._train_dataset(epoch=1, skip=0))
    seen = []
    for step in range(5):  # 5 steps of 4 keys through a queue of 16: wraps around once
        batch = next(batches)
        keys_before = [w.numpy().copy() for w in key_encoder.trainable_weights]
        query_before = [w.numpy().copy() for w in model.trainable_weights]
        # The keys this step will enqueue: the key encoder after its update, on the second views.
        for k, b, q in zip(key_encoder.trainable_weights, keys_before, query_before):
            k.assign(0.9 * b + 0.1 * q)
        expected_keys = _unit(trainer.method.keys(key_encoder, batch["inputs"][1], training=True).numpy())
        for k, b in zip(key_encoder.trainable_weights, keys_before):
            k.assign(b)
        trainer.train_step(batch)
        for k, b, q in zip(key_encoder.trainable_weights, keys_before, query_before):
            np.testing.assert_allclose(k.numpy(), 0.9 * b + 0.1 * q, rtol=1e-5, atol=1e-6)
        seen.append(expected_keys)
        assert int(position.numpy()) == (4 * (step + 1)) % 16
    now = queue.numpy()
    # Slots 0-3 were written twice (steps 1 and 5): they hold step 5's keys; 4-15 steps 2-4's, in order.
    np.testing.assert_allclose(now[0:4], seen[4], rtol=1e-4, atol=1e-4)
    for step in (1, 2, 3):
        np.testing.assert_allclose(now[4 * step:4 * step + 4], seen[step], rtol=1e-4, atol=1e-4)
    # The optimizer never trains the key encoder.
    model_vars = {id(v) for v in model.trainable_variables}
    assert not any(id(v) in model_vars for v in key_encoder.weights)


def test_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


def test_symmetric_loss_is_both_directions_and_enqueues_both_keys(tmp_path):
    """`symmetric`: each view is a query against the other's key, both against the queue as it was
    before the step; the step's loss is the mean of the two directions' InfoNCE, and the queue then
    holds the second views' keys followed by the first views'."""
    trainer = SYMMETRIC.trainer(tmp_path, steps_per_epoch=1)
    method, model, state = trainer.method, trainer.model, trainer.state
    key_encoder, queue = state["key_encoder"], state["queue"]
    batch = next(iter(trainer._train_dataset(epoch=0, skip=0)))
    first, second = batch["inputs"]
    queue_before = queue.numpy().copy()
    # The key encoder after this step's momentum update (the step updates it before encoding).
    for k, q in zip(key_encoder.trainable_weights, model.trainable_weights):
        k.assign(0.9 * k + 0.1 * q)
    k2 = method.keys(key_encoder, second, training=True).numpy()
    k1 = method.keys(key_encoder, first, training=True).numpy()
    q1 = method.queries(model, first, training=True).numpy()
    q2 = method.queries(model, second, training=True).numpy()

    def reference(q, k):
        logits = np.concatenate([np.sum(_unit(q) * _unit(k), 1, keepdims=True), _unit(q) @ queue_before.T], 1) / 0.2
        return -logits[:, 0] + np.log(np.exp(logits).sum(1))

    want = np.concatenate([reference(q1, k2), reference(q2, k1)]).mean()
    keys = method._all_keys(key_encoder, (first, second), training=True)
    per_example, _ = method._info_nce(model, keys, queue, (first, second), training=True)
    np.testing.assert_allclose(float(np.mean(per_example.numpy())), want, rtol=1e-4)
    # The step itself (which moves the key encoder once more from where it was: undo the move above).
    for k, q in zip(key_encoder.trainable_weights, model.trainable_weights):
        k.assign((k - 0.1 * q) / 0.9)
    metrics = trainer.train_step(batch)
    np.testing.assert_allclose(float(metrics["loss_sum"]) / float(metrics["count"]), want, rtol=1e-4)
    assert float(metrics["count"]) == 2 * len(first)  # every view was a query
    n = len(first)
    np.testing.assert_allclose(queue.numpy()[:n], _unit(k2), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(queue.numpy()[n:2 * n], _unit(k1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(queue.numpy()[2 * n:], queue_before[2 * n:])
    assert int(state["queue_position"].numpy()) == 2 * n
    SYMMETRIC.run_fast(tmp_path / "contract")


@pytest.mark.slow
def test_contract_distributed_and_resumed(tmp_path):
    """Two replicas == one (the keys of both replicas enter the queue in replica order), and the
    queue and its position survive SIGKILL + resume (kill mid-epoch 2, after the queue wrapped)."""
    CONTRACT.run_slow(tmp_path)


@pytest.mark.slow
def test_symmetric_contract_distributed_and_resumed(tmp_path):
    """The same with both views as queries: each direction's keys enter the queue gathered from all
    replicas, so the queue's order is the single-replica one."""
    SYMMETRIC.run_slow(tmp_path)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="temperature"):
        MoCo(temperature=0)
    with pytest.raises(ConfigError, match="momentum"):
        MoCo(momentum=1.0)
    with pytest.raises(ConfigError, match="queue_size"):
        MoCo(queue_size=0)
    small = MethodContract(method={**METHOD, "queue_size": 2, "bn_groups": 1}, image_size=20, images=IMAGES,
                           keras_fit=False)
    # Refused by the trainer before anything is built or traced (one sentence, not a StagingError).
    with pytest.raises(ConfigError, match="smaller than the 4 keys"):
        small.trainer(tmp_path, steps_per_epoch=1)
    both = MethodContract(method={**METHOD, "queue_size": 6, "bn_groups": 1, "symmetric": True}, image_size=20,
                          images=IMAGES, keras_fit=False)
    with pytest.raises(ConfigError, match="smaller than the 8 keys a step enqueues .global batch 4, both views"):
        both.trainer(tmp_path / "both", steps_per_epoch=1)
    odd = MethodContract(method={**METHOD, "bn_groups": 3}, image_size=20, images=IMAGES, keras_fit=False)
    with pytest.raises(ConfigError, match="must divide the batch"):
        odd.trainer(tmp_path / "odd", steps_per_epoch=1)
