"""Fine-tuning a zoo backbone with plain Keras `fit`, next to the same architecture at random init.

Two phases, the usual transfer-learning schedule (Keras guide "Transfer learning & fine-tuning"):
1. frozen: `backbone.trainable = False` and a new Dense head trained at `lr_frozen`. A
   non-trainable Keras BatchNormalization runs in inference mode, so the pretrained statistics
   are used as they are;
2. unfrozen: everything trains at the lower `lr_unfrozen` (batch norm back in training mode).
Test accuracy is measured after each phase. The random-init run (same architecture, fresh
weights, same schedule) is the floor the pretrained numbers should be read against.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from ssl_zoo.errors import ConfigError

log = logging.getLogger(__name__)

RANDOM_INIT_CACHE_ENV = "SSL_ZOO_RANDOM_INIT_CACHE"


def default_random_init_cache() -> Path:
    """$SSL_ZOO_RANDOM_INIT_CACHE, else ~/.cache/ssl_zoo/random_init."""
    return Path(os.environ.get(RANDOM_INIT_CACHE_ENV) or Path.home() / ".cache" / "ssl_zoo" / "random_init").expanduser()


class RandomInitCache:
    """Finished random-init fine-tuning runs, one JSON file per run's description (`material`: the
    architecture's fingerprint, the exact training examples, the schedule, the seed, the Keras
    version, its backend and the backend's version). The twin's weights and data order follow from
    the seed (`finetune` sets the global seed before it builds the datasets), so every entry of one
    architecture has the same floor: in the label-efficiency reports of RotNet and SimCLR the
    random-init accuracies were bit-identical at every fraction. Reusing the run halves the
    protocol's cost for each further entry of a shared architecture. A file that does not read
    back, or describes another run, is a miss (logged), never an error."""

    def __init__(self, folder):
        self.folder = Path(folder).expanduser()

    def _path(self, material: dict) -> tuple[Path, str]:
        text = json.dumps(material, sort_keys=True, default=str)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json", text

    def get(self, material: dict) -> dict | None:
        path, text = self._path(material)
        if not path.is_file():
            return None
        try:
            found = json.loads(path.read_text())
            if json.dumps(found["material"], sort_keys=True, default=str) != text:
                raise ValueError("it describes another run")
            return {**found["run"], "reused": {"measured_for": found["measured_for"], "file": path.name}}
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("random-init cache: %s not used (%s); measuring again", path, e)
            return None

    def put(self, material: dict, run: dict, measured_for: str) -> None:
        from ssl_zoo.preset import write_json

        path, _ = self._path(material)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json({"material": material, "measured_for": measured_for, "run": run}, path, sort_keys=True)
        except OSError as e:  # a read-only or full cache costs a rerun later, not this report
            log.warning("random-init cache: could not write %s (%s)", path, e)


def _backend_version() -> str:
    """The version of the library under Keras (TensorFlow, JAX or PyTorch): its kernels set the numbers."""
    import importlib

    import keras

    try:  # each backend's name is its library's module name
        return getattr(importlib.import_module(keras.backend.backend()), "__version__", "unknown")
    except ImportError:
        return "unknown"


def final_accuracy(run: dict) -> float | None:
    """A fine-tuning run's last measured test accuracy (after unfreezing, else frozen)."""
    for phase in ("unfrozen", "frozen"):
        if isinstance(run.get(phase), dict) and "test_accuracy" in run[phase]:
            return run[phase]["test_accuracy"]
    return None


def build_classifier(backbone, num_classes: int, image_size: int, seed: int = 0):
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="images")
    features = backbone(inputs)
    if isinstance(features, dict):
        raise ConfigError("fine-tuning needs the pooled features: load the backbone with stages=None")
    logits = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed), name="classifier")(features)
    return keras.Model(inputs, logits, name="finetune_classifier")


