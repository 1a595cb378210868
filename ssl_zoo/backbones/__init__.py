"""Backbones: functional Keras models with named stages."""

from ssl_zoo.backbones.resnet import STAGES, resnet, stage_model


def build_backbone(config: dict, name: str | None = None):
    """Builds a backbone from a plain dict such as {"arch": "resnet", "depth": 18, "width": 0.25}."""
    config = dict(config)
    arch = config.pop("arch", "resnet")
    if arch != "resnet":
        raise ValueError(f"unknown backbone {arch!r}; available: ['resnet']")
    return resnet(**config, name=name)


__all__ = ["STAGES", "build_backbone", "resnet", "stage_model"]
