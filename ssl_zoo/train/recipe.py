"""Recipes: typed, declarative training configurations stored as TOML under `training/`.

A recipe chooses values only; every section maps onto a dataclass, unknown keys are errors (a typo
never silently falls back to a default). [method] and [backbone] are checked against the method's
and the architecture's parameters when the method is built, before any data is read. The file's leading comment block says what the recipe
should reach, how long it takes and the command that reproduces it (big_vision's habit).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from ssl_zoo.errors import ConfigError


@dataclasses.dataclass
class DataConfig:
    source: str = "tfds:cifar10"
    train_split: str = "train"
    eval_split: str | None = "test"
    image_size: int = 32
    shuffle_buffer: int = 10_000
    # Keep an image folder decoded in memory after the first pass (for data that fits: Imagenette
    # train at 96 px takes 250 MiB); the data stream is the same either way. See ImageFolderSource.
    cache: bool = False


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 1
    # Images drawn from the source per step, over all replicas (a pretext transform may turn each
    # into several inputs, e.g. RotNet's four rotations).
    global_batch: int = 128
    seed: int = 0
    steps_per_epoch: int | None = None  # None = one pass over the training split
    checkpoint_every: int = 200  # steps
    log_every: int = 50  # steps
    eval_every_epochs: int = 1


@dataclasses.dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd | adamw | lamb
    learning_rate: float = 0.1  # per 256 images of global batch (linear scaling, Goyal et al. 2017)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | constant


@dataclasses.dataclass
class EvalConfig:
    """The downstream protocol the card reports (see ssl_zoo.evaluation)."""

    source: str = "tfds:cifar10"
    train_split: str = "train"
    test_split: str = "test"
    image_size: int = 32
    stages: tuple[str, ...] = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled")
    knn_k: int = 200


@dataclasses.dataclass
class Recipe:
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
    description: str = ""

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
    return cls(**out)


def recipe_from_dict(raw: dict[str, Any], name: str = "recipe", description: str = "") -> Recipe:
    raw = dict(raw)
    for required in ("method", "backbone"):
        if required not in raw:
            raise ConfigError(f"recipe {name!r} has no [{required}] section")
    base_optimizer = raw.pop("optimizer", {})
    named = raw.pop("optimizers", {})
    if not isinstance(named, dict) or not all(isinstance(v, dict) for v in named.values()):
        raise ConfigError(f"recipe {name!r}: [optimizers] must hold one [optimizers.NAME] section per optimizer")
    recipe = Recipe(
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
    if raw:
        raise ConfigError(f"recipe {name!r} has unknown sections {sorted(raw)}")
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    text = path.read_text()
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
