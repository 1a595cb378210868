"""What a method is: composition of a backbone, a pretext transform, a head and a loss, plus
whatever it keeps between steps.

The contract, from the simplest method to the most stateful:

- **Composition** (every method): `build_model()`, `example_transform()` (an image -> a
  `{"inputs", "targets"}` dict, see `ssl_zoo.data.pipeline.pretext_example`) and optionally
  `batch_transform` (a batch dict -> a batch dict). Discriminative pretexts (rotation, jigsaw,
  ...) stop here: the default `train_step` (forward, `loss(targets, outputs)`, backward, the one
  optimizer of the recipe's `[optimizer]`) trains them.
- **State** (`build_state`): EMA targets, queues, memory banks, per-image pseudo-labels. Built by
  the trainer under the strategy scope and checkpointed with the model, so a killed run resumes
  with it (lightly's memory bank is `persistent=False`: a resumed MoCo loses its queue; not here).
- **Several optimizers** (`optimizer_names` + `optimizer_variables`): each name gets its own
  recipe section `[optimizers.NAME]` (keys it leaves out come from `[optimizer]`) and schedule;
  the step reads `ctx.optimizers[NAME]` (mmagic's `optim_wrapper["generator"]`).
- **Step context** (`StepContext`): the model, optimizers, state, global step and total steps
  (BYOL's momentum schedule) reach the step; the batch carries `index`, each source image's
  identity (memory banks, pseudo-labels).
- **Epoch hooks** (`on_epoch_begin`): run by the trainer after any restore, at the start of
  every epoch that starts afresh (never on a mid-epoch resume, which restores what the hook
  computed from the checkpoint), with `EpochContext.inference`, an in-order distributed pass
  over a split (DeepCluster's features of the whole training set). `refresh_offsets` +
  `on_refresh` run the same kind of hook at chosen steps within an epoch (SeLa's label updates).
- **Metrics** (`metrics`, or the dict a step returns): sums over examples, reduced over
  replicas and averaged by `count`; every name the method returns reaches the history,
  TensorBoard and the card.
- **Export** (`export_backbone`): what the release is, a Keras model from RGB in [0, 255] to
  features with stages named `stem` ... `pooled`, made of stock layers (safe mode). Default:
  the sub-model named "backbone".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import keras
import tensorflow as tf

from ssl_zoo import losses
from ssl_zoo.backbones import build_backbone
from ssl_zoo.data.augment import AUGMENTATIONS
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD
from ssl_zoo.image_grid import Picture
from ssl_zoo.methods.card import MethodCard

BACKBONE = "backbone"
# The one optimizer of a method that names none: the recipe's [optimizer] section.
DEFAULT_OPTIMIZER = "default"


@dataclasses.dataclass
class StepContext:
    """What a training step sees besides its batch. Built once by the trainer; `step` is read
    inside the compiled step, so schedules that depend on it need no retracing."""

    model: keras.Model
    optimizers: dict[str, Any]
    state: dict[str, Any]
    step: tf.Variable  # optimizer steps completed before this one (int64)
    total_steps: int
    steps_per_epoch: int

    @property
    def optimizer(self):
        """The single optimizer of a method that names none."""
        if list(self.optimizers) != [DEFAULT_OPTIMIZER]:
            raise ConfigError(f"this method has several optimizers {sorted(self.optimizers)}: use ctx.optimizers[name]")
        return self.optimizers[DEFAULT_OPTIMIZER]

    def progress(self) -> tf.Tensor:
        """Fraction of the run done before this step, float32 in [0, 1]."""
        return tf.cast(self.step, tf.float32) / float(max(self.total_steps, 1))


@dataclasses.dataclass
class EpochContext:
    """What an epoch hook sees. `inference(fn, ...)` runs `fn(model, state, inputs)` over a whole
    split on every replica and returns its outputs gathered in index order (see
    `ssl_zoo.train.loop.Trainer.inference_pass`)."""

    epoch: int  # 0-based: the epoch about to start
    step: int
    model: keras.Model
    optimizers: dict[str, Any]
    state: dict[str, Any]
    train_split: str
    num_examples: int
    inference: Callable[..., dict]
    seed: int = 0  # the recipe's [train] seed: randomness in a hook (k-means) derives from (seed, epoch)
    out_dir: Any = None  # the run folder on the chief (None elsewhere): for a hook's own report files


def state_variable(initial_value, name: str, dtype=None) -> tf.Variable:
    """A variable for method state, created in `build_state` (under the strategy scope).

    Non-trainable, and assigned from the first replica: a state update must compute the same
    value on every replica (from gathered or identical inputs), and ONLY_FIRST_REPLICA makes a
    plain `assign` inside the step legal under every strategy and keeps the copies identical."""
    return tf.Variable(initial_value, dtype=dtype, trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_WRITE,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def scatter_rows(variable: tf.Variable, rows, values) -> None:
    """`variable[rows] = values` in place, inside a replica's step, on every replica's copy: only the
    rows are written (a memory bank of ImageNet's 1.28 M images is 655 MB; rewriting it whole every
    step would cost more than the step). A `state_variable` cannot scatter in a replica context, so
    the write goes through `merge_call`; `rows` and `values` must be the same on every replica
    (gathered from all of them)."""
    def update(strategy, rows, values):
        return strategy.extended.update(variable, lambda v, r, u: v.scatter_nd_update(r, u), args=(rows, values),
                                        group=False)

    tf.distribute.get_replica_context().merge_call(update, args=(tf.reshape(rows, [-1, 1]), values))


@dataclasses.dataclass
class PretextMethod:
    """Base for methods; subclasses are dataclasses whose fields are their typed configuration."""

    backbone: dict = dataclasses.field(default_factory=lambda: {"arch": "resnet", "depth": 18})
    name: ClassVar[str] = ""
    card: ClassVar["MethodCard | None"] = None
    # () = one optimizer, the recipe's [optimizer]; else one [optimizers.NAME] section per name.
    optimizer_names: ClassVar[tuple[str, ...]] = ()
    # Per-example view augmentation the default transform applies before batching (data.augment).
    augment: str = "crop_flip"
    # False for methods whose examples do not depend on the image the pipeline hands them
    # (Exemplar CNN samples its seed bank): the trainer then streams placeholders (ImagelessSource)
    # instead of decoding every training image only to drop it.
    reads_images: ClassVar[bool] = True
    # True only for the supervised reference (`supervised.py`): its transform is handed each
    # image's class (`label=`). Self-supervised methods never see labels.
    reads_labels: ClassVar[bool] = False
    # JSON files the method's hooks write into the run folder that its card reads (DeepCluster's
    # clusters.json): `ssl-zoo export` copies them into the preset's metadata ("run_reports").
    # A method may also render card lines and a plot from the metadata: `card_training(meta,
    # plot_name) -> lines`, `card_plot(meta, path) -> path or None` (see clustering_report.py).
    run_reports: ClassVar[tuple[str, ...]] = ()

    def require_positive(self, *fields: str) -> None:
        """Refuses (ConfigError naming the field) a configuration count below 1."""
        for field in fields:
            if getattr(self, field) < 1:
                raise ConfigError(f"[method] {self.name} {field} must be positive, got {getattr(self, field)}")

    def require_choice(self, field: str, choices) -> None:
        """Refuses (ConfigError naming the field and the choices) a value not among `choices`."""
        value = getattr(self, field)
        if value not in choices:
            raise ConfigError(f"[method] {self.name} {field} must be one of {list(choices)}, got {value!r}")

    def build_backbone(self) -> keras.Model:
        return build_backbone(self.backbone, name=BACKBONE)

    # Optional transform of a whole batch dict `{"inputs", "targets"?} -> {"inputs", "targets"?}`,
    # for pretexts that need every variant of an image in the same batch (RotNet). None: as is.
    batch_transform: Callable | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    # ---- composition --------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        raise NotImplementedError

    def example_transform(self, image, size: int, seed, training: bool = True, index=None) -> dict:
        """Per-example transform, before batching: an image -> `{"inputs": ..., "targets": ...}`
        ("targets" optional). `seed` is a stateless seed, `index` the image's identity in its split.
        The default is a view (float32 [size, size, 3]) without a target, for a batch transform to
        label; at evaluation (`training=False`) the view is the centre crop."""
        del index
        return {"inputs": AUGMENTATIONS[self.augment if training else "center"](image, size, seed)}

    # ---- state, optimizers, hooks -------------------------------------------------------------
    def build_state(self, model: keras.Model) -> dict[str, Any]:
        """Trackables (tf.Variables, Keras models) the method keeps between steps; called once
        under the strategy scope after `build_model`, checkpointed with the model. None here."""
        del model
        return {}

    def optimizer_variables(self, name: str, model: keras.Model, state: dict) -> list:
        """The variables optimizer `name` updates (built before the first step, so that its slots
        exist under the strategy scope and in the checkpoint)."""
        if name != DEFAULT_OPTIMIZER:
            raise NotImplementedError(f"{type(self).__name__} names optimizer {name!r} but does not say which "
                                      f"variables it updates (override optimizer_variables)")
        return model.trainable_variables

    def on_epoch_begin(self, ctx: EpochContext) -> dict[str, float]:
        """Runs before each epoch that starts afresh, after any restore. Returns metrics for the
        epoch's history record (e.g. clustering NMI). Nothing here."""
        del ctx
        return {}

    def refresh_offsets(self, steps_per_epoch: int) -> tuple[int, ...]:
        """Steps within an epoch (1 .. steps_per_epoch - 1 done) before which `on_refresh` runs:
        SeLa re-solves its labels several times per epoch. None here."""
        del steps_per_epoch
        return ()

    def on_refresh(self, ctx: EpochContext) -> dict[str, float]:
        """Runs before the epoch's step at each of `refresh_offsets`, also after a resume that
        lands on one (a checkpoint at that step was written before the refresh ran). Its report
        goes to the run's `refresh_hooks.json`, keyed by the global step."""
        raise NotImplementedError(f"{type(self).__name__} has refresh_offsets but no on_refresh")

    # ---- steps ----------------------------------------------------------------------------------
    def loss(self, targets, outputs):
        """Per-example loss; reduced to the global mean by the step."""
        return losses.sparse_cross_entropy(targets, outputs)

    def train_step(self, ctx: StepContext, batch: dict) -> dict[str, tf.Tensor]:
        """One replica's step. Returns sums over this replica's examples (and their `count`),
        which the loop sums over replicas and divides by the total count."""
        model, targets = ctx.model, batch["targets"]
        with tf.GradientTape() as tape:
            outputs = model(batch["inputs"], training=True)
            per_example = self.loss(targets, outputs)
            loss = losses.replica_loss(per_example, model)
        grads = tape.gradient(loss, model.trainable_variables)
        ctx.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return self.metrics(targets, outputs, per_example)

    def eval_step(self, ctx: StepContext, batch: dict) -> dict[str, tf.Tensor]:
        outputs = ctx.model(batch["inputs"], training=False)
        return self.metrics(batch["targets"], outputs, self.loss(batch["targets"], outputs))

    def metrics(self, targets, outputs, per_example) -> dict[str, tf.Tensor]:
        """Sums the loop averages: "loss_sum" -> loss, "correct" -> accuracy, "NAME_sum" -> NAME,
        any other key by its own name; all divided by the summed "count"."""
        correct = tf.equal(tf.argmax(outputs, -1, output_type=tf.int32), tf.cast(targets, tf.int32))
        return {
            "loss_sum": tf.reduce_sum(per_example),
            "correct": tf.reduce_sum(tf.cast(correct, tf.float32)),
            "count": tf.cast(tf.shape(per_example)[0], tf.float32),
        }

    # ---- release --------------------------------------------------------------------------------
    def export_backbone(self, model: keras.Model, state: dict) -> keras.Model:
        """The released backbone: a functional model from RGB in [0, 255] to the pooled features
        whose stages are top-level layers named `stem` ... `pooled`, of stock layers only (safe
        mode). Default: the sub-model named "backbone"; a method may release another encoder (an
        EMA target from `state`) or wrap one whose input is not RGB."""
        del state
        return extract_backbone(model)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}}

    def prepare(self, source, split: str, image_size: int) -> None:
        """Called once by the trainer with the training data before any dataset is built, for
        methods whose pretext classes come from the data (Exemplar CNN's seed patches). No-op."""

    def check_batch(self, global_batch: int, per_replica_batch: int) -> None:
        """Called by the trainer before anything is built: raise ConfigError for batch sizes the
        method cannot work with (MoCo's queue must hold a global batch). No-op."""

    # ---- pictures -------------------------------------------------------------------------------
    def pretext_picture(self, source, split: str, image_size: int, backbone=None) -> Picture | None:
        """What the network is asked, drawn from `split` of `source` by the method's own transform
        with its training augmentation (`ssl-zoo pictures` draws it beside the card, NAME_pretext.png):
        a title and rows of images with captions. `backbone`: the entry's backbone, for a method whose
        targets come from the network itself (DeepCluster's clusters); the others draw from the data
        alone. None: the method draws none here (the generative methods draw theirs with the trained
        model, `ssl-zoo diagnose --picture`)."""
        del source, split, image_size, backbone
        return None

    def pretext_batch(self, source, split: str, image_size: int, batch_size: int = 8, seed: int = 0) -> dict:
        """One batch of pretext examples from `split` (its source's order shuffled by `seed`), made
        as the trainer makes them (example transform with training augmentation, then the batch
        transform), as NumPy."""
        from ssl_zoo.data.pipeline import build_pretext_dataset

        ds = build_pretext_dataset(source, split, self, batch_size=batch_size, image_size=image_size,
                                   training=True, seed=seed, shuffle_buffer=1, drop_remainder=False)
        for batch in ds.take(1):
            return tf.nest.map_structure(lambda t: t.numpy(), batch)
        raise ConfigError(f"{source.name}/{split} has no image to draw the pretext task from")


def extract_backbone(model: keras.Model) -> keras.Model:
    """The backbone inside a pretext model, found by name (the head is dropped by name too)."""
    try:
        backbone = model.get_layer(BACKBONE)
    except ValueError as e:
        names = [layer.name for layer in model.layers]
        raise ConfigError(f"model {model.name!r} has no layer {BACKBONE!r}; its layers: {names}") from e
    if len(backbone.outputs) > 1:
        # A backbone that also hands a feature map to the head (views.py, fusion "spatial"): the
        # exported backbone is the same layers up to the pooled features, its usual single output.
        return keras.Model(backbone.input, backbone.get_layer("pooled").output, name=backbone.name)
    return backbone


def single_view_classifier(backbone: keras.Model, head: keras.Model, image_size) -> keras.Model:
    """images -> backbone -> head, with the backbone and head as named sub-models."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    return keras.Model(inputs, head(backbone(inputs)), name="pretext_model")


__all__ = ["BACKBONE", "DEFAULT_OPTIMIZER", "PRETEXT_HEAD", "EpochContext", "PretextMethod", "StepContext",
           "extract_backbone", "scatter_rows", "single_view_classifier", "state_variable"]
