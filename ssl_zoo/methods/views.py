"""Models that apply one backbone, with shared weights, to several views of an example.

Context-free / siamese networks (Jigsaw's nine tiles, relative patch location's two patches) take
inputs `[B, V, S, S, 3]`. The views are folded into the batch (`[B * V, S, S, 3]`), the backbone
runs once on all of them, and the pooled features are unfolded to `[B, V * D]`: the views'
features concatenated in view order. One call (rather than V calls) keeps batch normalisation's
statistics over all B * V views, as a single network would see them, and the backbone remains the
sub-model named "backbone" that `extract_backbone` finds. The reshapes are Keras ops recorded in
the functional graph, so the saved model loads with `safe_mode=True` and no custom objects.
"""

from __future__ import annotations

import keras


def shared_backbone_over_views(
    backbone: keras.Model, head: keras.Model, num_views: int, view_size: int, input_name: str = "views"
) -> keras.Model:
    """[B, num_views, S, S, 3] -> backbone per view (shared) -> concat in view order -> head."""
    inputs = keras.Input((num_views, view_size, view_size, 3), name=input_name)
    folded = keras.ops.reshape(inputs, (-1, view_size, view_size, 3))
    features = backbone(folded)
    dim = features.shape[-1]
    concatenated = keras.ops.reshape(features, (-1, num_views * dim))
    return keras.Model(inputs, head(concatenated), name="pretext_model")
