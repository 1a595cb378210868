"""A test-only method that uses every part of the method contract at once, to prove the hooks:

- two views per image in `inputs` and no target (multi-view transform output);
- two optimizers by name ("encoder": backbone + projector, "head": the pseudo-label classifier),
  each with its own recipe section and schedule;
- state: an EMA target encoder whose momentum follows BYOL's cosine schedule of the global step,
  a queue of the target's features gathered from every replica (MoCo), per-image pseudo-labels
  (DeepCluster) looked up by the example index, and two hook witnesses;
- an epoch hook that recomputes the pseudo-labels from an in-order inference pass over the
  training split and reports a metric;
- its own metrics (`ce`, `queue_term`, `momentum`), and an export of the EMA target rather than
  the layer named "backbone".

Importing this module registers it as method "contract_probe".
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.heads import PRETEXT_HEAD, classification_head
from ssl_zoo.methods import register_method
from ssl_zoo.methods.base import BACKBONE, PretextMethod, state_variable

TEMPERATURE = 0.5
QUEUE_WEIGHT = 0.1


def ema_momentum(base: float, step, total_steps: int):
    """BYOL (Grill et al. 2020, Sec. 3.2): tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    progress = tf.cast(step, tf.float32) / float(max(total_steps, 1))
    return 1.0 - (1.0 - base) * (tf.cos(math.pi * progress) + 1.0) / 2.0


def pooled_features(model, state, inputs):
    """The inference pass's function: the online encoder's pooled features of the first view."""
    del state
    return model.get_layer(BACKBONE)(inputs[0], training=False)


@register_method
@dataclasses.dataclass
class ContractProbe(PretextMethod):
    name: ClassVar[str] = "contract_probe"
    optimizer_names: ClassVar[tuple[str, ...]] = ("encoder", "head")
    num_pseudo_classes: int = 4
    queue_size: int = 12
    projection_dim: int = 8
    base_momentum: float = 0.9
    image_size: int = 16

    def prepare(self, source, split: str, image_size: int) -> None:
        self.num_examples = source.num_examples(split)

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        images = keras.Input((self.image_size, self.image_size, 3), name="images")
        features = backbone(images)
        head = classification_head(self.num_pseudo_classes, (), name=PRETEXT_HEAD)
        projector = keras.layers.Dense(self.projection_dim, name="projector")
        return keras.Model(images, {"logits": head(features), "projection": projector(features)},
                           name="pretext_model")

    def build_state(self, model):
        online = model.get_layer(BACKBONE)
        target = keras.models.clone_model(online)
        target.set_weights(online.get_weights())
        dim = online.output.shape[-1]
        return {
            "target": target,
            "queue": state_variable(tf.zeros([self.queue_size, dim]), "queue"),
            "queue_pointer": state_variable(tf.constant(0, tf.int64), "queue_pointer"),
            "pseudo_labels": state_variable(tf.zeros([self.num_examples], tf.int32), "pseudo_labels"),
            "hook_calls": state_variable(tf.constant(0, tf.int64), "hook_calls"),
            "hook_saw_weights": state_variable(tf.constant(0.0, tf.float64), "hook_saw_weights"),
        }

    def optimizer_variables(self, name, model, state):
        if name == "head":
            return model.get_layer(PRETEXT_HEAD).trainable_variables
        return model.get_layer(BACKBONE).trainable_variables + model.get_layer("projector").trainable_variables

    def example_transform(self, image, size, seed, training=True, index=None):
        del index
        first, second = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        augment = AUGMENTATIONS["crop_flip" if training else "center"]
        return {"inputs": (augment(image, size, first), augment(image, size, second))}

    def on_epoch_begin(self, ctx):
        out = ctx.inference(pooled_features)
        labels = np.zeros(ctx.num_examples, np.int32)
        labels[out["index"]] = np.argmax(out["outputs"][:, : self.num_pseudo_classes], axis=1)
        previous = ctx.state["pseudo_labels"].numpy()
        ctx.state["pseudo_labels"].assign(labels)
        ctx.state["hook_calls"].assign_add(1)
        ctx.state["hook_saw_weights"].assign(
            sum(float(np.abs(w).astype(np.float64).sum()) for w in ctx.model.get_layer(BACKBONE).get_weights()))
        return {"labels_changed": float(np.mean(previous != labels)), "examples_seen": float(len(out["index"]))}

    def train_step(self, ctx, batch):
        model, state = ctx.model, ctx.state
        first, second = batch["inputs"]
        targets = tf.gather(state["pseudo_labels"], batch["index"])
        online = model.get_layer(BACKBONE)
        momentum = ema_momentum(self.base_momentum, ctx.step, ctx.total_steps)
        keys = tf.math.l2_normalize(state["target"](second, training=False), axis=-1)
        with tf.GradientTape() as tape:
            out = model(first, training=True)
            ce = losses.sparse_cross_entropy(targets, out["logits"])
            query = tf.math.l2_normalize(online(first, training=True), axis=-1)
            queue_term = tf.reduce_logsumexp(tf.matmul(query, state["queue"], transpose_b=True) / TEMPERATURE, axis=1)
            # A small pull on the projection, so that the projector (the "encoder" optimizer's own
            # head) trains too.
            shrink = 1e-2 * tf.reduce_sum(tf.square(out["projection"]), axis=-1)
            loss = losses.global_mean(ce + QUEUE_WEIGHT * queue_term + shrink)
        variables = {n: self.optimizer_variables(n, model, state) for n in self.optimizer_names}
        grads = tape.gradient(loss, variables)
        for n in self.optimizer_names:
            ctx.optimizers[n].apply_gradients(zip(grads[n], variables[n]))
        for t, o in zip(state["target"].weights, online.weights):
            t.assign(momentum * t + (1.0 - momentum) * o)
        # Every replica enqueues the whole global batch's keys, in replica order, at the same place.
        all_keys = tf.distribute.get_replica_context().all_gather(keys, axis=0)
        slots = (state["queue_pointer"] + tf.range(tf.shape(all_keys, out_type=tf.int64)[0])) % self.queue_size
        state["queue"].assign(tf.tensor_scatter_nd_update(state["queue"], slots[:, None], all_keys))
        state["queue_pointer"].assign((state["queue_pointer"] + tf.shape(all_keys, out_type=tf.int64)[0])
                                      % self.queue_size)
        count = tf.cast(tf.shape(ce)[0], tf.float32)
        return {"loss_sum": tf.reduce_sum(ce + QUEUE_WEIGHT * queue_term + shrink), "ce_sum": tf.reduce_sum(ce),
                "queue_term_sum": tf.reduce_sum(queue_term), "momentum_sum": momentum * count, "count": count}

    def eval_step(self, ctx, batch):
        out = ctx.model(batch["inputs"][0], training=False)
        return {"projection_norm_sum": tf.reduce_sum(tf.norm(out["projection"], axis=-1)),
                "count": tf.cast(tf.shape(out["projection"])[0], tf.float32)}

    def export_backbone(self, model, state):
        # The EMA target, not the layer named "backbone": a method chooses which encoder it releases.
        return state["target"]
