"""SeLa, self-labelling (Asano, Rupprecht & Vedaldi, ICLR 2020): "we derive a method that
maximizes the information between labels and input data indices ... this criterion extends
standard cross-entropy minimization to an optimal transport problem, which we solve efficiently
for millions of input images and thousands of labels using a fast variant of the Sinkhorn-Knopp
algorithm" (abstract).

Every image has a label per head, kept in the method state by example index and checkpointed.
The network trains on them with cross-entropy (averaged over the heads); several times per epoch
(`refreshes_per_epoch`: at the epoch's start from the second epoch on, and at evenly spaced
steps within it) an in-order pass over the training set gives every head's log-probabilities,
and `ssl_zoo.pretext.clustering.sinkhorn_knopp` re-solves the labels under the equipartition
constraint (each label used by N/K images) at the paper's lambda = 25. The labels start as a
random equipartition, as in the paper. Without the constraint all images take one label.

Reports per refresh (`epoch_hooks.json` at an epoch's start, `refresh_hooks.json` within it):
NMI against the true classes (reporting only), the share of labels that changed and the largest
label's share.

Held-out pretext accuracy: on each evaluation batch (per replica) the labels are re-solved with a
few Sinkhorn iterations on the batch's own predictions, and the head must predict them; it is
high only when the heads' predictions are both confident and balanced.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD, classification_head
from ssl_zoo.image_grid import Picture, PictureRow
from ssl_zoo.methods.base import PretextMethod, state_variable
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.methods import clustering_report
from ssl_zoo.methods.held_out import IMAGES_PER_PICTURE_CLUSTER, backbone_features, picture_cluster_count
from ssl_zoo.pretext import clustering
from ssl_zoo.train.recipe import may_be_empty

# The picture's stand-in head: cosine similarity to the prototypes over this temperature (SwAV's).
# On the released CIFAR-10 backbone it leaves labels of 9-11 images where 10 are asked; the plain
# cosine (1.0) leaves 4-18, P^lambda being too flat for the rounding to one label per image.
PICTURE_TEMPERATURE = 0.1


def batch_sinkhorn_labels(log_probs, lam: float, iterations: int = 20):
    """In-graph Sinkhorn-Knopp on one batch's [B, K] log-probabilities (log domain, float32):
    the labels an equipartition of the batch would give (for the held-out metric only)."""
    log_kernel = lam * tf.cast(log_probs, tf.float32)
    b = tf.cast(tf.shape(log_kernel)[0], tf.float32)
    k = tf.cast(tf.shape(log_kernel)[1], tf.float32)
    log_beta = tf.zeros_like(log_kernel[0])
    for _ in range(iterations):
        log_alpha = -tf.reduce_logsumexp(log_kernel + log_beta[None, :], axis=1)
        log_beta = tf.math.log(b / k) - tf.reduce_logsumexp(log_kernel + log_alpha[:, None], axis=0)
    return tf.argmax(log_kernel + log_beta[None, :], axis=1, output_type=tf.int32)


def head_log_probs(model, state, inputs):
    """The refresh pass's function: every head's log-softmax, [B, heads, K]."""
    del state
    return tf.nn.log_softmax(model(inputs, training=False), axis=-1)


@dataclasses.dataclass
class SeLa(PretextMethod):
    name: ClassVar[str] = "sela"
    run_reports: ClassVar[tuple[str, ...]] = ("refresh_hooks.json",)
    card_training = staticmethod(clustering_report.sela_training_lines)
    card_plot = staticmethod(clustering_report.sela_plot)
    card: ClassVar[MethodCard] = MethodCard(
        title="SeLa (self-labelling)",
        paper="Asano, Rupprecht & Vedaldi, \"Self-labelling via simultaneous clustering and representation "
              "learning\", ICLR 2020 (arXiv:1911.05371)",
        paragraph="Every training image carries one label per head, and the network is trained to predict "
                  "them with cross-entropy. Several times per epoch the labels are re-solved from the "
                  "network's own predictions as an optimal-transport problem (Sinkhorn-Knopp at lambda 25) "
                  "under the constraint that every label is used by the same number of images, which keeps "
                  "the network from putting all images in one class. No human label is used (the true "
                  "classes only measure the NMI the card reports). The heads are dropped after training; "
                  "the backbone's features are released.",
        pretext_eval="images of the held-out {split} split of {data}: the heads must predict the labels an "
                     "equipartitioned Sinkhorn-Knopp assignment of each batch gives",
        limitation="The equipartition constraint assumes classes of similar size; on long-tailed data it "
                   "splits the frequent classes and merges the rare ones.",
        view_size_field="image_size",
    )
    image_size: int = 32
    num_clusters: int = 128
    num_heads: int = 1
    lam: float = 25.0
    refreshes_per_epoch: int = 2
    sinkhorn_iterations: int = 1000
    head_hidden_units: tuple[int, ...] = may_be_empty(())

    def __post_init__(self):
        self.head_hidden_units = tuple(self.head_hidden_units)
        self.require_positive("num_clusters", "num_heads", "refreshes_per_epoch", "sinkhorn_iterations")
        if self.num_clusters < 2 or self.lam <= 0:
            raise ConfigError(f"[method] sela needs num_clusters >= 2 and lam > 0, got {self.num_clusters}, {self.lam}")
        self.num_examples = None

    def prepare(self, source, split: str, image_size: int) -> None:
        self.num_examples = clustering.training_set_size(source, split, self.num_clusters, "sela")

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        images = keras.Input((self.image_size, self.image_size, 3), name="images")
        features = backbone(images)
        # The heads as one linear layer of heads x K outputs (the same as separate linear heads on
        # the features; hidden layers, if any, are shared), reshaped to [B, heads, K].
        head = classification_head(self.num_heads * self.num_clusters, self.head_hidden_units, name=PRETEXT_HEAD)
        head.add(keras.layers.Reshape((self.num_heads, self.num_clusters), name=f"{PRETEXT_HEAD}_split"))
        return keras.Model(images, head(features), name="pretext_model")

    def build_state(self, model):
        if self.num_examples is None:
            raise ConfigError("SeLa needs the training set's size: the trainer calls prepare() first")
        # A random equipartition per head (the paper's start), fixed by the head's number.
        start = np.stack([np.random.default_rng(h).permutation(np.arange(self.num_examples) % self.num_clusters)
                          for h in range(self.num_heads)]).astype(np.int32)
        return {"labels": state_variable(start, "labels"), "refreshes": state_variable(np.int64(0), "refreshes")}

    # ---- label refreshes -----------------------------------------------------------------------
    def refresh_offsets(self, steps_per_epoch: int) -> tuple[int, ...]:
        r = self.refreshes_per_epoch
        return tuple(sorted({steps_per_epoch * i // r for i in range(1, r)} - {0}))

    def on_epoch_begin(self, ctx):
        # The first epoch trains on the random start: predictions of an untrained network carry
        # nothing to transport.
        return self.on_refresh(ctx) if ctx.epoch > 0 else {}

    def on_refresh(self, ctx):
        out = ctx.inference(head_log_probs)
        log_probs, index, true = out["outputs"], out["index"], out["label"]
        state = ctx.state
        labels = state["labels"].numpy()
        new = labels.copy()
        for h in range(self.num_heads):
            new[h, index] = clustering.sinkhorn_knopp(log_probs[:, h, :], self.lam, self.sinkhorn_iterations)[0]
        state["labels"].assign(new)
        state["refreshes"].assign_add(1)
        sizes = np.stack([np.bincount(new[h, index], minlength=self.num_clusters) for h in range(self.num_heads)])
        report = {
            "nmi_labels": float(np.mean([clustering.normalized_mutual_info(true, new[h, index])
                                         for h in range(self.num_heads)])),
            "labels_changed": float(np.mean(new[:, index] != labels[:, index])),
            "largest_label_share": float(sizes.max() / max(len(index), 1)),
        }
        return {k: v for k, v in report.items() if np.isfinite(v)}

    # ---- the picture ---------------------------------------------------------------------------
    def pretext_picture(self, source, split: str, image_size: int, backbone=None, rows: int = 6,
                        per_row: int = 8) -> Picture | None:
        """What self-labelling does, on the released backbone (its heads are not released): held-out
        images' L2-normalised features are given K prototypes by k-means, a linear classifier on them
        (cosine over `PICTURE_TEMPERATURE`) stands in for a head, and Sinkhorn-Knopp at the recipe's
        lambda turns its predictions into equal-size labels (equal up to rounding each image's share
        to one label). One row per label, for the labels whose k-means clusters were largest: the row
        says how many images k-means gave it and how many the equipartition left. About ten images per
        label (at most 5,000 images). None without a backbone."""
        if backbone is None:
            return None
        images, _, features = backbone_features(source, split, image_size, backbone,
                                             min(IMAGES_PER_PICTURE_CLUSTER * self.num_clusters, 5000))
        k = picture_cluster_count(self.num_clusters, len(images), f"{source.name}/{split}")
        x = clustering.l2_normalize(features.reshape(len(features), -1).astype(np.float64))
        centroids, nearest, _ = clustering.kmeans(x, k, seed=0)
        logits = x @ clustering.l2_normalize(centroids).T / PICTURE_TEMPERATURE
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        labels, _ = clustering.sinkhorn_knopp(log_probs, self.lam, self.sinkhorn_iterations)
        before = np.bincount(nearest, minlength=k)
        after = np.bincount(labels, minlength=k)
        shown = np.argsort(-before, kind="stable")[:rows]
        return Picture(f"{self.card.title}: {len(images)} held-out images given k = {k} equal-size labels by "
                       f"Sinkhorn-Knopp (lambda {self.lam:g}) from a prototype classifier on the backbone's "
                       f"features (k-means prototypes; the trained heads are not released); one label per row, "
                       f"the labels whose k-means clusters were largest: images in the k-means cluster -> "
                       f"images given the label",
                       [PictureRow(f"{before[c]} -> {after[c]}", images[labels == c][:per_row])
                        for c in shown])

    # ---- steps ----------------------------------------------------------------------------------
    def _per_example(self, targets, logits):
        """Cross-entropy averaged over the heads: targets [B, heads], logits [B, heads, K]."""
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets)
        return tf.reduce_mean(ce, axis=1), tf.reduce_mean(tf.cast(correct, tf.float32), axis=1)

    def train_step(self, ctx, batch):
        model = ctx.model
        targets = tf.transpose(tf.gather(ctx.state["labels"], batch["index"], axis=1))  # [B, heads]
        with tf.GradientTape() as tape:
            logits = model(batch["inputs"], training=True)
            per_example, correct = self._per_example(targets, logits)
            loss = losses.replica_loss(per_example, model)
        grads = tape.gradient(loss, model.trainable_variables)
        ctx.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return self._metrics(per_example, correct)

    def eval_step(self, ctx, batch):
        logits = ctx.model(batch["inputs"], training=False)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        targets = tf.stack([batch_sinkhorn_labels(log_probs[:, h], self.lam) for h in range(self.num_heads)], axis=1)
        return self._metrics(*self._per_example(targets, logits))

    @staticmethod
    def _metrics(per_example, correct):
        return {"loss_sum": tf.reduce_sum(per_example), "correct": tf.reduce_sum(correct),
                "count": tf.cast(tf.shape(per_example)[0], tf.float32)}
