"""MoCo v2 (He, Fan, Wu, Xie & Girshick, CVPR 2020, "Momentum Contrast for Unsupervised Visual
Representation Learning"; Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum
Contrastive Learning"): "a dynamic dictionary with a queue and a moving-averaged encoder ... a
large and consistent dictionary on-the-fly" (He et al., abstract); v2 adds SimCLR's MLP head and
augmentation.

Composition plus its own step: SimCLR's two-view transform (`ssl_zoo.pretext.contrastive`), a
query encoder (backbone + MLP head, the trained model), a key encoder that is its exponential
moving average (momentum `momentum`, parameters only: the key encoder's batch-norm statistics are
its own), and a queue of the last `queue_size` keys (method state, checkpointed with its write
position, so a resumed run has the same negatives). Each query's positive is the key of its
image's other view; its negatives are the queue (`ssl_zoo.losses.info_nce`). After each step the
keys of the whole global batch (gathered from every replica, in replica order) replace the oldest
entries.

Batch norm must not let a query find its key through shared batch statistics (He et al. Sec.
3.3: with per-GPU BN the model "cheats"; they shuffle the keys across GPUs). Here each replica's
batch is cut into `bn_groups` sub-batches, each normalised on its own statistics (synchronised
across replicas, so the sub-batch is global): the queries in contiguous groups, the keys in
interleaved ones (`key_order`), so every key group holds an equal share of every query group and
no query and its key are normalised over the same subset. This is shuffle BN on one device, with
a fixed interleave instead of a random shuffle (no randomness to resume). `bn_groups = 1` is
plain synchronised BN over the batch. The released backbone is the query encoder's.

`symmetric = true` is the symmetrised loss of the authors' CIFAR-10 demo (and of LightlySSL's
benchmark, MoCo v3's form): each view is also a query against the other view's key, both against the
same queue, the two losses averaged, and both views' keys enqueued (2 x global batch per step). Every
image then trains the query encoder twice per step, for one more key-encoder pass; the demo reports
faster learning per epoch.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.base import scatter_rows, state_variable
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.methods.two_view import TwoViewMethod, per_view_metrics


def key_order(batch: int, groups: int) -> np.ndarray:
    """The order in which a replica's images go through the key encoder: cut into `groups`
    contiguous chunks, key group j takes every `groups`-th image (a transpose), so it holds an
    equal share of every query group (within one image when groups^2 does not divide the batch):
    with batch >= groups^2 no key group is any query group."""
    return np.arange(batch).reshape(groups, batch // groups).T.reshape(-1)


def grouped(encoder, images, groups: int, training: bool):
    """`encoder` on `groups` contiguous sub-batches, each with its own batch statistics."""
    if groups == 1:
        return encoder(images, training=training)
    return tf.concat([encoder(chunk, training=training) for chunk in tf.split(images, groups, axis=0)], axis=0)


@dataclasses.dataclass
class MoCo(TwoViewMethod):
    name: ClassVar[str] = "moco"
    pair_task: ClassVar[str] = "the query view must pick out its key (the momentum encoder's) among a queue of earlier keys"
    card: ClassVar[MethodCard] = MethodCard(
        title="MoCo v2",
        paper="He, Fan, Wu, Xie & Girshick, \"Momentum Contrast for Unsupervised Visual Representation "
              "Learning\", CVPR 2020 (arXiv:1911.05722); Chen, Fan, Girshick & He, \"Improved Baselines with "
              "Momentum Contrastive Learning\", 2020 (arXiv:2003.04297)",
        paragraph="Every training image is augmented twice (random resized crop and flip, colour jitter with "
                  "probability 0.8, greyscale with probability 0.2). A query encoder (backbone and MLP head) "
                  "embeds one view; a key encoder, a slow exponential moving average of it, embeds the other. "
                  "Each query must pick out its own key among a queue of keys from earlier batches (InfoNCE at "
                  "a temperature); every batch's keys then replace the oldest in the queue. Batch norm runs on "
                  "sub-batches, the keys' interleaved with the queries', so that a query cannot find its key "
                  "through shared batch statistics. The head, key encoder and queue are dropped after "
                  "training; the query encoder's backbone is released.",
        pretext_eval="two fresh augmented views of each image of the held-out {split} split of {data} (fixed "
                     "seeds): the query of one view must be more similar to the key of the other than to every "
                     "key in the final queue",
        limitation="Its invariances are the augmentations': colour and crop position are treated as nuisance, "
                   "so tasks that need colour or absolute position get less from these features.",
        view_size_field="image_size",
    )
    temperature: float = 0.2
    queue_size: int = 4096
    momentum: float = 0.99
    bn_groups: int = 4
    symmetric: bool = False  # both views as queries (the CIFAR demo's symmetrised loss)

    def __post_init__(self):
        super().__post_init__()
        self.require_positive("queue_size", "bn_groups", "projection_dim")
        if self.temperature <= 0:
            raise ConfigError(f"[method] moco temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"[method] moco momentum must be in [0, 1), got {self.momentum}")

    def build_model(self) -> keras.Model:
        return self.projection_model()

    def build_state(self, model):
        key_encoder = keras.models.clone_model(model)
        key_encoder.name = "key_encoder"
        key_encoder.set_weights(model.get_weights())
        # The paper starts the queue with random unit vectors (it is full of real keys after
        # queue_size / global batch steps); a fixed seed keeps runs reproducible.
        start = np.random.default_rng(0).normal(size=(self.queue_size, self.projection_dim)).astype(np.float32)
        start /= np.linalg.norm(start, axis=1, keepdims=True)
        return {"key_encoder": key_encoder, "queue": state_variable(start, "queue"),
                "queue_position": state_variable(np.int64(0), "queue_position")}

    def check_batch(self, global_batch: int, per_replica_batch: int) -> None:
        keys_per_step = global_batch * (2 if self.symmetric else 1)
        if keys_per_step > self.queue_size:
            raise ConfigError(f"[method] moco queue_size = {self.queue_size} is smaller than the {keys_per_step} keys "
                              f"a step enqueues (global batch {global_batch}"
                              f"{', both views' if self.symmetric else ''}): it must hold at least one step's keys")
        self._groups(per_replica_batch)

    def _groups(self, batch: int | None) -> int:
        if batch is None:
            raise ConfigError("MoCo's batch-norm groups need a fixed batch size per replica")
        if batch % self.bn_groups or (self.bn_groups > 1 and batch < self.bn_groups ** 2):
            raise ConfigError(f"[method] moco bn_groups = {self.bn_groups} must divide the batch per replica "
                              f"({batch} images) into groups of at least {self.bn_groups} (so that every key group "
                              f"mixes every query group)")
        return self.bn_groups

    def queries(self, model, first, training: bool):
        """The query encoder on the first views, in contiguous batch-norm groups."""
        return grouped(model, first, self._groups(first.shape[0]) if training else 1, training)

    def keys(self, key_encoder, second, training: bool):
        """The key encoder on the second views, in interleaved batch-norm groups, back in batch order."""
        groups = self._groups(second.shape[0]) if training else 1
        if groups == 1:
            return key_encoder(second, training=training)
        order = key_order(int(second.shape[0]), groups)
        return tf.gather(grouped(key_encoder, tf.gather(second, order), groups, training), np.argsort(order))

    def momentum_update(self, model, key_encoder) -> None:
        for k, q in zip(key_encoder.trainable_weights, model.trainable_weights, strict=True):
            k.assign(self.momentum * k + (1.0 - self.momentum) * q)

    def enqueue(self, state, keys) -> None:
        """The global batch's keys (every replica's, in replica order) replace the oldest entries."""
        ctx = tf.distribute.get_replica_context()
        keys = tf.math.l2_normalize(tf.cast(keys, tf.float32), axis=-1)
        everyone = ctx.all_gather(keys, axis=0) if ctx.num_replicas_in_sync > 1 else keys
        position = state["queue_position"]
        rows = (position + tf.range(tf.shape(everyone, out_type=tf.int64)[0])) % self.queue_size
        # Only the new rows are written: ImageNet's 65,536-key queue is 33 MB, rewritten whole every step.
        scatter_rows(state["queue"], rows, everyone)
        position.assign((position + tf.shape(everyone, out_type=tf.int64)[0]) % self.queue_size)

    def _directions(self, views):
        """(query view, key view) pairs: the second view is the key of the first; with `symmetric`
        also the other way round."""
        first, second = views
        return [(first, second), (second, first)] if self.symmetric else [(first, second)]

    def _all_keys(self, key_encoder, views, training: bool) -> list:
        """The key of each direction (no gradient: the key encoder is not trained)."""
        return [self.keys(key_encoder, key_view, training=training) for _, key_view in self._directions(views)]

    def _info_nce(self, model, keys: list, queue, views, training: bool):
        """InfoNCE of every direction's queries against its keys and the same queue: per-query losses
        and positive-won flags, concatenated in direction order."""
        results = [losses.info_nce(self.queries(model, query_view, training=training), key, queue, self.temperature)
                   for (query_view, _), key in zip(self._directions(views), keys, strict=True)]
        return tf.concat([r[0] for r in results], axis=0), tf.concat([r[1] for r in results], axis=0)

    def train_step(self, ctx, batch):
        model, state = ctx.model, ctx.state
        key_encoder = state["key_encoder"]
        # As the reference code: the key encoder moves towards the query encoder before it encodes.
        self.momentum_update(model, key_encoder)
        keys = self._all_keys(key_encoder, batch["inputs"], training=True)  # outside the tape
        with tf.GradientTape() as tape:
            per_example, correct = self._info_nce(model, keys, state["queue"], batch["inputs"], training=True)
            loss = losses.replica_loss(per_example, model)
        grads = tape.gradient(loss, model.trainable_variables)
        ctx.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        for direction_keys in keys:  # one direction at a time: the queue's order does not depend on the replicas
            self.enqueue(state, direction_keys)
        return per_view_metrics(per_example, correct)

    def eval_step(self, ctx, batch):
        keys = self._all_keys(ctx.state["key_encoder"], batch["inputs"], training=False)
        return per_view_metrics(*self._info_nce(ctx.model, keys, ctx.state["queue"], batch["inputs"], training=False))
