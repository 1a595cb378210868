"""The training loop shared by every method and every tf.distribute strategy.

Why our own loop: Keras 3's `Model.fit` fails under `MultiWorkerMirroredStrategy` (Keras 3.15 /
TF 2.21: "Attempt to convert a value (PerReplica…) with an unsupported type",
keras-team/keras#20585), while `strategy.run` over a `tf.function` step with Keras layers, losses
and optimizers trains correctly under all strategies. The loop owns distribution, checkpoints,
resumption, logs and progress; a method owns only its step (`PretextMethod.train_step`), its
state, its optimizers' variables and its epoch hooks (see `ssl_zoo.methods.base`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ssl_zoo.data.pipeline import build_inference_dataset, build_pretext_dataset, check_not_empty
from ssl_zoo.data.sources import ImagelessSource, Source
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.base import DEFAULT_OPTIMIZER, EpochContext, PretextMethod, StepContext
from ssl_zoo.preset import write_json
from ssl_zoo.progress import Progress
from ssl_zoo.train.recipe import OptimizerConfig, Recipe
from ssl_zoo.train.strategy import is_chief, worker_dir

log = logging.getLogger(__name__)
SUM = tf.distribute.ReduceOp.SUM


class L2SGD(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 penalty: `weight_decay * w` added to each decayed variable's
    gradient before the momentum (as PyTorch's `torch.optim.SGD(weight_decay=)`), where Keras's SGD
    shrinks the weights directly by `lr * weight_decay` (decoupled). With momentum m the L2 form
    decays about 1 / (1 - m) times as strongly. The variables excluded from decay stay excluded."""

    def apply(self, grads, trainable_variables=None):
        variables = self._trainable_variables if trainable_variables is None else trainable_variables
        if self.weight_decay:
            # Each replica's gradients are summed over the replicas after this: each adds its share.
            replica = tf.distribute.get_replica_context()
            share = self.weight_decay / (replica.num_replicas_in_sync if replica is not None else 1)
            grads = [g + share * v if g is not None and self._use_weight_decay(v) else g
                     for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def _apply_weight_decay(self, variables):
        """Nothing: the decay is in the gradient (`apply`), not applied to the weights."""


def build_optimizer(cfg: OptimizerConfig, global_batch: int, total_steps: int, steps_per_epoch: int):
    """Optimizer with linear LR scaling and (optional) linear warmup + cosine decay."""
    peak = cfg.learning_rate * global_batch / 256
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else peak,
            decay_steps=max(total_steps - warmup, 1),
            warmup_target=peak if warmup else None,
            warmup_steps=warmup,
        )
    elif cfg.schedule == "constant":
        lr = peak
    else:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; cosine or constant")
    if cfg.weight_decay_mode == "l2" and cfg.name != "sgd":
        raise ConfigError(f"[optimizer] weight_decay_mode = \"l2\" is for sgd; {cfg.name} decays the weights "
                          "decoupled (leave weight_decay_mode out)")
    if cfg.name == "sgd":
        sgd = L2SGD if cfg.weight_decay_mode == "l2" else keras.optimizers.SGD
        opt = sgd(lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay or None)
    elif cfg.name == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, beta_1=cfg.beta_1)
    elif cfg.name == "lamb":
        opt = keras.optimizers.Lamb(lr, beta_1=cfg.beta_1, weight_decay=cfg.weight_decay or None)
    else:
        raise ConfigError(f"unknown optimizer {cfg.name!r}; sgd, adamw or lamb")
    if cfg.weight_decay and not cfg.decay_norm_and_bias:
        # Batch-norm scales/offsets and biases are not decayed (standard since Goyal et al. 2017).
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


