"""The method contract's hooks, proven on a test-only method that uses them all
(tests/contract_method.py: two views, two optimizers, an EMA target, a queue, per-image
pseudo-labels from an epoch hook's inference pass, its own metrics and export)."""

import json

import numpy as np
import pytest
import tensorflow as tf

import contract_method
from contract_method import ema_momentum
from method_contract import MethodContract
from ssl_zoo.data.pipeline import build_pretext_dataset
from ssl_zoo.data.sources import ArraySource
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods import build_method

IMAGES = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
CONTRACT = MethodContract(
    method={"name": "contract_probe", "image_size": 16},
    image_size=16,
    images=IMAGES,
    optimizers={"encoder": {"learning_rate": 0.1}, "head": {"learning_rate": 0.4, "schedule": "constant"}},
    plugin="contract_method",
    keras_fit=False,
    kill_after_checkpoints=(3, 4),  # at the end of epoch 1 (the hook reruns on restored weights), mid-epoch 2
    # Epoch 1's record written to history.json, its checkpoint not: the record is dropped and the
    # epoch's last steps retrained from checkpoint 2, ending as the unbroken run.
    kill_before_checkpoints=(3,),
)


def test_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_contract_two_replicas_and_sigkill_resume(tmp_path):
    CONTRACT.run_slow(tmp_path)


def _trainer(tmp_path, strategy=None, name="run", images=IMAGES, **train):
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.loop import Trainer

    recipe = CONTRACT.recipe(**train)
    return Trainer(method_from_recipe(recipe), recipe, ArraySource(images), strategy or tf.distribute.get_strategy(),
                   tmp_path / name)


def test_step_context_carries_the_step_and_the_ema_follows_its_schedule(tmp_path):
    trainer = _trainer(tmp_path, epochs=2, steps_per_epoch=3)
    assert trainer.context.total_steps == 6
    np.testing.assert_allclose(float(ema_momentum(0.9, 0, 6)), 0.9)
    np.testing.assert_allclose(float(ema_momentum(0.9, 3, 6)), 0.95, rtol=1e-6)
    np.testing.assert_allclose(float(ema_momentum(0.9, 6, 6)), 1.0)
    batches = iter(trainer._train_dataset(epoch=0, skip=0))
    trainer.train_step(next(batches))  # step 0 -> 1
    target = trainer.state["target"]
    before = [w.numpy() for w in target.weights]
    m = float(ema_momentum(0.9, 1, 6))  # the second step reads global step 1
    metrics = trainer.train_step(next(batches))
    online = [w.numpy() for w in trainer.model.get_layer("backbone").weights]
    for t0, o, t1 in zip(before, online, [w.numpy() for w in target.weights]):
        np.testing.assert_allclose(t1, m * t0 + (1 - m) * o, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["momentum_sum"]) / float(metrics["count"]), m, rtol=1e-6)


