"""PIRL, Pretext-Invariant Representation Learning (Misra & van der Maaten, CVPR 2020): instead of
predicting the jigsaw permutation, make the representation *invariant* to it. "PIRL ... learns
invariant representations based on pretext tasks ... the representation of an image and of its
transformed version should be similar" (abstract). The image I and its jigsaw version I^t are
embedded by one backbone with two small heads, f(v_I) and g(v_{I^t}), and each is contrasted with
the memory-bank entry m_I of its image against other images' entries:

    L = lambda * L_NCE(m_I, g(v_{I^t})) + (1 - lambda) * L_NCE(m_I, f(v_I)),   lambda = 0.5 (Eq. 5)

Composition plus its own step and state:

- the transform gives `{"image": view, "tiles": [9, t, t, 3]}` per example: the view is SimCLR's
  augmentation (`ssl_zoo.pretext.contrastive.simclr_view`), the tiles the jigsaw transform already in
  `ssl_zoo.pretext.jigsaw` (gap and jitter inside each cell, per-tile colour jitter and
  standardisation) with a random permutation; the permutation's index is not a target;
- f: the backbone's pooled features -> linear -> 128; g: each tile through the same backbone ->
  linear (shared) -> the nine concatenated -> linear -> 128 (Sec. 3.2);
- the memory bank holds one L2-normalised vector per training image, indexed by the example's
  `index`: after each step the global batch's f (gathered from every replica) is mixed in,
  m_I <- normalise(0.5 m_I + 0.5 f(v_I)) ("an exponential moving average of representations
  f(v_I) computed in prior epochs", Sec. 3.2; VISSL's PIRL memory momentum is 0.5). It is method
  state, so it is checkpointed and a resumed run keeps it;
- negatives: `num_negatives` entries of the bank drawn uniformly each step from a stateless seed
  of the step (the same on every replica and after a resume), shared by the batch as MoCo's queue;
  an entry that is the query's own image is masked out.

The contrast is the softmax form (InfoNCE, `ssl_zoo.losses.info_nce`) rather than the paper's
binary NCE (Eq. 3-4). VISSL's PIRL loss implements both ("cross_entropy turns the loss into
InfoNCE"); the softmax form needs no estimate of the partition function Z, and MoCo (He et al. 2020,
Sec. 3.1) found it better than NCE on a memory bank. The released backbone is the shared one.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD
from ssl_zoo.image_grid import Picture, PictureRow, for_display, mosaic
from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.data.sources import require_stable_examples
from ssl_zoo.methods.base import BACKBONE, PretextMethod, scatter_rows, state_variable
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.methods.two_view import per_view_metrics
from ssl_zoo.pretext.contrastive import require_view_settings, simclr_view
from ssl_zoo.pretext.jigsaw import GRID, NUM_TILES, jigsaw_example
from ssl_zoo.train.recipe import at_least

MEMORY_INITS = ("random", "features")
# Salt of the stateless seed the negatives are drawn from: (salt, step).
_NEGATIVES_SALT = 0x9121


def random_permutations(count: int, seed: int) -> np.ndarray:
    """`count` distinct permutations of the nine tiles, int32 [count, 9], a pure function of `seed`
    (PIRL shuffles the tiles at random; it never classifies the permutation, so no Hamming set)."""
    rng = np.random.default_rng(seed)
    chosen: dict[tuple, None] = {}
    while len(chosen) < count:
        chosen.setdefault(tuple(rng.permutation(NUM_TILES)), None)
    return np.array(list(chosen), np.int32)


def memory_bank_contrast(queries, memory, index, negative_index, temperature: float):
    """InfoNCE of each query against its own image's memory entry (`memory[index]`, the positive)
    and the entries `memory[negative_index]` shared by the batch, an entry of the query's own image
    among them masked out. Returns `(per_example_loss [B], positive_is_top1 [B])`."""
    own = tf.equal(tf.cast(index, tf.int64)[:, None], tf.cast(negative_index, tf.int64)[None, :])
    return losses.info_nce(queries, tf.gather(memory, index), tf.gather(memory, negative_index), temperature,
                           exclude=own)


@dataclasses.dataclass
class PIRL(PretextMethod):
    name: ClassVar[str] = "pirl"
    card: ClassVar[MethodCard] = MethodCard(
        title="PIRL (pretext-invariant representations)",
        paper="Misra & van der Maaten, \"Self-Supervised Learning of Pretext-Invariant Representations\", "
              "CVPR 2020 (arXiv:1912.01991)",
        paragraph="Each training image is seen twice: as an augmented view (random resized crop and flip, "
                  "colour jitter, greyscale) and as a jigsaw puzzle, nine tiles cut with gaps and jitter, "
                  "shuffled, each colour-jittered and normalised on its own. One backbone embeds both: the "
                  "view through a linear layer, the tiles each through the backbone and a shared linear "
                  "layer, concatenated and projected. Both embeddings must pick out their image's entry in "
                  "a memory bank (a running average of the view's past embeddings, one per training image) "
                  "among entries of other images (InfoNCE at a temperature), so the features become "
                  "invariant to the jigsaw transformation instead of predicting it. The heads and the "
                  "memory bank are dropped after training; the backbone is released.",
        pretext_eval="each image of the held-out {split} split of {data} as a view and as a jigsaw puzzle (fixed "
                     "seeds): the puzzle's embedding must be nearest its own view's among the batch's views",
        limitation="The backbone saw whole views and small tiles; its invariance to the tile shuffle and to "
                   "colour makes it less suited to tasks that need colour or the layout of parts.",
        view_size_field="image_size",
    )
    image_size: int = 32  # the view's side
    # The jigsaw view: tiles of `tile_size` inside the cells of a `jigsaw_crop` square (the image's
    # shorter side resized to it; None = the data's image_size). The paper cuts 64 px tiles in 85 px
    # cells of a 255 px crop; 48 / 14 on CIFAR-10 upsamples 32 px images to give tiles the backbone
    # can still downsample three times.
    jigsaw_crop: int | None = None
    tile_size: int = 14
    num_permutations: int = 1000
    permutation_seed: int = at_least(0, 0)
    tile_grey_probability: float = 0.3
    tile_saturation: tuple[float, float] = (0.4, 1.6)
    # The view's augmentation (SimCLR's CIFAR settings).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter_strength: float = 0.5
    jitter_probability: float = 0.8
    grey_probability: float = 0.2
    blur_probability: float = 0.0
    jitter_style: str = "paper"  # or "torchvision" (`ssl_zoo.pretext.contrastive.colour_jitter`)
    crop_sampler: str = "tf"  # or "torchvision" (`ssl_zoo.data.augment.random_resized_crop`)
    # Embeddings, contrast and memory bank: "128-dimensional", tau = 0.07, lambda = 0.5, memory
    # momentum 0.5 (Sec. 3.2, 4.1); the paper draws 32,000 negatives from ImageNet's 1.28 M.
    projection_dim: int = 128
    tile_units: int = 128
    temperature: float = 0.07
    loss_weight: float = 0.5
    memory_momentum: float = 0.5
    num_negatives: int = 4096
    # What the memory bank starts from: "random" unit vectors (the paper, VISSL), or "features": f of
    # every training image's centre view by the untrained network, one inference pass before the
    # first epoch. With random entries the first epoch's positives carry nothing (an image's entry is
    # first written when the image is first seen); a schedule of a few epochs loses a large share of
    # its steps to that, hundreds of epochs do not.
    memory_init: str = "random"

    def __post_init__(self):
        self.crop_scale = tuple(self.crop_scale)
        self.tile_saturation = tuple(self.tile_saturation)
        require_view_settings(self.jitter_style, self.crop_sampler)
        self.require_positive("image_size", "tile_size", "num_permutations", "projection_dim", "tile_units",
                              "num_negatives")
        if self.temperature <= 0:
            raise ConfigError(f"[method] pirl temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.loss_weight <= 1.0:
            raise ConfigError(f"[method] pirl loss_weight must be in [0, 1], got {self.loss_weight}")
        if not 0.0 <= self.memory_momentum < 1.0:
            raise ConfigError(f"[method] pirl memory_momentum must be in [0, 1), got {self.memory_momentum}")
        if self.jigsaw_crop is not None and self.tile_size > self.jigsaw_crop // GRID:
            raise ConfigError(f"[method] pirl tile_size {self.tile_size} does not fit a cell of the jigsaw_crop "
                              f"{self.jigsaw_crop} (// 3 = {self.jigsaw_crop // GRID})")
        if self.backbone.get("image_size") is not None:
            raise ConfigError("PIRL feeds views and tiles of two sizes through one backbone: leave [backbone] "
                              f"image_size unset (it is {self.backbone['image_size']})")
        self.require_choice("memory_init", MEMORY_INITS)
        self._perms = random_permutations(self.num_permutations, self.permutation_seed)
        self.num_examples = None

    # ---- composition ---------------------------------------------------------------------------
    def prepare(self, source, split: str, image_size: int) -> None:
        require_stable_examples(source, split, "PIRL", "keeps a memory-bank entry per training image")
        self.num_examples = source.num_examples(split)
        if not self.num_examples:
            raise ConfigError(f"PIRL keeps one memory-bank entry per training image: {source.name}/{split} has no "
                              "known size (a finite split is needed)")
        crop = self.jigsaw_crop or image_size
        if self.tile_size > crop // GRID:
            raise ConfigError(f"[method] pirl tile_size {self.tile_size} does not fit a cell of the {crop} px "
                              f"jigsaw crop (// 3 = {crop // GRID}); set jigsaw_crop")

    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        s, t = self.image_size, self.tile_size
        image = keras.Input((s, s, 3), name="image")
        tiles = keras.Input((NUM_TILES, t, t, 3), name="tiles")
        f = keras.layers.Dense(self.projection_dim, name=f"{PRETEXT_HEAD}_image")(backbone(image))
        # The tiles are folded into the batch: one backbone call on all 9B tiles (batch norm over
        # all of them, as views.py does for jigsaw), then one linear layer per tile (shared).
        per_tile = keras.layers.Dense(self.tile_units, name=f"{PRETEXT_HEAD}_tile")(
            backbone(keras.ops.reshape(tiles, (-1, t, t, 3))))
        g = keras.layers.Dense(self.projection_dim, name=f"{PRETEXT_HEAD}_tiles")(
            keras.ops.reshape(per_tile, (-1, NUM_TILES * self.tile_units)))
        return keras.Model({"image": image, "tiles": tiles}, {"image": f, "tiles": g}, name="pretext_model")

    def example_transform(self, image, size: int, seed, training: bool = True, index=None) -> dict:
        """The view and the puzzle, each from its own seed; also at evaluation (fixed seeds there),
        where the puzzle is cut without jitter or colour changes."""
        del index
        view_seed, tile_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
        view = simclr_view(image, self.image_size, view_seed, scale=self.crop_scale,
                           jitter_strength=self.jitter_strength, jitter_probability=self.jitter_probability,
                           grey_probability=self.grey_probability, blur_probability=self.blur_probability,
                           jitter_style=self.jitter_style, crop_sampler=self.crop_sampler)
        tiles, _ = jigsaw_example(
            image, tile_seed, self._perms, crop_size=self.jigsaw_crop or size, tile_size=self.tile_size,
            training=training, grey_probability=self.tile_grey_probability, saturation=self.tile_saturation,
            mean=tuple(self.backbone.get("mean", IMAGENET_MEAN)), std=tuple(self.backbone.get("std", IMAGENET_STD)))
        return {"inputs": {"image": view, "tiles": tiles}}

    def pretext_picture(self, source, split: str, image_size: int, backbone=None) -> Picture:
        batch = self.pretext_batch(source, split, image_size, batch_size=8)["inputs"]
        tiles = for_display(batch["tiles"])
        return Picture("PIRL: a view of each image and its jigsaw tiles, shuffled (each normalised on its own); "
                       "both must map near the image's memory-bank entry and away from other images'",
                       [PictureRow("view", batch["image"]),
                        PictureRow("tiles as given", np.stack([mosaic(t, GRID) for t in tiles]))])

    # ---- state ---------------------------------------------------------------------------------
    def build_state(self, model):
        if self.num_examples is None:
            raise ConfigError("PIRL's memory bank needs the training set's size: the trainer calls prepare() first")
        if self.num_negatives >= self.num_examples:
            raise ConfigError(f"[method] pirl num_negatives = {self.num_negatives} must be smaller than the "
                              f"{self.num_examples} training images its memory bank holds")
        # Random unit vectors to start (as VISSL's normalised random init); seeded for reproducible runs.
        start = np.random.default_rng(0).normal(size=(self.num_examples, self.projection_dim)).astype(np.float32)
        start /= np.linalg.norm(start, axis=1, keepdims=True)
        return {"memory": state_variable(start, "memory_bank")}

    def on_epoch_begin(self, ctx):
        """With memory_init "features": before the first epoch, every entry becomes its image's f
        (centre view, batch statistics). Later epochs, and a resume, keep the bank as it is."""
        if self.memory_init != "features" or ctx.epoch > 0:
            return {}
        out = ctx.inference(self.embed_views, transform=self.centre_view)
        memory = ctx.state["memory"]
        start = memory.numpy()
        start[out["index"]] = out["outputs"]
        memory.assign(start)
        return {}

    def centre_view(self, image, size: int, seed, index=None) -> dict:
        """The view f sees when the bank is filled: the centre crop at `image_size`."""
        del size, seed, index
        return {"inputs": AUGMENTATIONS["center"](image, self.image_size, None)}

    @staticmethod
    def embed_views(model, state, views):
        """L2-normalised f(v_I) of a batch of views (the inference pass's function), with batch norm
        on the batch's statistics as in a training step: an untrained network's moving statistics
        (mean 0, variance 1) give features unlike the ones its first steps compare with the bank."""
        del state
        f = model.get_layer(f"{PRETEXT_HEAD}_image")(model.get_layer(BACKBONE)(views, training=True))
        return tf.math.l2_normalize(tf.cast(f, tf.float32), axis=-1)

    def negatives(self, step):
        """The bank rows contrasted at `step`: uniform, a pure function of the step."""
        seed = tf.stack([tf.constant(_NEGATIVES_SALT, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.stateless_uniform([self.num_negatives], seed, minval=0, maxval=self.num_examples,
                                           dtype=tf.int64)

    def update_memory(self, memory, embeddings, index) -> None:
        """m_I <- normalise(mu m_I + (1 - mu) normalise(f(v_I))) for the global batch's images (every
        replica's, gathered, so the copies stay identical)."""
        ctx = tf.distribute.get_replica_context()
        f = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
        index = tf.cast(index, tf.int64)
        if ctx.num_replicas_in_sync > 1:
            f, index = ctx.all_gather(f, axis=0), ctx.all_gather(index, axis=0)
        mixed = self.memory_momentum * tf.gather(memory, index) + (1.0 - self.memory_momentum) * f
        scatter_rows(memory, index, tf.math.l2_normalize(mixed, axis=-1))

    # ---- steps ---------------------------------------------------------------------------------
    def _loss(self, outputs, memory, index, negative_index):
        """Per example: lambda L(m_I, g) + (1 - lambda) L(m_I, f); "correct": the puzzle's embedding
        ranks its image's entry first."""
        tiles_loss, tiles_correct = memory_bank_contrast(outputs["tiles"], memory, index, negative_index,
                                                         self.temperature)
        image_loss, image_correct = memory_bank_contrast(outputs["image"], memory, index, negative_index,
                                                         self.temperature)
        per_example = self.loss_weight * tiles_loss + (1.0 - self.loss_weight) * image_loss
        return per_example, tiles_correct, image_correct

    def train_step(self, ctx, batch):
        model, memory = ctx.model, ctx.state["memory"]
        index = batch["index"]
        negative_index = self.negatives(ctx.step)
        with tf.GradientTape() as tape:
            outputs = model(batch["inputs"], training=True)
            per_example, tiles_correct, image_correct = self._loss(outputs, memory, index, negative_index)
            loss = losses.replica_loss(per_example, model)
        grads = tape.gradient(loss, model.trainable_variables)
        ctx.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        self.update_memory(memory, outputs["image"], index)
        metrics = per_view_metrics(per_example, tiles_correct)
        metrics["image_accuracy"] = tf.reduce_sum(tf.cast(image_correct, tf.float32))
        return metrics

    def eval_step(self, ctx, batch):
        """Held-out images have no memory entry: each puzzle's embedding is contrasted with the
        views' embeddings of the global batch (its own view the positive)."""
        outputs = ctx.model(batch["inputs"], training=False)
        replica = tf.distribute.get_replica_context()
        views = tf.math.l2_normalize(tf.cast(outputs["image"], tf.float32), axis=-1)
        local = tf.shape(views)[0]
        everyone = replica.all_gather(views, axis=0) if replica.num_replicas_in_sync > 1 else views
        mine = tf.cast(replica.replica_id_in_sync_group, tf.int32) * local + tf.range(local)
        puzzles = tf.math.l2_normalize(tf.cast(outputs["tiles"], tf.float32), axis=-1)
        logits = tf.matmul(puzzles, everyone, transpose_b=True) / self.temperature
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=mine, logits=logits)
        correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), mine)
        return per_view_metrics(per_example, correct)
