"""DeepCluster (Caron, Bojanowski, Joulin & Douze, ECCV 2018): "iteratively groups the features
with a standard clustering algorithm, k-means, and uses the subsequent assignments as
supervision to update the weights of the network" (abstract).

Before every `cluster_every_epochs`-th epoch the hook (`on_epoch_begin`) takes the features of the
whole training set (an in-order pass on every replica, gathered), PCA-whitens and L2-normalises
them, runs k-means, splits empty clusters off large ones, stores one pseudo-label per image
(looked up by the example index in the step), weights each cluster's examples by the inverse of
its size, and re-initialises the classifier with its optimizer's slots (its own optimizer,
"classifier", so that its momentum can be reset without touching the encoder's). The details
are `ssl_zoo.pretext.clustering`; without them the network falls into a few clusters.

The PCA and the centroids are state too: the held-out evaluation assigns each unseen image to
its nearest centroid and asks whether the classifier predicts that cluster.

Reports per clustering (history, `epoch_hooks.json`): NMI of the assignments against the true
classes (reporting only: the labels never reach training), NMI against the previous clustering,
the number of clusters that came out empty and the largest cluster's share; the sorted cluster
sizes go to `clusters.json` in the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD, classification_head
from ssl_zoo.image_grid import Picture, PictureRow
from ssl_zoo.methods.base import BACKBONE, PretextMethod, state_variable
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.methods.held_out import IMAGES_PER_PICTURE_CLUSTER, backbone_features, picture_cluster_count
from ssl_zoo.methods import clustering_report
from ssl_zoo.pretext import clustering
from ssl_zoo.train.recipe import may_be_empty

CLASSIFIER = "classifier"
ENCODER = "encoder"
BALANCES = ("weight", "none")


def pooled_features(model, state, inputs):
    """The inference pass's function: the backbone's pooled features, evaluation mode."""
    del state
    return model.get_layer(BACKBONE)(inputs, training=False)


def hook_seed(seed: int, epoch: int) -> int:
    """A k-means / head-initialisation seed from the recipe seed and the epoch: the same on every
    worker and after a resume."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def reset_optimizer_slots(optimizer) -> None:
    """Zeroes an optimizer's per-variable slots (momentum, Adam moments), keeping its step count
    and learning rate: a re-initialised layer must not inherit the old one's momentum."""
    keep = {id(optimizer.iterations)}
    if isinstance(getattr(optimizer, "_learning_rate", None), keras.Variable):
        keep.add(id(optimizer._learning_rate))
    for v in optimizer.variables:
        if id(v) not in keep:
            v.assign(np.zeros(v.shape, v.dtype))


def append_json(path, key: str, value) -> None:
    from ssl_zoo.preset import write_json

    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    write_json(data, path, sort_keys=True)


