"""Exemplar CNN (Dosovitskiy et al., TPAMI 2016): every surrogate class is one seed patch under
random transformations; classify the seed. "the network is trained to discriminate between a set
of surrogate classes. Each surrogate class is formed by applying a variety of transformations to a
randomly sampled 'seed' image patch" (abstract).

How the data maps to classes. The classes are a fixed set of N seed patches; a training example is
(a class, a random transformation of its seed). So the dataset is not the images themselves:

- `prepare(source, split, image_size)` (called once by the trainer before any dataset is built)
  builds the seed bank: N source images taken from a seeded shuffle of the split's file list (a
  fixed, class-diverse choice: the first N files of an image folder would all be one class), each
  resized and centre-cropped to `image_size`, one seed box per image at the strongest-gradient
  candidate, stored with its surrounding context. It is a pure function of (data, split,
  image_size, num_classes, bank_seed): every worker and every resumed run rebuilds the same bank.
- The per-example transform ignores the image it is handed and draws (class id, transformation)
  from the example's stateless seed, so the pipeline's seeding, sharding, resumption and
  distribution work unchanged, classes are balanced in expectation, and each class gets fresh
  transformations in every epoch (the paper pre-generated a fixed number per class; sampling
  anew is the limit of many).
- Only the draws are per example; the views are made per batch (`views_from_batch`, the batch
  transform), since a 32 px view costs little more per image in a batch of 128 than alone.
- An "epoch" is as many examples as the split has images (the recipe's steps per epoch).

Composition otherwise: backbone on the view, MLP head over N classes, cross-entropy, default step.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf

from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import classification_head
from ssl_zoo.image_grid import Picture, PictureRow
from ssl_zoo.methods.base import PretextMethod, single_view_classifier
from ssl_zoo.methods.card import MethodCard
from ssl_zoo.pretext.exemplar import apply_transformations, draw_example, draw_transformation, seed_context
from ssl_zoo.train.recipe import at_least

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Exemplar(PretextMethod):
    name: ClassVar[str] = "exemplar"
    card: ClassVar[MethodCard] = MethodCard(
        title="Exemplar CNN",
        paper="Dosovitskiy, Fischer, Springenberg, Riedmiller & Brox, \"Discriminative Unsupervised Feature "
              "Learning with Exemplar Convolutional Neural Networks\", TPAMI 2016 (arXiv:1406.6909)",
        paragraph="Seed patches are sampled where the image gradient is strong; each seed becomes its own "
                  "surrogate class, seen under random translation, scaling, rotation, contrast and colour "
                  "changes, and the network classifies which seed a transformed view came from. To tell "
                  "thousands of seeds apart under these changes the features must be invariant to them and "
                  "still discriminative. The classifier over the surrogate classes is dropped after training; "
                  "the backbone is released.",
        # Its classes *are* training seeds, so its held-out measure is new transformations, not new images.
        pretext_eval="fresh random transformations of the seed patches (drawn by the evaluation pipeline's "
                     "fixed seeds, as many as the {split} split of {data} has images)",
        pretext_classes="num_classes",
        limitation="The surrogate classes are a fixed sample of seed patches from the training images; "
                   "features are invariant only to the transformations the recipe applied.",
        view_size_field="patch_size",
    )
    reads_images: ClassVar[bool] = False  # examples come from the seed bank (see `prepare`)
    # The paper used 8000 classes (16000 and 32000 in later tables) from 96 px STL-10 images,
    # 32 px seed patches: the setting reproduced here with Imagenette at 96 px.
    num_classes: int = 2000
    patch_size: int = 32
    context_size: int = 48
    candidates: int = 16
    bank_seed: int = at_least(0, 0)
    translate: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)
    rotate_degrees: float = 20.0
    contrast: tuple[float, float] = (0.5, 2.0)
    sv_power: tuple[float, float] = (0.25, 4.0)
    sv_factor: tuple[float, float] = (0.7, 1.4)
    sv_shift: float = 0.1
    hue_shift: float = 0.1
    head_hidden_units: tuple[int, ...] = (512,)

    def __post_init__(self):
        if (self.context_size - self.patch_size) % 2 or self.context_size < self.patch_size:
            raise ConfigError("context_size must be >= patch_size and differ from it by an even number")
        size = self.backbone.get("image_size")
        if size is not None and size != self.patch_size:
            raise ConfigError(f"backbone image_size {size} must equal patch_size {self.patch_size}")
        for f in ("scale", "contrast", "sv_power", "sv_factor", "head_hidden_units"):
            setattr(self, f, tuple(getattr(self, f)))
        self.bank: np.ndarray | None = None  # [N, C, C, 3] uint8, from `prepare`
        self.bank_scores: np.ndarray | None = None  # mean gradient magnitude of each seed box
        self.batch_transform = self.views_from_batch

    # ---- the seed bank ----------------------------------------------------------------------
    def prepare(self, source, split: str, image_size: int) -> None:
        images = source.examples(split, shuffle_seed=self.bank_seed).map(lambda ex: ex["image"])
        self.set_bank_from_images(images, image_size)
        log.info("exemplar: %d seed patches from %s/%s (mean gradient %.1f)", self.num_classes, source.name,
                 split, float(self.bank_scores.mean()))

    def set_bank_from_images(self, images, image_size: int) -> None:
        """Builds the seed bank from the first `num_classes` of `images` (a dataset or array of
        images), seed box of image i chosen with the stateless seed (bank_seed, i)."""
        ds = images if isinstance(images, tf.data.Dataset) else tf.data.Dataset.from_tensor_slices(images)
        kwargs = dict(image_size=image_size, patch_size=self.patch_size, context_size=self.context_size,
                      candidates=self.candidates)
        ds = ds.take(self.num_classes).enumerate().map(
            lambda i, im: seed_context(im, tf.stack([tf.constant(self.bank_seed, tf.int64), i]), **kwargs),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
        contexts, scores = [], []
        for c, s in ds.batch(256).as_numpy_iterator():
            contexts.append(c)
            scores.append(s)
        n = sum(len(c) for c in contexts)
        if n < self.num_classes:
            raise ConfigError(f"{self.num_classes} surrogate classes need as many images; the data has {n}")
        self.bank = np.concatenate(contexts)
        self.bank_scores = np.concatenate(scores)

    # ---- composition ------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        backbone = self.build_backbone()
        head = classification_head(self.num_classes, self.head_hidden_units)
        return single_view_classifier(backbone, head, self.patch_size)

    def transform_ranges(self) -> dict:
        return dict(translate=self.translate, scale=self.scale, rotate_degrees=self.rotate_degrees,
                    contrast=self.contrast, sv_power=self.sv_power, sv_factor=self.sv_factor,
                    sv_shift=self.sv_shift, hue_shift=self.hue_shift)

    def example_transform(self, image, size: int, seed, training: bool = True, index=None):
        """(ignored image) -> {"inputs": (a random seed's context, its view's parameters), "targets": class id}; the
        batch transform turns each batch of them into views. At evaluation (`training=False`) the
        same distribution, from the evaluation pipeline's fixed seeds: the pretext accuracy then
        measures recognition of the seeds under unseen transformations."""
        del image, size, training, index
        if self.bank is None:
            raise RuntimeError("Exemplar needs its seed bank: call prepare(source, split, image_size) first "
                               "(the trainer does so before building datasets)")
        context, params, label = draw_example(self.bank, seed, patch_size=self.patch_size, **self.transform_ranges())
        return {"inputs": (context, params), "targets": label}

    def views_from_batch(self, batch: dict) -> dict:
        """{"inputs": (contexts [B, C, C, 3], parameters), "targets"} -> {"inputs": views [B, P, P, 3], "targets"}."""
        contexts, params = batch["inputs"]
        return {"inputs": apply_transformations(contexts, params, patch_size=self.patch_size),
                "targets": batch["targets"]}

    def pretext_picture(self, source, split: str, image_size: int, backbone=None, classes: int = 4,
                        views: int = 7) -> Picture:
        """A few surrogate classes of a small seed bank from `split`: each seed patch, then views of it
        as the transformations draw them (the network must tell the class from any of them)."""
        small = dataclasses.replace(self, num_classes=classes)
        small.prepare(source, split, image_size)
        rows = []
        for c in range(classes):
            params = [draw_transformation(tf.constant([c, j], tf.int64), patch_size=self.patch_size,
                                          **self.transform_ranges()) for j in range(views)]
            params = tf.nest.map_structure(lambda *p: tf.stack(p), *params)
            contexts = np.repeat(small.bank[c:c + 1], views, axis=0)
            seed_box = apply_transformations(contexts[:1], tf.nest.map_structure(lambda p: p[:1], params),
                                             patch_size=self.patch_size, geometric=False, colour=False)
            shown = apply_transformations(contexts, params, patch_size=self.patch_size)
            rows.append(PictureRow(f"class {c}", np.concatenate([seed_box.numpy(), shown.numpy()]),
                                   ["seed patch"] + [""] * views))
        return Picture(f"Exemplar CNN: {classes} of the {self.num_classes} surrogate classes, each a seed patch "
                       f"(high gradient) and its random transformations; the network names the class", rows)
