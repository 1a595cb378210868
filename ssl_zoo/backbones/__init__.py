"""Backbones: functional Keras models with named stages."""

import inspect

from ssl_zoo.backbones.resnet import (CHROMA_LAYER, GREY_LAYER, SOBEL_LAYERS, SPLIT_PREFIXES, STAGE4_STRIDE, STAGES,
                                     resnet, split_resnet, stage_model)
from ssl_zoo.errors import ConfigError

ARCHITECTURES = {"resnet": resnet, "split_resnet": split_resnet}


def check_backbone_config(config: dict) -> None:
    """Raises ConfigError for an unknown architecture or parameter (a recipe's [backbone] typo),
    before any data is read or any model is built."""
    arch = config.get("arch", "resnet")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown backbone {arch!r}; available: {sorted(ARCHITECTURES)}")
    known = set(inspect.signature(ARCHITECTURES[arch]).parameters) - {"name"}
    unknown = sorted(set(config) - known - {"arch"})
    if unknown:
        raise ConfigError(f"[backbone] {arch} has unknown parameters {unknown}; known: {sorted(known)}")


def build_backbone(config: dict, name: str | None = None):
    """Builds a backbone from a plain dict such as {"arch": "resnet", "depth": 18, "width": 0.25}."""
    check_backbone_config(config)
    config = dict(config)
    arch = config.pop("arch", "resnet")
    return ARCHITECTURES[arch](**config, name=name)


def last_stage_side(config: dict, image_size: int, who: str) -> int:
    """Side of the last stage's map of backbone `config` at `image_size`, for methods whose dense
    head or decoder works on it; a ConfigError naming `who`'s image_size when the stem's stride
    does not divide it (or the stem is unknown)."""
    stem = config.get("stem", "cifar")
    stride = STAGE4_STRIDE.get(stem)
    if stride is None or image_size % stride:
        raise ConfigError(f"{who} image_size {image_size} must be a multiple of the {stem} stem's stride {stride}")
    return image_size // stride


# Layers that are part of an architecture's definition, not of what it learns (fixed filters).
FIXED_LAYERS = frozenset((*SOBEL_LAYERS, GREY_LAYER, CHROMA_LAYER))


def keep_fixed_layers_frozen(model) -> None:
    """Re-freezes the fixed layers after `model.trainable = True`, which in Keras sets every
    sublayer's flag: fine-tuning a Sobel-input backbone trains the network, never its filter."""
    for layer in model._flatten_layers(include_self=False):
        if layer.name in FIXED_LAYERS:
            layer.trainable = False


__all__ = ["ARCHITECTURES", "FIXED_LAYERS", "keep_fixed_layers_frozen", "last_stage_side", "SPLIT_PREFIXES", "STAGE4_STRIDE", "STAGES", "build_backbone", "check_backbone_config", "resnet", "split_resnet", "stage_model"]
