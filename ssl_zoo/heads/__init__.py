"""Heads placed on a backbone's pooled features for the pretext task (dropped at export)."""

from __future__ import annotations

import keras
from keras import layers

PRETEXT_HEAD = "pretext_head"


def _hidden_layers(hidden_units: tuple[int, ...], name: str) -> list:
    """[Dense -> BN -> ReLU] per hidden layer (no bias before BN; BN synchronised across replicas)."""
    stack = []
    for i, units in enumerate(hidden_units):
        stack += [
            layers.Dense(units, use_bias=False, name=f"{name}_dense{i}"),
            layers.BatchNormalization(synchronized=True, name=f"{name}_bn{i}"),
            layers.ReLU(name=f"{name}_relu{i}"),
        ]
    return stack


def classification_head(
    num_classes: int, hidden_units: tuple[int, ...] = (), name: str = PRETEXT_HEAD
) -> keras.Sequential:
    """MLP classifier: [Dense -> BN -> ReLU] per hidden layer, then a linear layer to logits.

    A non-linear head keeps the last backbone stage from specialising entirely to the pretext
    task (Gidaris et al. 2018, Sec. 3.1 show the features just before the pretext classifier
    are the most task-specific).
    """
    stack = _hidden_layers(hidden_units, name)
    stack.append(layers.Dense(num_classes, name=f"{name}_logits"))
    return keras.Sequential(stack, name=name)


def projection_head(hidden_units: tuple[int, ...] = (512,), output_dim: int = 128,
                    name: str = PRETEXT_HEAD, output_batch_norm: bool = False) -> keras.Sequential:
    """SimCLR's projection g(h): [Dense -> BN -> ReLU] per hidden layer, then a linear output.
    "we use a MLP with one hidden layer to obtain z_i = g(h_i) = W(2) sigma(W(1) h_i)" (Sec. 2.1);
    the loss is on z, the released features are h (before the head), which "contains more
    information" (Sec. 4.2). `output_batch_norm` ends it with a batch norm instead of a bias, as
    the SimCLR authors' code and LightlySSL's `SimCLRProjectionHead` do."""
    stack = _hidden_layers(hidden_units, name)
    stack.append(layers.Dense(output_dim, use_bias=not output_batch_norm, name=f"{name}_projection"))
    if output_batch_norm:
        stack.append(layers.BatchNormalization(synchronized=True, name=f"{name}_projection_bn"))
    return keras.Sequential(stack, name=name)