def save_model_atomic(model: keras.Model, path: str | Path) -> None:
    """Writes a .keras file next to its destination and renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    model.save(tmp)
    os.replace(tmp, path)


class Trainer:
    """Trains `method` on `source` under `strategy` as the recipe says, in `out_dir`.

    out_dir/
      checkpoints/      tf.train.CheckpointManager (model, optimizers, step, method state);
                        resumed automatically
      tensorboard/      scalars (chief only)
      history.json      one record per epoch
      epoch_hooks.json  what each epoch's hook reported (kept for a mid-epoch resume)
      refresh_hooks.json what each within-epoch refresh (SeLa's label updates) reported, by global step
      epoch_totals.json the running sums of the epoch's metrics at each checkpoint and the seconds
                        the epoch had trained by then, so that a resumed epoch's record averages
                        over all its steps and counts all its time, as an unbroken one
      pretext_model.keras, backbone.keras   written atomically at the end
    """

    def __init__(self, method: PretextMethod, recipe: Recipe, source: Source, strategy, out_dir: str | Path):
        self.method, self.recipe, self.source, self.strategy = method, recipe, source, strategy
        self.out_dir = Path(out_dir)
        self.chief = is_chief(strategy)
        train = recipe.train
        replicas = strategy.num_replicas_in_sync
        if train.global_batch % replicas:
            raise ConfigError(f"global batch {train.global_batch} is not divisible by {replicas} replicas")
        self.global_batch = train.global_batch
        self.per_replica_batch = train.global_batch // replicas
        method.check_batch(self.global_batch, self.per_replica_batch)
        n = source.num_examples(recipe.data.train_split)
        self.steps_per_epoch = train.steps_per_epoch or (n // train.global_batch if n else None)
        if not self.steps_per_epoch:
            raise ConfigError(
                f"{source.name}/{recipe.data.train_split} has {n} examples: fewer than one global batch of {train.global_batch}"
            )
        self.total_steps = self.steps_per_epoch * train.epochs
        method.prepare(source, recipe.data.train_split, recipe.data.image_size)
        # What the training and evaluation pipelines read: the source, or only its example count
        # for methods that draw their examples from what `prepare` built.
        self.stream = source if method.reads_images else ImagelessSource(source)
        configs = optimizer_configs(method, recipe)
        # The recipe's seed also fixes the initial weights (Keras, NumPy and Python RNGs): two runs of
        # one recipe start alike, so a resumed run can be compared with an unbroken one.
        keras.utils.set_random_seed(train.seed)
        with strategy.scope():
            self.model = method.build_model()
            self.state = dict(method.build_state(self.model))
            self.optimizers = {}
            for opt_name, cfg in configs.items():
                opt = build_optimizer(cfg, train.global_batch, self.total_steps, self.steps_per_epoch)
                opt.build(method.optimizer_variables(opt_name, self.model, self.state))
                self.optimizers[opt_name] = opt
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        # The one-optimizer layout keeps the checkpoint keys of runs made before named optimizers.
        saved = {"model": self.model, "step": self.step}
        saved.update({"optimizer" if k == DEFAULT_OPTIMIZER else f"optimizer_{k}": v for k, v in self.optimizers.items()})
        if self.state:
            saved["state"] = tf.train.Checkpoint(**self.state)
        self.checkpoint = tf.train.Checkpoint(**saved)
        self.context = StepContext(model=self.model, optimizers=self.optimizers, state=self.state, step=self.step,
                                   total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
        ckpt_dir = worker_dir(str(self.out_dir / "checkpoints"), strategy)
        remove_unfinished_checkpoints(ckpt_dir)
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=2)
        self.preemption = None
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Saves a checkpoint on every worker when the cluster signals a preemption (SIGTERM).
            self.preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
                strategy.cluster_resolver, self.manager
            )
        self._train_fn = None
        self._eval_fn = None
        self._inference_fns: dict = {}
        self._totals: dict[str, float] = {}
        self._epoch_clock = (time.time(), 0.0)  # (when this process began the epoch, seconds it had before)

    @property
    def optimizer(self):
        """The optimizer of a one-optimizer method."""
        return self.context.optimizer

    def checkpoint_variables(self) -> dict:
        """Every variable the checkpoint holds, by a readable path: model weights, each optimizer's
        variables, the step and the method's state (for tests and for inspecting a run)."""
        out = {f"model/{v.path}": v for v in self.model.weights}
        for name, opt in self.optimizers.items():
            # By position and name: Keras numbers optimizer paths per process (sgd, sgd_1, ...).
            out.update({f"optimizer/{name}/{i}/{v.name}": v for i, v in enumerate(opt.variables)})
        out["step"] = self.step
        for key, value in self.state.items():
            if isinstance(value, tf.Variable):
                out[f"state/{key}"] = value
            elif hasattr(value, "weights"):  # a Keras model or layer
                out.update({f"state/{key}/{v.path}": v for v in value.weights})
            else:
                out.update({f"state/{key}/{i}": v for i, v in enumerate(value.variables)})
        return out

    # ---- data -------------------------------------------------------------------------------
    def _train_dataset(self, epoch: int, skip: int):
        data, train = self.recipe.data, self.recipe.train

        def dataset_fn(ctx):
            ds = build_pretext_dataset(
                self.stream, data.train_split, self.method,
                batch_size=ctx.get_per_replica_batch_size(self.global_batch),
                image_size=data.image_size, training=True, seed=train.seed,
                epoch=epoch, skip_batches=skip, shuffle_buffer=data.shuffle_buffer,
                input_context=ctx, repeat=True,
            )
            return ds.take(self.steps_per_epoch - skip)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _eval_dataset(self):
        data = self.recipe.data

        def dataset_fn(ctx):
            return build_pretext_dataset(
                self.stream, data.eval_split, self.method,
                batch_size=ctx.get_per_replica_batch_size(self.global_batch),
                image_size=data.image_size, input_context=ctx,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # ---- steps ------------------------------------------------------------------------------
    def train_step(self, dist_inputs):
        """One synchronous step over all replicas; returns metrics summed over replicas."""
        if self._train_fn is None:
            def step_fn(batch):
                return self.method.train_step(self.context, batch)

            @tf.function
            def distributed(batch):
                per_replica = self.strategy.run(step_fn, args=(batch,))
                self.step.assign_add(1)
                return {k: self.strategy.reduce(SUM, v, axis=None) for k, v in per_replica.items()}

            self._train_fn = distributed
        return self._train_fn(dist_inputs)

    def evaluate_pretext(self) -> dict[str, float]:
        """Pretext loss and accuracy on the held-out split (no augmentation)."""
        if self._eval_fn is None:
            @tf.function
            def distributed(batch):
                per_replica = self.strategy.run(lambda b: self.method.eval_step(self.context, b), args=(batch,))
                return {k: self.strategy.reduce(SUM, v, axis=None) for k, v in per_replica.items()}

            self._eval_fn = distributed
        totals: dict[str, float] = {}
        n = self.stream.num_examples(self.recipe.data.eval_split)
        progress = Progress(f"held-out evaluation ({self.recipe.data.eval_split})",
                            total=-(-n // self.global_batch) if n else None, unit="batches") if self.chief else None
        for i, batch in enumerate(self._eval_dataset()):
            for k, v in self._eval_fn(batch).items():
                totals[k] = totals.get(k, 0.0) + float(v)
            if progress:
                progress.update(i + 1)
        if progress:
            progress.finish()
        return _averages(totals)

    def inference_pass(self, fn, split: str | None = None, transform=None, global_batch: int | None = None) -> dict:
        """`fn(model, state, inputs)` (a tensor or a dict of tensors [B, ...]) over the whole
        `split` (default: the training split) on every replica, gathered from all of them and
        returned as NumPy arrays in index order, with "index" (the source images' identity) and
        "label" (the source's class, -1 where it has none: for reports only, never for training).

        `transform(image, size, seed, index=)` makes each example's `{"inputs"}` (default: the
        method's evaluation transform). Images that failed to decode are missing from the result.
        A trace is kept per `fn`, so calling it every epoch with the same function costs no retrace."""
        split = split or self.recipe.data.train_split
        transform = transform or functools.partial(self.method.example_transform, training=False)
        batch = global_batch or self.global_batch
        n = self.stream.num_examples(split)

        def dataset_fn(ctx):
            return build_inference_dataset(self.stream, split, transform, global_batch=batch,
                                           image_size=self.recipe.data.image_size, num_examples=n, input_context=ctx)

        if fn not in self._inference_fns:
            @tf.function
            def distributed(dist_batch):
                def replica_fn(b):
                    return fn(self.model, self.state, b["inputs"]), b["index"], b["label"]

                out = self.strategy.run(replica_fn, args=(dist_batch,))
                return tf.nest.map_structure(lambda t: self.strategy.gather(t, axis=0), out)

            self._inference_fns[fn] = distributed
        distributed = self._inference_fns[fn]
        chunks, indices, labels = [], [], []
        steps = -(-n // batch)
        progress = Progress(f"inference pass over {split}", total=steps, unit="batches") if self.chief else None
        t0 = time.time()
        for i, dist_batch in enumerate(self.strategy.distribute_datasets_from_function(dataset_fn)):
            out, index, label = distributed(dist_batch)
            chunks.append(tf.nest.map_structure(np.asarray, out))
            indices.append(np.asarray(index))
            labels.append(np.asarray(label))
            if progress:
                progress.update(min(i + 1, steps))
        index = np.concatenate(indices)
        keep = index >= 0
        order = np.argsort(index[keep], kind="stable")
        as_dict = isinstance(chunks[0], dict)
        outputs = {k: np.concatenate([c[k] for c in chunks])[keep][order] for k in chunks[0]} if as_dict else \
            {"outputs": np.concatenate(chunks)[keep][order]}
        if self.chief:
            log.info("inference pass over %s/%s: %d examples in %.1f s", self.source.name, split, int(keep.sum()),
                     time.time() - t0)
        return {**outputs, "index": index[keep][order], "label": np.concatenate(labels)[keep][order]}

    def _hook_context(self, epoch: int) -> EpochContext:
        return EpochContext(epoch=epoch, step=int(self.step.numpy()), model=self.model, optimizers=self.optimizers,
                            state=self.state, train_split=self.recipe.data.train_split,
                            num_examples=self.stream.num_examples(self.recipe.data.train_split),
                            inference=self.inference_pass, seed=self.recipe.train.seed,
                            out_dir=self.out_dir if self.chief else None)

    def _refresh_hook(self, epoch: int) -> None:
        """The method's within-epoch hook (`on_refresh`); its report is kept by global step."""
        ctx = self._hook_context(epoch)
        reported = {k: float(v) for k, v in (self.method.on_refresh(ctx) or {}).items()}
        if self.chief:
            log.info("refresh before step %d: %s", ctx.step + 1,
                     " ".join(f"{k}={v:.4f}" for k, v in reported.items()) or "done")
            path = self.out_dir / "refresh_hooks.json"
            hooks = json.loads(path.read_text()) if path.exists() else {}
            hooks[str(ctx.step)] = reported
            write_json(hooks, path, sort_keys=True)

    def _epoch_hook(self, epoch: int) -> dict[str, float]:
        """Runs the method's hook for an epoch that starts afresh and keeps what it reported."""
        ctx = self._hook_context(epoch)
        reported = {k: float(v) for k, v in (self.method.on_epoch_begin(ctx) or {}).items()}
        if self.chief and reported:
            path = self.out_dir / "epoch_hooks.json"
            hooks = json.loads(path.read_text()) if path.exists() else {}
            hooks[str(epoch + 1)] = reported
            write_json(hooks, path, sort_keys=True)
        return reported

    def _reported_by_hook(self, epoch: int) -> dict[str, float]:
        """A mid-epoch resume: the hook's state comes from the checkpoint, its report from disk."""
        path = self.out_dir / "epoch_hooks.json"
        return (json.loads(path.read_text()) if path.exists() else {}).get(str(epoch + 1), {})

    def _eval_due(self, epoch: int) -> bool:
        """Whether epoch `epoch` (1-based) ends with a pretext evaluation."""
        train = self.recipe.train
        return bool(self.recipe.data.eval_split) and (epoch % train.eval_every_epochs == 0 or epoch == train.epochs)

    def save_checkpoint(self) -> str:
        """A checkpoint of the current step, with the epoch's running metric sums written first
        (keyed by step: whichever checkpoint a resume restores finds its own)."""
        step = int(self.step.numpy())
        if self.chief:
            path = self.out_dir / "epoch_totals.json"
            kept = json.loads(path.read_text()) if path.exists() else {}
            kept = {k: v for k, v in kept.items() if int(k) > step - 3 * self.steps_per_epoch}
            t0, before = self._epoch_clock
            kept[str(step)] = {**self._totals, EPOCH_SECONDS: round(before + time.time() - t0, 3)}
            write_json(kept, path, sort_keys=True)
        return self.manager.save(checkpoint_number=step)

    def _restored_totals(self, step: int) -> tuple[dict[str, float], float]:
        """(the epoch's metric sums, the seconds it had trained) at checkpoint `step`; checkpoints
        written before the seconds were kept give 0."""
        path = self.out_dir / "epoch_totals.json"
        kept = dict((json.loads(path.read_text()) if path.exists() else {}).get(str(step), {}))
        return kept, float(kept.pop(EPOCH_SECONDS, 0.0))

    # ---- loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        recipe, train = self.recipe, self.recipe.train
        restored = self.manager.restore_or_initialize()
        start = int(self.step.numpy())
        if restored:
            log.info("resumed from %s at step %d", restored, start)
        history_path = self.out_dir / "history.json"
        history = json.loads(history_path.read_text()) if (restored and history_path.exists()) else []
        history = [h for h in history if h["step"] <= start]
        if history and history[-1]["step"] == start and self._eval_due(history[-1]["epoch"]) \
                and not any(k.startswith("eval_") for k in history[-1]):
            # Killed after an epoch's record and checkpoint, before its evaluation: evaluate now.
            history[-1].update({f"eval_{k}": round(v, 5) for k, v in self.evaluate_pretext().items()})
            if self.chief:
                write_json(history, history_path, sort_keys=True)
        if start == 0:
            probe = build_pretext_dataset(
                self.stream, recipe.data.train_split, self.method, batch_size=self.per_replica_batch,
                image_size=recipe.data.image_size, training=True, seed=train.seed,
            )
            check_not_empty(probe, self.stream, recipe.data.train_split)
        writer = tf.summary.create_file_writer(str(self.out_dir / "tensorboard")) if self.chief else tf.summary.create_noop_writer()
        if self.chief:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            log.info(
                "training %s: %d epochs x %d steps, global batch %d over %d replicas",
                self.method.name, train.epochs, self.steps_per_epoch, self.global_batch,
                self.strategy.num_replicas_in_sync,
            )
        with _checkpoint_on_interrupt(self):
            history = self._epochs(start, history, history_path, writer)
        writer.flush()
        skipped = self.source.stats.summary()
        if self.source.stats.total:
            log.warning("%s: %s", self.source.name, skipped)
        self._save_final()
        return {"history": history, "skipped": self.source.stats.counts()}

    def _epochs(self, start, history, history_path, writer):
        train = self.recipe.train
        refresh_offsets = {int(o) for o in self.method.refresh_offsets(self.steps_per_epoch)
                           if 0 < int(o) < self.steps_per_epoch}
        for epoch in range(start // self.steps_per_epoch, train.epochs):
            skip = int(self.step.numpy()) - epoch * self.steps_per_epoch
            # After the restore above: the hook never sees the random weights of a model about to be
            # restored, and a mid-epoch resume keeps the state the hook computed before the kill.
            reported = self._epoch_hook(epoch) if skip == 0 else self._reported_by_hook(epoch)
            totals, before = ({}, 0.0) if skip == 0 else self._restored_totals(int(self.step.numpy()))
            self._totals = totals
            t0 = time.time()
            self._epoch_clock = (t0, before)
            steps_run = 0
            progbar = keras.utils.Progbar(self.steps_per_epoch, verbose=1 if (self.chief and sys.stdout.isatty()) else 0)
            for batch in self._train_dataset(epoch, skip):
                if skip + steps_run in refresh_offsets:
                    self._refresh_hook(epoch)
                metrics = self.train_step(batch)
                if self.preemption is not None:
                    self.preemption.save_checkpoint_if_preempted()
                steps_run += 1
                step = int(self.step.numpy())
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                avg = _averages(totals)
                progbar.update(step - epoch * self.steps_per_epoch, [(k, v) for k, v in avg.items()])
                if step % train.log_every == 0 and self.chief:
                    rate = steps_run * self.global_batch / max(time.time() - t0, 1e-9)
                    log.info("epoch %d step %d/%d %s %.0f img/s", epoch + 1, step, self.total_steps,
                             " ".join(f"{k}={v:.4f}" for k, v in avg.items()), rate)
                    with writer.as_default(step=step):
                        for k, v in avg.items():
                            tf.summary.scalar(f"train/{k}", v)
                        for opt_name, opt in self.optimizers.items():
                            suffix = "" if opt_name == DEFAULT_OPTIMIZER else f"/{opt_name}"
                            tf.summary.scalar(f"train/learning_rate{suffix}", float(opt.learning_rate))
                # The epoch's last step is saved below, after its record is written.
                if step % train.checkpoint_every == 0 and step != (epoch + 1) * self.steps_per_epoch:
                    self.save_checkpoint()
            if not steps_run:
                raise RuntimeError(f"epoch {epoch + 1} produced no batch; {self.source.stats.summary()}")
            seconds = time.time() - t0  # this process's part; a resumed epoch adds what it had trained before
            # The steps those seconds cover: a checkpoint written before the seconds were kept gives none.
            timed_steps = steps_run + (skip if before else 0)
            record = {"epoch": epoch + 1, "step": int(self.step.numpy()), "seconds": round(before + seconds, 1),
                      "images_per_second": round(timed_steps * self.global_batch / (before + seconds), 1),
                      **{f"train_{k}": round(v, 5) for k, v in _averages(totals).items()},
                      **{f"hook_{k}": round(v, 5) for k, v in reported.items()}}
            for opt_name, opt in self.optimizers.items():
                if opt_name != DEFAULT_OPTIMIZER:  # each named optimizer's schedule, logged on its own
                    record[f"learning_rate_{opt_name}"] = float(opt.learning_rate)
            # The record, then the checkpoint, then the evaluation: a kill at any point loses neither
            # the epoch's training nor its record (a record beyond the restored step is dropped and
            # retrained; a checkpointed record without its evaluation is evaluated on resume).
            history.append(record)
            if self.chief:
                write_json(history, history_path, sort_keys=True)
            self.save_checkpoint()
            if self._eval_due(epoch + 1):
                record.update({f"eval_{k}": round(v, 5) for k, v in self.evaluate_pretext().items()})
            if self.chief:
                log.info("epoch %d done: %s", epoch + 1, record)
                with writer.as_default(step=record["step"]):
                    for k, v in record.items():
                        if k.startswith("eval_"):
                            tf.summary.scalar(f"eval/{k[5:]}", v)
                        elif k.startswith("hook_"):
                            tf.summary.scalar(f"epoch/{k[5:]}", v)
                write_json(history, history_path, sort_keys=True)
        return history

    def _save_final(self) -> None:
        target = worker_dir(str(self.out_dir), self.strategy)
        save_model_atomic(self.model, Path(target) / "pretext_model.keras")
        save_model_atomic(self.method.export_backbone(self.model, self.state), Path(target) / "backbone.keras")
        if self.chief:
            write_json(
                {"recipe": self.recipe.to_dict(), "method": self.method.config(),
                 "steps": int(self.step.numpy()), "replicas": self.strategy.num_replicas_in_sync,
                 "hardware": describe_hardware(self.strategy)},
                self.out_dir / "run.json", sort_keys=True,
            )
        else:
            shutil.rmtree(target, ignore_errors=True)


def remove_unfinished_checkpoints(ckpt_dir: str) -> list[str]:
    """Deletes what a save killed midway left: TensorFlow writes a checkpoint's shards into
    `ckpt-N_temp/` and merges them into `ckpt-N.index` / `.data-*` only when all are written, so
    such a folder is never a checkpoint (the manager's `checkpoint` file never names it) and would
    otherwise stay forever. Returns what was removed."""
    removed = []
    for path in sorted(Path(ckpt_dir).glob("ckpt-*_temp")) if Path(ckpt_dir).is_dir() else []:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(str(path))
    if removed:
        log.info("removed unfinished checkpoint saves: %s", ", ".join(removed))
    return removed


@contextlib.contextmanager
def _checkpoint_on_interrupt(trainer: Trainer):
    """Ctrl-C or SIGTERM (a scheduler's preemption) on a single host: save a checkpoint, then stop.
    Multi-worker runs use TF's PreemptionCheckpointHandler instead, which coordinates workers."""
    previous = None
    if trainer.preemption is None and threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        if trainer.preemption is None:
            path = trainer.save_checkpoint()
            log.warning("interrupted at step %d; checkpoint saved to %s; rerun the same command to resume",
                        int(trainer.step.numpy()), path)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def describe_hardware(strategy) -> dict:
    """What the run trained on, for the model card."""
    devices = tf.config.list_logical_devices()
    accelerators = sorted({d.device_type for d in devices} - {"CPU"})
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "accelerators": {t: sum(d.device_type == t for d in devices) for t in accelerators},
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def optimizer_configs(method: PretextMethod, recipe: Recipe) -> dict[str, OptimizerConfig]:
    """name -> the recipe section that configures it; the method's names and the recipe's sections
    must match exactly (a missing or unused section is a ConfigError naming it)."""
    names = tuple(method.optimizer_names)
    if not names:
        if recipe.optimizers:
            raise ConfigError(f"method {method.name!r} has one optimizer ([optimizer]); the recipe also has "
                              f"[optimizers.*] sections {sorted(recipe.optimizers)}")
        return {DEFAULT_OPTIMIZER: recipe.optimizer}
    missing = [n for n in names if n not in recipe.optimizers]
    unused = sorted(set(recipe.optimizers) - set(names))
    if missing or unused:
        raise ConfigError(f"method {method.name!r} trains with optimizers {list(names)}: the recipe needs one "
                          f"[optimizers.NAME] section each (missing {missing}, unused {unused})")
    return {n: recipe.optimizers[n] for n in names}


# epoch_totals.json's key for the seconds an epoch had trained at a checkpoint (not a metric).
EPOCH_SECONDS = "epoch_seconds"


def _averages(totals: dict[str, float]) -> dict[str, float]:
    """Summed metrics over the summed count: loss_sum -> loss, correct -> accuracy, X_sum -> X."""
    count = totals.get("count", 0.0)
    out = {}
    for k, v in totals.items():
        if k == "count":
            continue
        name = {"loss_sum": "loss", "correct": "accuracy"}.get(k, k.removesuffix("_sum"))
        out[name] = v / max(count, 1.0)
    if not math.isfinite(out.get("loss", 0.0)):
        raise FloatingPointError(f"loss is not finite: {out}")
    return out