def test_two_optimizers_have_their_own_sections_schedules_and_logs(tmp_path):
    trainer = _trainer(tmp_path, epochs=2, steps_per_epoch=3)
    assert sorted(trainer.optimizers) == ["encoder", "head"]
    head_vars = {v.path for v in trainer.model.get_layer("pretext_head").trainable_variables}
    assert head_vars and all(v.path.startswith("pretext_head") for v in trainer.optimizers["head"]._trainable_variables)
    history = trainer.fit()["history"]
    # Per 256 images of global batch (4): head constant 0.4, encoder cosine from 0.1 down to 0.
    assert [h["learning_rate_head"] for h in history] == pytest.approx([0.4 * 4 / 256] * 2)
    lr = [h["learning_rate_encoder"] for h in history]
    assert lr[0] < 0.1 * 4 / 256 and lr[1] == pytest.approx(0.0, abs=1e-9)
    assert int(trainer.optimizers["head"].iterations.numpy()) == int(trainer.optimizers["encoder"].iterations) == 6
    # The method's own metrics reach the history, per epoch, next to the loop's.
    for key in ("train_loss", "train_ce", "train_queue_term", "train_momentum", "eval_projection_norm",
                "hook_labels_changed", "hook_examples_seen"):
        assert all(key in h for h in history), key
    assert history[0]["hook_examples_seen"] == len(IMAGES)
    assert json.loads((tmp_path / "run" / "epoch_hooks.json").read_text()).keys() == {"1", "2"}
    assert int(trainer.state["hook_calls"].numpy()) == 2
    tags = set()
    for event_file in (tmp_path / "run" / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {v.tag for v in event.summary.value}
    assert {"train/learning_rate/encoder", "train/learning_rate/head", "train/ce", "epoch/labels_changed"} <= tags


def test_recipe_sections_must_match_the_method_s_optimizers(tmp_path):
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.loop import Trainer
    from ssl_zoo.train.recipe import recipe_from_dict

    raw = CONTRACT.recipe_dict()
    del raw["optimizers"]["head"]
    recipe = recipe_from_dict(raw)
    with pytest.raises(ConfigError, match=r"needs one \[optimizers.NAME\] section each \(missing \['head'\]"):
        Trainer(method_from_recipe(recipe), recipe, ArraySource(IMAGES), tf.distribute.get_strategy(), tmp_path)
    # Keys a named section leaves out come from [optimizer]; overrides reach a named section.
    from ssl_zoo.train.recipe import apply_overrides

    recipe = apply_overrides(recipe_from_dict(CONTRACT.recipe_dict()), ["optimizers.head.momentum=0.5"])
    assert recipe.optimizers["head"].momentum == 0.5 and recipe.optimizers["encoder"].momentum == 0.9
    assert recipe.optimizers["encoder"].name == "sgd" and recipe.optimizers["head"].learning_rate == 0.4


def test_the_example_index_is_the_image_s_identity_in_transform_and_step():
    images = np.repeat(np.arange(12, dtype=np.uint8)[:, None, None, None] * 10, 16, 1).repeat(16, 2).repeat(3, 3)
    method = build_method("contract_probe", backbone=dict(CONTRACT.backbone), image_size=16)
    seen = set()
    for epoch in range(2):  # a new shuffle each epoch; the index still names the same image
        ds = build_pretext_dataset(ArraySource(images), "train", method, batch_size=4, image_size=16,
                                   training=True, epoch=epoch)
        for batch in ds.as_numpy_iterator():
            first, second = batch["inputs"]
            np.testing.assert_allclose(first.mean(axis=(1, 2, 3)), batch["index"] * 10, atol=1e-3)
            seen |= set(batch["index"].tolist())
    assert seen == set(range(12))


def test_a_transform_that_returns_a_tuple_is_refused_by_name():
    class Ambiguous(contract_method.ContractProbe):
        def example_transform(self, image, size, seed, training=True, index=None):
            return image, image  # (inputs, target) or (view1, view2)? The pipeline does not guess.

    method = Ambiguous(backbone=dict(CONTRACT.backbone))
    with pytest.raises(ConfigError, match=r"Ambiguous.example_transform must return a dict"):
        build_pretext_dataset(ArraySource(IMAGES), "train", method, batch_size=4, image_size=16)


@pytest.mark.parametrize("replicas", [1, 2])
def test_inference_pass_gathers_every_replica_in_index_order(tmp_path, replicas):
    from helpers import two_replica_strategy

    images = np.random.default_rng(3).integers(0, 256, (13, 16, 16, 3), dtype=np.uint8)  # 13: uneven shards
    strategy = (two_replica_strategy([d.name for d in tf.config.list_logical_devices("CPU")]) if replicas == 2
                else tf.distribute.get_strategy())
    trainer = _trainer(tmp_path, strategy=strategy, images=images)

    def mean_and_twice(model, state, inputs):
        return {"mean": tf.reduce_mean(inputs[0], axis=(1, 2, 3)), "twice": 2.0 * inputs[0][:, 0, 0, 0]}

    out = trainer.inference_pass(mean_and_twice)
    np.testing.assert_array_equal(out["index"], np.arange(13))
    centre = images.astype(np.float32)  # the evaluation view of a 16 px image at 16 px is the image itself
    np.testing.assert_allclose(out["mean"], centre.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(out["twice"], 2 * centre[:, 0, 0, 0], rtol=1e-6)


def test_release_path_exports_what_the_method_chose_and_the_card_shows_its_metrics(tmp_path):
    import ssl_zoo
    from ssl_zoo.cards import render_card
    from ssl_zoo.export import export

    trainer = _trainer(tmp_path, epochs=1, steps_per_epoch=3)
    trainer.fit()
    written = export(tmp_path / "run", "contract_probe_tiny", tmp_path / "export", formats=("preset", "keras"))
    x = np.random.default_rng(5).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    released = ssl_zoo.load_backbone(written["preset"])
    # The EMA target, as the method's export_backbone says, not the online "backbone" layer.
    np.testing.assert_allclose(np.asarray(released(x)), np.asarray(trainer.state["target"](x, training=False)),
                               rtol=1e-5, atol=1e-5)
    online = np.asarray(trainer.model.get_layer("backbone")(x, training=False))
    assert np.abs(np.asarray(released(x)) - online).max() > 1e-4
    meta = json.loads((tmp_path / "export" / "preset" / "metadata.json").read_text())
    card = render_card(meta)
    for metric in ("`train_ce`", "`train_queue_term`", "`hook_labels_changed`", "`learning_rate_head`"):
        assert metric in card, metric
