"""PIRL: the memory-bank contrast against a NumPy reference (own-image negatives masked), the
memory bank's mixing update indexed by example, negatives drawn as a pure function of the step,
the jigsaw view really being the jigsaw transform, and the method contract (the memory bank
survives SIGKILL + resume; two replicas == one, with both replicas' images mixed in)."""

import numpy as np
import pytest
import tensorflow as tf

from method_contract import MethodContract
from ssl_zoo import losses
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.pirl import PIRL, memory_bank_contrast, random_permutations
from ssl_zoo.pretext.jigsaw import jigsaw_example

IMAGES = np.random.default_rng(0).integers(0, 256, (12, 24, 24, 3), dtype=np.uint8)
METHOD = {"name": "pirl", "image_size": 16, "tile_size": 6, "projection_dim": 8, "tile_units": 4,
          "num_negatives": 8, "num_permutations": 10, "temperature": 0.2}
CONTRACT = MethodContract(method={**METHOD, "memory_init": "features"}, image_size=24, images=IMAGES, keras_fit=False)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_memory_bank_contrast_matches_the_numpy_reference():
    rng = np.random.default_rng(1)
    memory = _unit(rng.normal(size=(20, 6))).astype(np.float32)
    q = rng.normal(size=(4, 6)).astype(np.float32)
    index = np.array([3, 7, 11, 0])
    negatives = np.array([5, 7, 9, 0, 0, 14])  # image 7's and image 0's own entries are among them
    t = 0.1
    loss, correct = memory_bank_contrast(q, memory, index, negatives, t)
    for b in range(4):
        keep = negatives != index[b]
        logits = np.concatenate([[_unit(q[b]) @ memory[index[b]]], _unit(q[b]) @ memory[negatives[keep]].T]) / t
        want = -logits[0] + np.log(np.exp(logits).sum())
        np.testing.assert_allclose(loss.numpy()[b], want, rtol=1e-5, atol=1e-5)
        assert bool(correct.numpy()[b]) == (logits.argmax() == 0)
    # A query equal to its own entry, with that entry also drawn as a negative twice, still wins.
    loss, correct = memory_bank_contrast(memory[[0]] * 5, memory, [0], negatives, t)
    assert bool(correct.numpy()[0])
    # Without the mask the same query is penalised by its own entry among the negatives.
    unmasked, _ = losses.info_nce(memory[[0]], memory[[0]], memory[negatives], t)
    assert float(unmasked[0]) > float(loss[0]) + 0.5


def test_memory_update_mixes_each_image_s_entry_by_its_index(tmp_path):
    trainer = CONTRACT.trainer(tmp_path, steps_per_epoch=3)
    memory = trainer.state["memory"]
    start = memory.numpy().copy()
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1.0, rtol=1e-5)
    batch = next(iter(trainer._train_dataset(epoch=0, skip=0)))
    index = batch["index"].numpy()
    before_weights = [w.numpy().copy() for w in trainer.model.weights]
    f = trainer.model(batch["inputs"], training=True)["image"].numpy()
    for w, b in zip(trainer.model.weights, before_weights):  # undo the BN statistics that call moved
        w.assign(b)
    trainer.train_step(batch)
    now = memory.numpy()
    want = _unit(0.5 * start[index] + 0.5 * _unit(f))
    np.testing.assert_allclose(now[index], want, rtol=1e-4, atol=1e-5)
    others = np.setdiff1d(np.arange(len(IMAGES)), index)
    np.testing.assert_array_equal(now[others], start[others])
    assert len(index) == 4 and len(set(index)) == 4
    # The optimizer never trains the bank.
    assert not any(v is memory for v in trainer.model.trainable_variables)


def test_memory_filled_from_features_before_the_first_epoch_only(tmp_path):
    contract = MethodContract(method={**METHOD, "memory_init": "features"}, image_size=24, images=IMAGES,
                              keras_fit=False)
    trainer = contract.trainer(tmp_path, steps_per_epoch=3)
    method, model, memory = trainer.method, trainer.model, trainer.state["memory"]
    random_start = memory.numpy().copy()
    trainer._epoch_hook(0)
    filled = memory.numpy()
    views = np.stack([method.centre_view(tf.constant(im), 24, None)["inputs"].numpy() for im in IMAGES])
    # The pass runs in index order, a global batch (4) at a time, batch norm on each batch's statistics.
    f = np.concatenate([method.embed_views(model, None, views[i:i + 4]).numpy() for i in range(0, 12, 4)])
    np.testing.assert_allclose(filled, f, rtol=1e-4, atol=1e-5)
    assert not np.allclose(filled, random_start)
    trainer._epoch_hook(1)  # a later epoch leaves the bank alone
    np.testing.assert_array_equal(memory.numpy(), filled)
    with pytest.raises(ConfigError, match="memory_init"):
        PIRL(**{k: v for k, v in METHOD.items() if k != "name"}, memory_init="zeros")


def test_negatives_are_a_pure_function_of_the_step():
    method = PIRL(**{k: v for k, v in METHOD.items() if k != "name"})
    method.num_examples = 50
    a, b, c = method.negatives(3), method.negatives(3), method.negatives(4)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    assert a.shape == (8,) and 0 <= int(tf.reduce_min(a)) and int(tf.reduce_max(a)) < 50


def test_the_puzzle_is_the_jigsaw_transform_of_the_same_image():
    method = PIRL(**{k: v for k, v in METHOD.items() if k != "name"})
    image = tf.constant(IMAGES[0])
    seed = tf.constant([4, 2], tf.int64)
    out = method.example_transform(image, 24, seed, training=True)
    assert set(out) == {"inputs"} and set(out["inputs"]) == {"image", "tiles"}
    assert out["inputs"]["image"].shape == (16, 16, 3)
    assert out["inputs"]["tiles"].shape == (9, 6, 6, 3)
    _, tile_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    tiles, _ = jigsaw_example(image, tile_seed, method._perms, crop_size=24, tile_size=6, training=True,
                              grey_probability=0.3, saturation=(0.4, 1.6))
    np.testing.assert_allclose(out["inputs"]["tiles"].numpy(), tiles.numpy(), rtol=1e-5, atol=1e-4)
    perms = random_permutations(10, 0)
    assert perms.shape == (10, 9) and len({tuple(p) for p in perms}) == 10
    assert all(sorted(p) == list(range(9)) for p in perms)


def test_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_contract_distributed_and_resumed(tmp_path):
    """Two replicas == one (each replica's images mixed into the one bank), and the bank survives
    SIGKILL + resume."""
    CONTRACT.run_slow(tmp_path)


def test_bad_settings_are_named(tmp_path):
    base = {k: v for k, v in METHOD.items() if k != "name"}
    for field, value, words in [("temperature", 0, "temperature"), ("loss_weight", 1.5, "loss_weight"),
                                ("memory_momentum", 1.0, "memory_momentum"), ("num_negatives", 0, "num_negatives")]:
        with pytest.raises(ConfigError, match=words):
            PIRL(**{**base, field: value})
    with pytest.raises(ConfigError, match="jigsaw_crop"):
        PIRL(**{**base, "jigsaw_crop": 12, "tile_size": 6})
    with pytest.raises(ConfigError, match="image_size unset"):
        PIRL(**base, backbone={"arch": "resnet", "depth": 18, "image_size": 32})
    too_many = MethodContract(method={**METHOD, "num_negatives": 12}, image_size=24, images=IMAGES, keras_fit=False)
    with pytest.raises(ConfigError, match="must be smaller than the 12 training images"):
        too_many.trainer(tmp_path, steps_per_epoch=1)
