"""Models that apply one backbone, with shared weights, to several views of an example.

Context-free / siamese networks (Jigsaw's nine tiles, relative patch location's two patches) take
inputs `[B, V, S, S, 3]`. The views are folded into the batch (`[B * V, S, S, 3]`), the backbone
runs once on all of them, and each view's features are unfolded to `[B, V * D]`: the views'
features concatenated in view order. One call (rather than V calls) keeps batch normalisation's
statistics over all B * V views, as a single network would see them, and the backbone remains the
sub-model named "backbone" that `extract_backbone` finds. The reshapes are Keras ops recorded in
the functional graph, so the saved model loads with `safe_mode=True` and no custom objects.

What each view contributes (`fusion`):

- "pooled": the backbone's globally pooled features. Cheap, but pooling discards *where* in the
  view a feature was, which is what a position task is about.
- "spatial": the papers' design. Doersch et al. (Fig. 3) and Noroozi & Favaro (Fig. 3) put a
  fully connected layer ("fc6") on each patch's last *unpooled* feature map, with weights tied
  across patches, and fuse only after it. Here: the last stage's map, flattened, -> Dense -> BN ->
  ReLU per view (shared), then concatenated. The backbone sub-model then has two outputs (pooled
  features and that map); `extract_backbone` keeps only the pooled one, so exports are unchanged.
"""

from __future__ import annotations

import keras
from keras import layers

from ssl_zoo.backbones import stage_model
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads import PRETEXT_HEAD

FUSIONS = ("pooled", "spatial")
LAST_STAGE = "stage4"


def per_view_projection(units: int, name: str = f"{PRETEXT_HEAD}_per_view") -> keras.Sequential:
    """The per-view "fc6": flatten the feature map -> Dense -> BN -> ReLU (part of the pretext head)."""
    return keras.Sequential([
        layers.Flatten(name=f"{name}_flatten"),
        layers.Dense(units, use_bias=False, name=f"{name}_dense"),
        layers.BatchNormalization(synchronized=True, name=f"{name}_bn"),
        layers.ReLU(name=f"{name}_relu"),
    ], name=name)


def shared_backbone_over_views(
    backbone: keras.Model, head: keras.Model, num_views: int, view_size: int, input_name: str = "views",
    fusion: str = "pooled", per_view_units: int = 512,
) -> keras.Model:
    """[B, num_views, S, S, 3] -> backbone per view (shared) -> concat in view order -> head."""
    if fusion not in FUSIONS:
        raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    inputs = keras.Input((num_views, view_size, view_size, 3), name=input_name)
    folded = keras.ops.reshape(inputs, (-1, view_size, view_size, 3))
    if fusion == "pooled":
        features = backbone(folded)
    else:
        # Same layers and weights as `backbone` (and its name, which `extract_backbone` looks for),
        # one more output: the last stage's feature map.
        with_map = stage_model(backbone, ("pooled", LAST_STAGE), name=backbone.name)
        features = per_view_projection(per_view_units)(with_map(folded)[LAST_STAGE])
    dim = features.shape[-1]
    concatenated = keras.ops.reshape(features, (-1, num_views * dim))
    return keras.Model(inputs, head(concatenated), name="pretext_model")