@dataclasses.dataclass
class DeepCluster(PretextMethod):
    name: ClassVar[str] = "deepcluster"
    optimizer_names: ClassVar[tuple[str, ...]] = (ENCODER, CLASSIFIER)
    run_reports: ClassVar[tuple[str, ...]] = ("clusters.json",)
    card_training = staticmethod(clustering_report.deepcluster_training_lines)
    card_plot = staticmethod(clustering_report.deepcluster_plot)
    card: ClassVar[MethodCard] = MethodCard(
        title="DeepCluster",
        paper="Caron, Bojanowski, Joulin & Douze, \"Deep Clustering for Unsupervised Learning of Visual "
              "Features\", ECCV 2018 (arXiv:1807.05520)",
        paragraph="Before every epoch the features of the whole training set are PCA-whitened, L2-normalised "
                  "and clustered by k-means into many more clusters than there are classes; each image's "
                  "cluster becomes its pseudo-label for the epoch, with empty clusters split off large ones, "
                  "the loss weighted by the inverse cluster size and the classifier re-initialised after "
                  "each clustering. No human label is used for training (the true classes only measure the "
                  "NMI the card reports). The classifier is dropped after training; the backbone's features "
                  "are released.",
        pretext_eval="images of the held-out {split} split of {data}, each assigned to the nearest centroid of "
                     "the last clustering; the classifier must predict that cluster",
        limitation="k-means favours the dominant visual modes of the training set (colour, background) early "
                   "on; on small or unbalanced data the clusters can track low-level statistics rather than "
                   "objects.",
        view_size_field="image_size",
    )
    image_size: int = 32
    num_clusters: int = 100
    pca_dim: int = 256
    kmeans_iterations: int = 20
    cluster_every_epochs: int = 1
    balance: str = "weight"  # "weight": loss weighted by inverse cluster size; "none"
    head_hidden_units: tuple[int, ...] = may_be_empty(())

    def __post_init__(self):
        self.head_hidden_units = tuple(self.head_hidden_units)
        self.require_choice("balance", BALANCES)
        self.require_positive("num_clusters", "pca_dim", "kmeans_iterations", "cluster_every_epochs")
        self.num_examples = None

    def prepare(self, source, split: str, image_size: int) -> None:
        self.num_examples = clustering.training_set_size(source, split, self.num_clusters, "deepcluster")

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        images = keras.Input((self.image_size, self.image_size, 3), name="images")
        features = backbone(images)
        head = classification_head(self.num_clusters, self.head_hidden_units, name=PRETEXT_HEAD)
        return keras.Model(images, {"logits": head(features), "features": features}, name="pretext_model")

    def _top_layer(self, model):
        return model.get_layer(PRETEXT_HEAD).get_layer(f"{PRETEXT_HEAD}_logits")

    def build_state(self, model):
        if self.num_examples is None:
            raise ConfigError("DeepCluster needs the training set's size: the trainer calls prepare() first")
        feature_dim = int(model.get_layer(BACKBONE).output.shape[-1])
        self.whitened_dim = min(self.pca_dim, feature_dim, self.num_examples - 1)
        k = self.num_clusters
        return {
            "assignments": state_variable(np.full(self.num_examples, -1, np.int32), "assignments"),
            "cluster_weights": state_variable(np.ones(k, np.float32), "cluster_weights"),
            "pca_mean": state_variable(np.zeros(feature_dim, np.float32), "pca_mean"),
            "pca_projection": state_variable(np.zeros((feature_dim, self.whitened_dim), np.float32), "pca_projection"),
            "centroids": state_variable(np.zeros((k, self.whitened_dim), np.float32), "centroids"),
            "clusterings": state_variable(np.int64(0), "clusterings"),
        }

    def optimizer_variables(self, name, model, state):
        top = {id(v) for v in self._top_layer(model).trainable_variables}
        if name == CLASSIFIER:
            return self._top_layer(model).trainable_variables
        return [v for v in model.trainable_variables if id(v) not in top]

    # ---- the clustering -------------------------------------------------------------------------
    def on_epoch_begin(self, ctx):
        if ctx.epoch % self.cluster_every_epochs:
            return {}
        t0 = time.time()
        out = ctx.inference(pooled_features)
        features, index, labels = out["outputs"], out["index"], out["label"]
        seed = hook_seed(ctx.seed, ctx.epoch)
        pca = clustering.fit_pca_whitening(features, self.whitened_dim)
        if pca.dim != self.whitened_dim:
            raise ConfigError(f"PCA gave {pca.dim} dimensions, expected {self.whitened_dim}: "
                              f"{len(features)} of {ctx.num_examples} training images decoded")
        z = clustering.apply_pca_whitening(features, pca)
        centroids, assigned, empty = clustering.kmeans(z, self.num_clusters, seed, self.kmeans_iterations)
        state = ctx.state
        previous = state["assignments"].numpy()[index]
        rounds = int(state["clusterings"].numpy())
        assignments = np.full(ctx.num_examples, -1, np.int32)
        assignments[index] = assigned
        weights = (clustering.inverse_size_weights(assigned, self.num_clusters) if self.balance == "weight"
                   else np.ones(self.num_clusters, np.float32))
        state["assignments"].assign(assignments)
        state["cluster_weights"].assign(weights)
        state["pca_mean"].assign(pca.mean)
        state["pca_projection"].assign(pca.projection)
        state["centroids"].assign(centroids)
        state["clusterings"].assign_add(1)
        self._reinitialise_classifier(ctx, seed)
        sizes = np.bincount(assigned, minlength=self.num_clusters)
        report = {
            "nmi_labels": clustering.normalized_mutual_info(labels, assigned),
            "nmi_previous": clustering.normalized_mutual_info(previous, assigned) if rounds else float("nan"),
            "empty_clusters": float(empty),
            "largest_cluster_share": float(sizes.max() / max(len(assigned), 1)),
        }
        if ctx.out_dir is not None:
            append_json(ctx.out_dir / "clusters.json", str(ctx.epoch + 1),
                        {"sizes": sorted((int(s) for s in sizes), reverse=True), "seconds": round(time.time() - t0, 2),
                         "examples": int(len(assigned)),
                         **{k: (v if np.isfinite(v) else None) for k, v in report.items()}})  # JSON has no NaN
        return {k: v for k, v in report.items() if np.isfinite(v)}

    # ---- the picture ---------------------------------------------------------------------------
    def pretext_picture(self, source, split: str, image_size: int, backbone=None, rows: int = 6,
                        per_row: int = 8) -> Picture | None:
        """The pseudo-labels it learns to predict: held-out images clustered as `on_epoch_begin`
        clusters the training set (PCA whitening, k-means) on `backbone`'s features, one row per
        cluster, the largest first. Ten images per cluster on average (at most 5,000 images, so
        k may be smaller than the recipe's, and at least 2). None without a backbone (the clusters are
        the network's)."""
        if backbone is None:
            return None
        images, _, features = backbone_features(source, split, image_size, backbone,
                                             min(IMAGES_PER_PICTURE_CLUSTER * self.num_clusters, 5000))
        k = picture_cluster_count(self.num_clusters, len(images), f"{source.name}/{split}")
        pca = clustering.fit_pca_whitening(features, self.pca_dim)
        _, assigned, _ = clustering.kmeans(clustering.apply_pca_whitening(features, pca), k, seed=0,
                                           iterations=self.kmeans_iterations)
        sizes = np.bincount(assigned, minlength=k)
        largest = np.argsort(-sizes, kind="stable")[:rows]
        return Picture(f"{self.card.title}: {len(images)} held-out images in k = {k} clusters of the backbone's "
                       f"PCA-whitened features (k-means), the pseudo-labels its classifier learns; the "
                       f"{len(largest)} largest clusters, one per row",
                       [PictureRow(f"{sizes[c]} images", images[assigned == c][:per_row]) for c in largest])

    def _reinitialise_classifier(self, ctx, seed: int) -> None:
        """The paper's top layer restart: weights N(0, 0.01), bias 0, and no momentum left over."""
        rng = np.random.default_rng(seed)
        top = self._top_layer(ctx.model)
        top.kernel.assign(rng.normal(0.0, 0.01, top.kernel.shape).astype(np.float32))
        top.bias.assign(np.zeros(top.bias.shape, np.float32))
        reset_optimizer_slots(ctx.optimizers[CLASSIFIER])

    # ---- steps ----------------------------------------------------------------------------------
    def train_step(self, ctx, batch):
        model, state = ctx.model, ctx.state
        targets = tf.gather(state["assignments"], batch["index"])
        known = targets >= 0  # an image the clustering pass could not read: no loss
        safe = tf.maximum(targets, 0)
        weights = tf.where(known, tf.gather(state["cluster_weights"], safe), 0.0)
        with tf.GradientTape() as tape:
            out = model(batch["inputs"], training=True)
            ce = losses.sparse_cross_entropy(safe, out["logits"])
            loss = losses.replica_loss(ce * weights, model)
        variables = {n: self.optimizer_variables(n, model, state) for n in self.optimizer_names}
        grads = tape.gradient(loss, variables)
        for n in self.optimizer_names:
            ctx.optimizers[n].apply_gradients(zip(grads[n], variables[n]))
        return self._metrics(safe, out["logits"], ce, weights, known)

    def eval_step(self, ctx, batch):
        state = ctx.state
        out = ctx.model(batch["inputs"], training=False)
        z = tf.math.l2_normalize(tf.matmul(out["features"] - state["pca_mean"], state["pca_projection"]), axis=-1)
        centroids = state["centroids"]
        distances = tf.reduce_sum(tf.square(centroids), axis=1)[None, :] - 2.0 * tf.matmul(z, centroids, transpose_b=True)
        targets = tf.argmin(distances, axis=1, output_type=tf.int32)
        ce = losses.sparse_cross_entropy(targets, out["logits"])
        known = tf.ones_like(ce, tf.bool)
        return self._metrics(targets, out["logits"], ce, tf.ones_like(ce), known)

    @staticmethod
    def _metrics(targets, logits, ce, weights, known):
        known_f = tf.cast(known, tf.float32)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(targets, tf.int32)), tf.float32)
        return {"loss_sum": tf.reduce_sum(ce * weights), "ce_sum": tf.reduce_sum(ce * known_f),
                "correct": tf.reduce_sum(correct * known_f), "count": tf.reduce_sum(known_f)}
