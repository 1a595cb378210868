"""Method registry: name -> method class (one file per method)."""

import dataclasses

from ssl_zoo.backbones import check_backbone_config
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.base import PretextMethod, extract_backbone
from ssl_zoo.methods.exemplar import Exemplar
from ssl_zoo.methods.jigsaw import Jigsaw
from ssl_zoo.methods.relative_patch import RelativePatch
from ssl_zoo.methods.rotnet import RotNet

METHODS: dict[str, type[PretextMethod]] = {cls.name: cls for cls in (RotNet, Jigsaw, RelativePatch, Exemplar)}


def build_method(name: str, **kwargs) -> PretextMethod:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    known = {f.name for f in dataclasses.fields(METHODS[name]) if f.init}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"[method] {name} has unknown parameters {unknown}; known: {sorted(known - {'backbone'})}")
    if "backbone" in kwargs:
        check_backbone_config(kwargs["backbone"])
    return METHODS[name](**kwargs)


def method_from_recipe(recipe) -> PretextMethod:
    """The method a recipe describes: its [method] section (name + parameters) on its [backbone]."""
    method_cfg = dict(recipe.method)
    return build_method(method_cfg.pop("name"), backbone=recipe.backbone, **method_cfg)


__all__ = ["METHODS", "PretextMethod", "build_method", "extract_backbone", "method_from_recipe"]
