"""Method registry: name -> method class (one file per method)."""

import dataclasses

from ssl_zoo.backbones import check_backbone_config
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.base import PretextMethod, extract_backbone
from ssl_zoo.methods.bigan import BiGAN
from ssl_zoo.methods.byol import BYOL
from ssl_zoo.methods.colorization import Colorization
from ssl_zoo.methods.context_encoder import ContextEncoder
from ssl_zoo.methods.deepcluster import DeepCluster
from ssl_zoo.methods.exemplar import Exemplar
from ssl_zoo.methods.jigsaw import Jigsaw
from ssl_zoo.methods.moco import MoCo
from ssl_zoo.methods.pirl import PIRL
from ssl_zoo.methods.relative_patch import RelativePatch
from ssl_zoo.methods.rotnet import RotNet
from ssl_zoo.methods.sela import SeLa
from ssl_zoo.methods.split_brain import SplitBrain
from ssl_zoo.methods.super_resolution import SuperResolution
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.methods.supervised import Supervised
from ssl_zoo.train.recipe import check_values

METHODS: dict[str, type[PretextMethod]] = {
    cls.name: cls for cls in (RotNet, Jigsaw, RelativePatch, Exemplar, SimCLR, MoCo, BYOL, PIRL, DeepCluster, SeLa,
                                Colorization, SplitBrain, ContextEncoder, SuperResolution, BiGAN,
                                Supervised)
}


def register_method(cls: type[PretextMethod]) -> type[PretextMethod]:
    """Adds a method class to the registry (usable as a decorator): a user's own method, or a
    test's, then trains from a recipe like the zoo's."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} has no name")
    if METHODS.get(cls.name, cls) is not cls:
        raise ConfigError(f"a different method is already registered as {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def build_method(name: str, **kwargs) -> PretextMethod:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    known = {f.name for f in dataclasses.fields(METHODS[name]) if f.init}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"[method] {name} has unknown parameters {unknown}; known: {sorted(known - {'backbone'})}")
    check_values(METHODS[name], kwargs, "method", strict=False)
    if "backbone" in kwargs:
        check_backbone_config(kwargs["backbone"])
    return METHODS[name](**kwargs)


def method_from_recipe(recipe) -> PretextMethod:
    """The method a recipe describes: its [method] section (name + parameters) on its [backbone]."""
    method_cfg = dict(recipe.method)
    return build_method(method_cfg.pop("name"), backbone=recipe.backbone, **method_cfg)


def diagnose_run(run_dir, *, data_dir=None, overrides=(), out=None, **options) -> dict:
    """`ssl-zoo diagnose RUN`: the run's method checks what its trained model learned, with its
    own `diagnose(run_dir, recipe=, data_dir=, **options)` -> {name: report} (relative patch:
    "context_check"). The run's recorded recipe builds the method; `overrides`
    (`section.key=value`) correct it, e.g. `method.placement=grid` for a run recorded before that
    parameter existed. `out`: the report file `ssl-zoo export --diagnostics` takes."""
    import inspect
    import json
    from pathlib import Path

    from ssl_zoo.preset import write_json
    from ssl_zoo.train.recipe import apply_overrides, recipe_from_dict

    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    recipe = apply_overrides(recipe_from_dict(dict(run["recipe"]), name=run["recipe"].get("name", "run")),
                             list(overrides))
    method = method_from_recipe(recipe)
    if not hasattr(method, "diagnose"):
        having = sorted(n for n, cls in METHODS.items() if hasattr(cls, "diagnose"))
        raise ConfigError(f"{run_dir} trained {method.name!r}, which has no diagnostics (methods with some: {having})")
    if "picture" in options and "picture" not in inspect.signature(method.diagnose).parameters:
        raise ConfigError(f"{method.name!r} draws no picture of its pretext task (drop --picture)")
    report = method.diagnose(run_dir, recipe=recipe, data_dir=data_dir, **options)
    for diagnostic in report.values():
        diagnostic.update(run=str(run_dir), overrides=list(overrides))
    if out:
        write_json(report, out)
    return report


__all__ = ["METHODS", "PretextMethod", "build_method", "diagnose_run", "extract_backbone", "method_from_recipe",
           "register_method"]
