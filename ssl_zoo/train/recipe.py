"""Recipes: typed, declarative training configurations stored as TOML under `training/`.

A recipe chooses values only; every section maps onto a dataclass, unknown keys are errors (a typo
never silently falls back to a default). Every value is checked when its dataclass is built
(`Checked.__post_init__`), by the field's type: an `int` is a whole number (not a bool, not 2.0)
of at least 1 unless the field says otherwise (`at_least(0, default)`), a `float` a finite number
of at least 0, a `str` non-empty (and one of `choices` if the field lists them), `X | None` None
or an X, `tuple[str, ...]` a non-empty list of strings; so a field added later is checked too. The
command line builds the same dataclasses from its flags (`FinetuneConfig`, `ProbeConfig`), so a
mistake is one sentence before TensorFlow is imported: this module imports no TensorFlow. [method]
is checked by the same rules against the method's dataclass (`check_values`), and [backbone] against
the architecture's parameters, when the method is built, before any data is read. The file's
leading comment block says what the recipe should reach, how long it takes and the command that
reproduces it (big_vision's habit).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

from ssl_zoo.errors import ConfigError


class RecipeValueError(ConfigError):
    """A value of the wrong type or out of range; `field` and `problem` let the caller name where it
    came from (a recipe section, a command-line flag)."""

    def __init__(self, section: str, field: str, problem: str, where: str = ""):
        self.section, self.field, self.problem = section, field, problem
        super().__init__(f"{where}[{section}] {field} {problem}")


def may_be_empty(default):
    """A `str` or `tuple` field that may be empty ("" or [])."""
    return dataclasses.field(default=default, metadata={"empty": True})


def at_least(minimum, default, **metadata):
    """A field whose values may go down to `minimum` (the type's default bound is 1 for int, 0 for
    float)."""
    return dataclasses.field(default=default, metadata={"min": minimum, **metadata})


def one_of(choices: tuple[str, ...], default: str):
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def _problem(value, kind, meta) -> str | None:
    """Why `value` is not a valid `kind` (a resolved type hint), or None."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _problem(value, inner[0], meta) if len(inner) == 1 else None
    if kind is bool:
        return None if isinstance(value, bool) else f"must be true or false, not {value!r}"
    if kind is int:
        minimum = meta.get("min", 1)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number of at least {minimum}, not {value!r}"
        return None if value >= minimum else f"must be at least {minimum}, not {value}"
    if kind is float:
        minimum = meta.get("min", 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number of at least {minimum}, not {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, not {value}"
        return None if value >= minimum else f"must be at least {minimum}, not {value}"
    if kind is str:
        if not isinstance(value, str) or not (value or meta.get("empty")):
            return f"must be a {'' if meta.get('empty') else 'non-empty '}string, not {value!r}"
        choices = meta.get("choices")
        return None if not choices or value in choices else f"must be one of {list(choices)}, not {value!r}"
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (tuple, list)) or not (value or meta.get("empty")):
            return f"must be a {'' if meta.get('empty') else 'non-empty '}list, not {value!r}"
        return next((f"has an item that {p}" for p in (_problem(v, args[0], {}) for v in value) if p), None)
    if typing.get_origin(kind) is dict:
        if not isinstance(value, dict):
            return f"must be a table (section), not {value!r}"
        if args[1] is not Any and isinstance(args[1], type) and not all(isinstance(v, args[1]) for v in value.values()):
            return f"must hold {args[1].__name__} values"
        return None
    if kind is Any:
        return None
    if isinstance(kind, type):  # a nested section (a dataclass that checks its own fields)
        return None if isinstance(value, kind) else f"must be a {kind.__name__}, not {value!r}"
    # Not silently unchecked: a field of a new kind of type needs its rule here first.
    raise TypeError(f"ssl_zoo.train.recipe has no check for fields of type {kind}; add one to _problem")


def check_values(cls: type, values: dict, section: str, strict: bool = True) -> None:
    """Checks each of `values` ({field name: value}) against the type hint and metadata of dataclass
    `cls`'s field of that name (the rules of the module docstring): a RecipeValueError naming the
    first wrong one. Names that are not fields are the caller's to refuse. `strict=False` leaves
    fields of a type without a rule unchecked (a user's registered method), instead of a TypeError."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values:
            try:
                problem = _problem(values[f.name], hints[f.name], f.metadata)
            except TypeError:
                if strict:
                    raise
                continue
            if problem:
                raise RecipeValueError(section, f.name, problem)


class Checked:
    """Checks every field against its type hint when the dataclass is built (module docstring)."""

    section: ClassVar[str] = ""

    def __post_init__(self):
        check_values(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                     self.section or type(self).__name__)


@dataclasses.dataclass
class DataConfig(Checked):
    section: ClassVar[str] = "data"
    source: str = "tfds:cifar10"
    train_split: str = "train"
    eval_split: str | None = dataclasses.field(default="test", metadata={"empty": True})  # "" or None: no evaluation
    image_size: int = 32
    shuffle_buffer: int = 10_000
    # Keep an image folder decoded in memory after the first pass (for data that fits: Imagenette
    # train at 96 px takes 250 MiB); the data stream is the same either way. See ImageFolderSource.
    cache: bool = False


@dataclasses.dataclass
class TrainConfig(Checked):
    section: ClassVar[str] = "train"
    epochs: int = 1
    # Images drawn from the source per step, over all replicas (a pretext transform may turn each
    # into several inputs, e.g. RotNet's four rotations).
    global_batch: int = 128
    seed: int = at_least(0, 0)
    steps_per_epoch: int | None = None  # None = one pass over the training split
    checkpoint_every: int = 200  # steps
    log_every: int = 50  # steps
    eval_every_epochs: int = 1


@dataclasses.dataclass
class OptimizerConfig(Checked):
    section: ClassVar[str] = "optimizer"
    name: str = one_of(("sgd", "adamw", "lamb"), "sgd")
    learning_rate: float = 0.1  # per 256 images of global batch (linear scaling, Goyal et al. 2017)
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    # adamw and lamb: the first moment's decay; 0.5 for adversarial training (Radford et al. 2016,
    # which found 0.9 made it oscillate).
    beta_1: float = 0.9
    weight_decay: float = 5e-4
    # sgd: "decoupled" (Keras: the weights shrink by lr * weight_decay each step) or "l2" (PyTorch's
    # `SGD(weight_decay=)` and the papers' recipes: weight_decay * w added to the gradient before
    # momentum, which decays 1 / (1 - momentum) times as strongly, 10x at 0.9). A coefficient
    # copied from a PyTorch recipe means "l2".
    weight_decay_mode: str = one_of(("decoupled", "l2"), "decoupled")
    # Batch-norm parameters and biases are left undecayed (Goyal et al. 2017); true decays them too,
    # as a PyTorch recipe that hands `model.parameters()` to its optimizer does.
    decay_norm_and_bias: bool = False
    warmup_epochs: float = 1.0
    schedule: str = one_of(("cosine", "constant"), "cosine")


@dataclasses.dataclass
class EvalConfig(Checked):
    """The downstream protocol the card reports (see ssl_zoo.evaluation)."""

    section: ClassVar[str] = "evaluation"
    source: str = "tfds:cifar10"
    train_split: str = "train"
    test_split: str = "test"
    image_size: int = 32
    stages: tuple[str, ...] = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled")
    knn_k: int = 200


@dataclasses.dataclass
class ProbeConfig(Checked):
    """`ssl-zoo evaluate`'s settings beside the protocol (`evaluate_model`'s arguments)."""

    section: ClassVar[str] = "evaluate"
    probe_epochs: int = 30
    max_train_examples: int | None = None
    seed: int = at_least(0, 0)


@dataclasses.dataclass
class FinetuneConfig(Checked):
    """`ssl-zoo finetune`'s settings (`ssl_zoo.finetune.finetune`'s arguments); 0 epochs skips a phase."""

    section: ClassVar[str] = "finetune"
    epochs_frozen: int = at_least(0, 1)
    epochs_unfrozen: int = at_least(0, 1)
    lr_frozen: float = 1e-3
    lr_unfrozen: float = 1e-4
    batch_size: int = 128
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    steps_per_epoch: int | None = None
    seed: int = at_least(0, 0)
    image_size: int | None = None


@dataclasses.dataclass
class Recipe(Checked):
    section: ClassVar[str] = "recipe"
    name: str
    method: dict[str, Any]
    backbone: dict[str, Any]
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    # Methods with several optimizers (`PretextMethod.optimizer_names`): one [optimizers.NAME]
    # section each; the keys a section leaves out are taken from [optimizer].
    optimizers: dict[str, OptimizerConfig] = dataclasses.field(default_factory=dict)
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    description: str = dataclasses.field(default="", metadata={"empty": True})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not out["optimizers"]:
            # A one-optimizer recipe is recorded (run.json) exactly as before named optimizers existed.
            del out["optimizers"]
        return out


def _typed(cls, values: dict, section: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"recipe section [{section}] has unknown keys {unknown}; known: {sorted(fields)}")
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, list):
            out[key] = tuple(value)
    try:
        return cls(**out)
    except RecipeValueError as e:
        raise RecipeValueError(section, e.field, e.problem) from None


def recipe_from_dict(raw: dict[str, Any], name: str = "recipe", description: str = "") -> Recipe:
    raw = dict(raw)
    for required in ("method", "backbone"):
        if required not in raw:
            raise ConfigError(f"recipe {name!r} has no [{required}] section")
    base_optimizer = raw.pop("optimizer", {})
    named = raw.pop("optimizers", {})
    if not isinstance(named, dict) or not all(isinstance(v, dict) for v in named.values()):
        raise ConfigError(f"recipe {name!r}: [optimizers] must hold one [optimizers.NAME] section per optimizer")
    try:
        recipe = _recipe(raw, name, description, base_optimizer, named)
    except RecipeValueError as e:
        raise RecipeValueError(e.section, e.field, e.problem, where=f"recipe {name!r}: ") from None
    if raw:
        raise ConfigError(f"recipe {name!r} has unknown sections {sorted(raw)}")
    return recipe


def _recipe(raw, name, description, base_optimizer, named) -> Recipe:
    return Recipe(
        name=raw.pop("name", name),
        method=dict(raw.pop("method")),
        backbone=dict(raw.pop("backbone")),
        data=_typed(DataConfig, raw.pop("data", {}), "data"),
        train=_typed(TrainConfig, raw.pop("train", {}), "train"),
        optimizer=_typed(OptimizerConfig, base_optimizer, "optimizer"),
        optimizers={k: _typed(OptimizerConfig, {**base_optimizer, **v}, f"optimizers.{k}") for k, v in named.items()},
        evaluation=_typed(EvalConfig, raw.pop("evaluation", {}), "evaluation"),
        description=raw.pop("description", description),
    )


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe file {path} does not exist (the recipes are in training/)")
    if not path.is_file():
        raise ConfigError(f"recipe {path} is a directory, not a recipe file (training/NAME.toml)")
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"recipe {path} is a binary file, not a TOML recipe (training/NAME.toml)") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    comment = "\n".join(
        line[1:].strip() for line in text.splitlines() if line.startswith("#")
    )
    return recipe_from_dict(raw, name=path.stem, description=comment)


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """`section.key=value` overrides from the command line; values parsed as TOML."""
    raw = recipe.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        *path, field = key.split(".")
        target = raw
        for section in path:  # "optimizers.generator.learning_rate" reaches a named optimizer
            if not isinstance(target.get(section), dict):
                raise ConfigError(f"override {item!r}: no section {'.'.join(path)!r}")
            target = target[section]
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # bare strings
        target[field] = parsed
    return recipe_from_dict(raw, name=recipe.name, description=recipe.description)


def evaluation_protocol(model=None, recipe=None) -> dict:
    """The protocol `ssl-zoo evaluate` follows where no flag says otherwise: the `[evaluation]`
    section of the recipe file `recipe` (training/NAME.toml), else of the recipe recorded by the
    run folder `model` (its run.json), else the section's defaults. Keys are `evaluate_model`'s:
    source, train_split, test_split, image_size, stages, knn_k. Imports no TensorFlow."""
    import json

    if recipe is not None:
        section = load_recipe(recipe).evaluation
    elif isinstance(model, (str, Path)) and (Path(model) / "run.json").is_file():
        recorded = json.loads((Path(model) / "run.json").read_text()).get("recipe")
        section = recipe_from_dict(dict(recorded)).evaluation if recorded else EvalConfig()
    else:
        section = EvalConfig()
    values = dataclasses.asdict(section)
    values["stages"] = list(values["stages"])
    return values