def _num_batches(source, split: str, max_examples: int | None, batch_size: int) -> int | None:
    """Batches in one pass over `split` (first `max_examples`), or None where the size is unknown."""
    n = source.num_examples(split)
    if max_examples:
        n = min(n, max_examples) if n is not None else max_examples
    return -(-n // batch_size) if n else None


def _datasets(source, image_size, batch_size, max_train, max_test, seed, steps_per_epoch=None,
              train_split="train", test_split="test"):
    """(train, test, steps per epoch, test steps). Keras is told each epoch's length: a dataset
    of unknown length (a `take`, a folder whose corrupt images are skipped) ends its first epoch by
    running out, which Keras reports as "Your input ran out of data". So the training data repeats
    and an epoch is one pass's number of batches (or `steps_per_epoch`), and the test data is read
    for its number of batches."""
    from ssl_zoo.data.pipeline import build_dataset

    train = build_dataset(source, train_split, batch_size=batch_size, image_size=image_size, augment="crop_flip",
                          training=True, seed=seed, drop_remainder=False)
    if max_train:
        train = train.unbatch().take(max_train).batch(batch_size)
    steps_per_epoch = steps_per_epoch or _num_batches(source, train_split, max_train, batch_size)
    if steps_per_epoch:  # epochs of a fixed number of steps: the data wraps around
        train = train.repeat()
    test = build_dataset(source, test_split, batch_size=batch_size, image_size=image_size, augment="center")
    if max_test:
        test = test.unbatch().take(max_test).batch(batch_size)
    return train, test, steps_per_epoch, _num_batches(source, test_split, max_test, batch_size)


def _run(backbone, train, test, num_classes, image_size, *, epochs_frozen, epochs_unfrozen, lr_frozen,
         lr_unfrozen, steps_per_epoch, test_steps, seed, can_unfreeze=True, run_eagerly=False, label="",
         robustness=None) -> dict:
    import keras

    from ssl_zoo.backbones import keep_fixed_layers_frozen
    from ssl_zoo.progress import keras_progress

    def test_accuracy(phase):
        log.info("%s %s: measuring test accuracy", label, phase)
        return float(model.evaluate(test, steps=test_steps, verbose=0, return_dict=True)["accuracy"])

    keras.utils.set_random_seed(seed)
    model = build_classifier(backbone, num_classes, image_size, seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    out: dict = {}
    t0 = time.time()
    backbone.trainable = False
    # XLA (jit_compile="auto") spends longer compiling a ResNet on CPU than short fine-tunes run.
    model.compile(optimizer=keras.optimizers.Adam(lr_frozen), loss=loss, metrics=["accuracy"], jit_compile=False,
                  run_eagerly=run_eagerly)
    h = model.fit(train, epochs=epochs_frozen, steps_per_epoch=steps_per_epoch, shuffle=False, verbose=0,
                  callbacks=[keras_progress(f"{label} frozen")]) if epochs_frozen else None
    out["frozen"] = {
        "epochs": epochs_frozen, "learning_rate": lr_frozen,
        "train_loss": [round(v, 5) for v in h.history["loss"]] if h else [],
        "test_accuracy": test_accuracy("frozen"),
    }
    if epochs_unfrozen and can_unfreeze:
        backbone.trainable = True
        keep_fixed_layers_frozen(backbone)
        model.compile(optimizer=keras.optimizers.Adam(lr_unfrozen), loss=loss, metrics=["accuracy"], jit_compile=False,
                  run_eagerly=run_eagerly)
        h = model.fit(train, epochs=epochs_unfrozen, steps_per_epoch=steps_per_epoch, shuffle=False, verbose=0,
                      callbacks=[keras_progress(f"{label} unfrozen")])
        out["unfrozen"] = {
            "epochs": epochs_unfrozen, "learning_rate": lr_unfrozen,
            "train_loss": [round(v, 5) for v in h.history["loss"]],
            "test_accuracy": test_accuracy("unfrozen"),
        }
    elif epochs_unfrozen:
        out["unfrozen"] = {"skipped": "a SavedModel backbone is an inference graph and cannot be unfrozen"}
    if robustness:
        from ssl_zoo.evaluation.robustness import robust_accuracy

        log.info("%s: accuracy under FGSM and PGD (epsilon %s in [0, 255])", label, robustness.get("epsilons"))
        out["robustness"] = robust_accuracy(model, test, **robustness)
    out["seconds"] = round(time.time() - t0, 1)
    log.info("%s: test accuracy %s (%s s)", label, ", ".join(
        f"{phase} {out[phase]['test_accuracy']:.2%}" for phase in ("frozen", "unfrozen")
        if "test_accuracy" in out.get(phase, {})), out["seconds"])
    return out


def finetune(source, *, dataset: str = "tfds:cifar10", data_dir=None, epochs_frozen: int = 1,
             epochs_unfrozen: int = 1, lr_frozen: float = 1e-3, lr_unfrozen: float = 1e-4,
             batch_size: int = 128, max_train_examples: int | None = None, max_test_examples: int | None = None,
             steps_per_epoch: int | None = None, random_init: bool = True, seed: int = 0,
             out: str | None = None, run_eagerly: bool = False, image_size: int | None = None,
             train_split: str = "train", test_split: str | None = None, robustness: dict | None = None,
             random_init_cache: RandomInitCache | None = None) -> dict:
    """Fine-tunes `source` (anything `load_backbone` accepts, or a keras.Model) on `dataset`
    (a source spec such as "tfds:cifar10", or an `ssl_zoo.data.sources.Source`).

    `image_size` is the side the dataset's images are resized and cropped to. It defaults to the
    backbone's fixed input size; a fully convolutional backbone (no fixed size, e.g. one trained on
    jigsaw tiles) needs it given.

    `test_split` is the split the accuracy is measured on; by default the dataset's held-out split
    (`Source.held_out_split`: "test" where there is one, "val" for an image folder with `train/`
    and `val/` such as Imagenette). Labels come from the dataset, the same in every split.

    `robustness` (keyword arguments of `ssl_zoo.evaluation.robustness.robust_accuracy`: epsilons,
    pgd_steps, max_examples) adds each final classifier's accuracy under FGSM and PGD attacks.

    `random_init_cache` (a `RandomInitCache`): the random-init run is taken from it when the same
    architecture was fine-tuned the same way on the same examples before (the report's
    "random_init" then says for which model, under "reused"), and stored in it otherwise. Only
    for a dataset that identifies its examples by an `examples_id` (label efficiency's subsets: their
    examples' digest); any other is measured.

    `run_eagerly` skips tracing the training graph (tens of seconds for a ResNet on CPU): faster
    for a handful of steps (tests, smoke runs), slower for real fine-tuning.

    Returns (and with `out`, writes as JSON) {"trained": {...}, "random_init": {...}} with the
    test accuracy after the frozen and after the unfrozen phase.
    """
    from ssl_zoo.train.recipe import FinetuneConfig

    FinetuneConfig(epochs_frozen=epochs_frozen, epochs_unfrozen=epochs_unfrozen, lr_frozen=lr_frozen,
                   lr_unfrozen=lr_unfrozen, batch_size=batch_size, max_train_examples=max_train_examples,
                   max_test_examples=max_test_examples, steps_per_epoch=steps_per_epoch, seed=seed,
                   image_size=image_size)  # a value that cannot work is a ConfigError naming it

    import keras

    from ssl_zoo.data.sources import open_source
    from ssl_zoo.evaluation.run import architecture_fingerprint, random_init_like
    from ssl_zoo.loader import input_size_for, load_backbone, resolve_source

    t0 = time.time()
    if isinstance(source, keras.Model):
        backbone, kind, name = source, "keras", source.name
    else:
        kind = resolve_source(source).kind
        backbone = load_backbone(source, trainable=kind != "saved_model")
        name = str(source)
    image_size = input_size_for(backbone, image_size, name)
    data = open_source(dataset, data_dir) if isinstance(dataset, str) else dataset
    num_classes = data.num_classes()
    if not num_classes:
        raise ConfigError(f"{dataset} has no class labels to fine-tune on")
    test_split = test_split or data.held_out_split()
    # tf.data pairs each shuffle's own seed with TensorFlow's global one (or a default while none is
    # set), so the order must not be left to whatever ran before in this process: without this the
    # first fine-tuning of a process read its examples in another order than every later one.
    keras.utils.set_random_seed(seed)
    train, test, epoch_steps, test_steps = _datasets(data, image_size, batch_size, max_train_examples,
                                                     max_test_examples, seed, steps_per_epoch, train_split, test_split)
    common = dict(epochs_frozen=epochs_frozen, epochs_unfrozen=epochs_unfrozen, lr_frozen=lr_frozen,
                  lr_unfrozen=lr_unfrozen, steps_per_epoch=epoch_steps, test_steps=test_steps, seed=seed,
                  run_eagerly=run_eagerly, robustness=robustness)
    import keras

    report = {
        "model": name,
        "keras_backend": keras.backend.backend(),
        "dataset": dataset if isinstance(dataset, str) else data.name,
        "protocol": {
            "train_split": train_split, "test_split": test_split,
            "image_size": image_size, "batch_size": batch_size, "max_train_examples": max_train_examples,
            "max_test_examples": max_test_examples, "steps_per_epoch": steps_per_epoch, "seed": seed,
            "optimizer": "Adam", "loss": "sparse categorical cross-entropy (logits)",
            "augmentation": "random crop + flip (train), centre (test)",
            "schedule": "Dense head on the frozen backbone (batch norm in inference mode), then all layers "
                        "at the lower learning rate",
        },
    }
    log.info("fine-tuning %s on %s", name, report["dataset"])
    report["trained"] = _run(backbone, train, test, num_classes, image_size, can_unfreeze=kind != "saved_model",
                             label="pretrained", **common)
    if random_init:
        if kind == "saved_model":
            report["random_init"] = {"skipped": "a SavedModel carries no Keras architecture to re-initialise"}
        else:
            examples_id = getattr(data, "examples_id", None)
            if random_init_cache and not examples_id:
                log.info("random init: %s does not identify its examples; measured, not cached", report["dataset"])
            material = random_init_cache and examples_id and {
                "architecture": architecture_fingerprint(backbone), "examples": examples_id,
                "protocol": report["protocol"], "num_classes": num_classes, "keras": keras.__version__,
                "keras_backend": keras.backend.backend(), "backend_version": _backend_version(),
                # Runs cached before the global seed was set ahead of the datasets lack this: their
                # first fraction's order depended on the process's history, so they are not reused.
                "data_order": "seeded", **common}
            report["random_init"] = material and random_init_cache.get(material)
            if report["random_init"]:
                log.info("random init: the same architecture, examples and schedule were measured for %s: reused "
                         "(%s)", report["random_init"]["reused"]["measured_for"], random_init_cache.folder)
            else:
                report["random_init"] = _run(random_init_like(backbone, seed), train, test, num_classes, image_size,
                                             label="random init", **common)
                if material:
                    random_init_cache.put(material, report["random_init"], name)
    report["seconds"] = round(time.time() - t0, 1)
    if out:
        from ssl_zoo.preset import write_json

        write_json(report, out, sort_keys=True)
    return report
