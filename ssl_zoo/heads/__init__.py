"""Heads placed on a backbone's pooled features for the pretext task (dropped at export)."""

from __future__ import annotations

import keras
from keras import layers

PRETEXT_HEAD = "pretext_head"


def classification_head(
    num_classes: int, hidden_units: tuple[int, ...] = (), name: str = PRETEXT_HEAD
) -> keras.Sequential:
    """MLP classifier: [Dense -> BN -> ReLU] per hidden layer, then a linear layer to logits.

    A non-linear head keeps the last backbone stage from specialising entirely to the pretext
    task (Gidaris et al. 2018, Sec. 3.1 show the features just before the pretext classifier
    are the most task-specific).
    """
    stack = []
    for i, units in enumerate(hidden_units):
        stack += [
            layers.Dense(units, use_bias=False, name=f"{name}_dense{i}"),
            layers.BatchNormalization(synchronized=True, name=f"{name}_bn{i}"),
            layers.ReLU(name=f"{name}_relu{i}"),
        ]
    stack.append(layers.Dense(num_classes, name=f"{name}_logits"))
    return keras.Sequential(stack, name=name)
