"""ResNet v1 backbones (He et al. 2016, "Deep Residual Learning for Image Recognition").

Backbones are plain functional `keras.Model`s built only from built-in Keras layers, so a saved
backbone loads with stock Keras (`safe_mode=True`, no custom objects) and with
`keras.Model.from_config`. Every stage ends in an `Identity` layer named after the stage
(`stem`, `stage1` … `stage4`, `pooled`), which is how probes, the loader and the SavedModel
export reach intermediate features: by name, never by graph tensor name.

The model takes RGB images with values in [0, 255] (float or int) and normalises them itself
with the per-channel mean/std it was trained with, so a user never has to know the preprocessing.
With `sobel=True` (DeepCluster's input, Caron et al. 2018) a fixed front turns the normalised
image into its grey level's two Sobel gradients: two frozen `Conv2D` layers, so the backbone still
takes RGB and still loads with stock Keras. With `grey=True` (colorization, whose network must
not see colour) a frozen 1x1 `Conv2D` first replaces each pixel by its grey level in all three
channels, so the released backbone takes RGB like every other.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from ssl_zoo.errors import ConfigError

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled")
# How much smaller than the input the last stage's map is, per stem (dense pretext heads upsample it).
STAGE4_STRIDE = {"cifar": 8, "imagenet": 32}

# depth -> (block kind, blocks per stage): Table 1 of He et al. 2016.
_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The fixed front of `sobel=True`: the mean of the three normalised channels, then the horizontal
# and vertical Sobel kernels (the values DeepCluster's reference code uses).
SOBEL_LAYERS = ("sobel_grey", "sobel_gradients")
_SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], np.float32)


# The fixed front of `grey=True`: Rec. 709 luma weights (those of CIE Y, which L* is a function
# of), applied to the sRGB values, into each of the three channels.
GREY_LAYER = "grey"
LUMA_709 = (0.2126, 0.7152, 0.0722)


def grey_kernel() -> np.ndarray:
    """Kernel of the `grey=True` front (Conv2D layout [1, 1, 3 in, 3 out])."""
    return np.tile(np.array(LUMA_709, np.float32)[:, None], (1, 3))[None, None]


def sobel_kernels() -> dict[str, np.ndarray]:
    """Kernels of the `sobel=True` front, by layer name (Conv2D layout [h, w, in, out])."""
    return {
        "sobel_grey": np.full((1, 1, 3, 1), 1.0 / 3.0, np.float32),
        "sobel_gradients": np.stack([_SOBEL_X, _SOBEL_X.T], axis=-1)[:, :, None, :],
    }


def _bn(name: str, synchronized: bool, zero_gamma: bool = False) -> layers.Layer:
    # gamma=0 on the last BN of each residual branch makes every block start as the identity,
    # which Goyal et al. 2017 found stabilises large-batch training.
    return layers.BatchNormalization(
        momentum=0.9,
        epsilon=1e-5,
        synchronized=synchronized,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )


def _conv(filters: int, kernel: int, stride: int, name: str) -> layers.Layer:
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _block(x, filters: int, stride: int, kind: str, name: str, sync_bn: bool):
    expansion = 4 if kind == "bottleneck" else 1
    out_channels = filters * expansion
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(out_channels, 1, stride, f"{name}_proj_conv")(x)
        shortcut = _bn(f"{name}_proj_bn", sync_bn)(shortcut)
    if kind == "basic":
        y = _conv(filters, 3, stride, f"{name}_conv1")(x)
        y = _bn(f"{name}_bn1", sync_bn)(y)
        y = layers.ReLU(name=f"{name}_relu1")(y)
        y = _conv(filters, 3, 1, f"{name}_conv2")(y)
        y = _bn(f"{name}_bn2", sync_bn, zero_gamma=True)(y)
    else:
        # Stride on the 3x3 conv ("ResNet v1.5"), the torchvision / keras-hub convention.
        y = _conv(filters, 1, 1, f"{name}_conv1")(x)
        y = _bn(f"{name}_bn1", sync_bn)(y)
        y = layers.ReLU(name=f"{name}_relu1")(y)
        y = _conv(filters, 3, stride, f"{name}_conv2")(y)
        y = _bn(f"{name}_bn2", sync_bn)(y)
        y = layers.ReLU(name=f"{name}_relu2")(y)
        y = _conv(out_channels, 1, 1, f"{name}_conv3")(y)
        y = _bn(f"{name}_bn3", sync_bn, zero_gamma=True)(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet(
    depth: int = 18,
    width: float = 1.0,
    stem: str = "cifar",
    image_size: int | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    sync_batchnorm: bool = True,
    sobel: bool = False,
    grey: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Builds a ResNet v1 feature extractor.

    Args:
      depth: 18 or 34 (basic blocks) or 50 (bottleneck blocks).
      width: multiplier of the channel counts (64, 128, 256, 512 at width 1).
      stem: "cifar" (3x3 conv, stride 1, no max-pool: keeps 32 px images at 32x32 in stage 1)
        or "imagenet" (7x7 conv stride 2 and 3x3 max-pool, the original design).
      image_size: fixed square input size, or None for any size.
      mean, std: per-channel statistics of the training images in [0, 1]; applied inside the model.
      sync_batchnorm: batch statistics over the global batch under tf.distribute. With one replica
        it is the ordinary batch norm; with several it makes the result independent of the
        replica count (what the zoo's distribution tests check).
      sobel: put DeepCluster's fixed grey + Sobel front after the normalisation: the stem sees two
        gradient channels instead of colour, which k-means would otherwise cluster on first.
      grey: put a fixed RGB -> grey front before everything (colorization): the network sees the
        grey level only, in the three channels the normalisation expects.
    Returns:
      A functional `keras.Model` from images in [0, 255] to the pooled features, whose stage
      outputs are the layers named in `STAGES`.
    """
    if depth not in _DEPTHS:
        raise ConfigError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
    if stem not in ("cifar", "imagenet"):
        raise ConfigError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    if width <= 0:
        raise ConfigError(f"width must be positive, got {width}")
    kind, blocks = _DEPTHS[depth]
    base = max(8, int(round(64 * width)))
    name = name or f"resnet{depth}_w{width:g}_{stem}"

    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = inputs
    if grey:
        x = layers.Conv2D(3, 1, use_bias=False, trainable=False, name=GREY_LAYER)(x)
    # Rescaling to [0, 1] then Normalization keeps the constants in the model config.
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    x = layers.Normalization(
        mean=list(mean), variance=[s * s for s in std], name="normalize"
    )(x)
    if sobel:
        for layer_name, kernel in sobel_kernels().items():
            # Frozen (trainable=False is in the config, so it stays frozen after loading); the
            # kernels are set below and travel in the weights file like any other.
            x = layers.Conv2D(kernel.shape[-1], kernel.shape[0], padding="same", use_bias=False,
                              trainable=False, name=layer_name)(x)
    if stem == "cifar":
        x = _conv(base, 3, 1, "stem_conv")(x)
        x = _bn("stem_bn", sync_batchnorm)(x)
        x = layers.ReLU(name="stem_relu")(x)
    else:
        x = _conv(base, 7, 2, "stem_conv")(x)
        x = _bn("stem_bn", sync_batchnorm)(x)
        x = layers.ReLU(name="stem_relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    x = layers.Identity(name="stem")(x)
    for stage, n_blocks in enumerate(blocks, start=1):
        filters = base * 2 ** (stage - 1)
        for b in range(n_blocks):
            stride = 2 if (b == 0 and stage > 1) else 1
            x = _block(x, filters, stride, kind, f"stage{stage}_block{b + 1}", sync_batchnorm)
        x = layers.Identity(name=f"stage{stage}")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = layers.Identity(name="pooled")(x)
    model = keras.Model(inputs, outputs, name=name)
    if sobel:
        for layer_name, kernel in sobel_kernels().items():
            model.get_layer(layer_name).set_weights([kernel])
    if grey:
        model.get_layer(GREY_LAYER).set_weights([grey_kernel()])
    return model


def stage_model(backbone: keras.Model, stages=("pooled",), name: str | None = None) -> keras.Model:
    """A model from the backbone's input to a dict of the named stage outputs (shared weights)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; available: {list(STAGES)}")
    outputs = {s: backbone.get_layer(s).output for s in stages}
    return keras.Model(backbone.input, outputs, name=name or f"{backbone.name}_stages")
