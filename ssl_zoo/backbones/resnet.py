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


# The fixed chroma front of `split_resnet`'s colour half: blue minus luma and red minus luma
# (the B'-Y', R'-Y' of video colour-difference signals), the colour the grey level leaves out.
CHROMA_LAYER = "chroma"
# Layer-name prefixes of `split_resnet`'s two halves: the grey one and the chroma one.
SPLIT_PREFIXES = ("l_", "ab_")


def chroma_kernel() -> np.ndarray:
    """Kernel of the chroma front (Conv2D layout [1, 1, 3 in, 2 out]): B - Y and R - Y."""
    luma = np.array(LUMA_709, np.float32)
    return np.stack([np.eye(3, dtype=np.float32)[2] - luma, np.eye(3, dtype=np.float32)[0] - luma], axis=1)[None, None]


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
    init: str = "zoo",
    stem_relu: bool = True,
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
      init: the starting weights (`initialise`): "zoo" (He-normal kernels, the last batch norm of
        every residual branch at gamma 0) or "pytorch" (PyTorch's defaults). Not part of the
        architecture: the saved config is the same either way.
      stem_relu: False leaves out the stem's ReLU (the stem ends at its batch norm). Only to
        compare with PyTorch code that builds a backbone from `list(resnet.children())`, which
        drops the ReLU its `forward` applies as a function (LightlySSL's CIFAR-10 benchmarks).
    Returns:
      A functional `keras.Model` from images in [0, 255] to the pooled features, whose stage
      outputs are the layers named in `STAGES`.
    """
    _check(depth, width, stem)
    name = name or f"resnet{depth}_w{width:g}_{stem}"
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = inputs
    if grey:
        x = layers.Conv2D(3, 1, use_bias=False, trainable=False, name=GREY_LAYER)(x)
    x = _normalize(x, mean, std)
    if sobel:
        for layer_name, kernel in sobel_kernels().items():
            # Frozen (trainable=False is in the config, so it stays frozen after loading); the
            # kernels are set below and travel in the weights file like any other.
            x = layers.Conv2D(kernel.shape[-1], kernel.shape[0], padding="same", use_bias=False,
                              trainable=False, name=layer_name)(x)
    outputs = _trunk(x, depth, width, stem, sync_batchnorm, stem_relu)["pooled"]
    model = keras.Model(inputs, outputs, name=name)
    if sobel:
        for layer_name, kernel in sobel_kernels().items():
            model.get_layer(layer_name).set_weights([kernel])
    if grey:
        model.get_layer(GREY_LAYER).set_weights([grey_kernel()])
    initialise(model, init)
    return model


INITS = ("zoo", "pytorch")


def initialise(model: keras.Model, init: str) -> None:
    """"zoo" leaves the layers' own initialisers: He-normal kernels (He et al. 2015) and gamma 0 on
    the last batch norm of each residual branch, so that every block starts as the identity (Goyal
    et al. 2017, for large batches). "pytorch" redraws what PyTorch's defaults would have drawn,
    the start of the PyTorch implementations the zoo is compared with: every trainable kernel
    uniform in +-1/sqrt(fan_in) (torch.nn.Conv2d's kaiming_uniform with a = sqrt(5): a standard
    deviation 2.4 times smaller than He's) and every gamma 1. Under batch norm a kernel's scale does
    not change the function but sets its effective learning rate (lr / |w|^2) until weight decay
    has brought the norms to equilibrium, which takes longer than a short schedule. Seeded by
    Keras's global seed, like the initialisers."""
    if init not in INITS:
        raise ConfigError(f"[backbone] init must be one of {INITS}, got {init!r}")
    if init == "zoo":
        return
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, layers.Conv2D) and layer.trainable:
            fan_in = int(np.prod(layer.kernel.shape[:-1]))
            bound = 1.0 / np.sqrt(fan_in)
            layer.kernel.assign(keras.random.uniform(layer.kernel.shape, -bound, bound))
        elif isinstance(layer, layers.BatchNormalization):
            layer.gamma.assign(keras.ops.ones_like(layer.gamma))


def _check(depth: int, width: float, stem: str) -> None:
    if depth not in _DEPTHS:
        raise ConfigError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
    if stem not in ("cifar", "imagenet"):
        raise ConfigError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    if width <= 0:
        raise ConfigError(f"width must be positive, got {width}")


def _normalize(x, mean, std, prefix: str = ""):
    # Rescaling to [0, 1] then Normalization keeps the constants in the model config.
    x = layers.Rescaling(1.0 / 255.0, name=f"{prefix}rescale")(x)
    return layers.Normalization(mean=list(mean), variance=[s * s for s in std], name=f"{prefix}normalize")(x)


def _trunk(x, depth: int, width: float, stem: str, sync_batchnorm: bool, stem_relu: bool = True) -> dict:
    """Stem, four stages and global pooling on the normalised input `x`. Returns {stage name:
    its output} (the Identity layers named after the stages)."""
    kind, blocks = _DEPTHS[depth]
    base = _base_channels(width)
    out = {"stem": _stem(x, base, stem, sync_batchnorm, relu=stem_relu)}
    x = out["stem"]
    for stage, n_blocks in enumerate(blocks, start=1):
        x = out[f"stage{stage}"] = _stage(x, stage, n_blocks, base, kind, sync_batchnorm)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    out["pooled"] = layers.Identity(name="pooled")(x)
    return out


def _base_channels(width: float) -> int:
    return max(8, int(round(64 * width)))


def _stem(x, base: int, stem: str, sync_batchnorm: bool, prefix: str = "", relu: bool = True):
    """The stem; every layer's name starts with `prefix`, the last is the Identity `prefix + "stem"`."""
    if stem == "cifar":
        x = _conv(base, 3, 1, f"{prefix}stem_conv")(x)
        x = _bn(f"{prefix}stem_bn", sync_batchnorm)(x)
        if relu:
            x = layers.ReLU(name=f"{prefix}stem_relu")(x)
    else:
        x = _conv(base, 7, 2, f"{prefix}stem_conv")(x)
        x = _bn(f"{prefix}stem_bn", sync_batchnorm)(x)
        if relu:
            x = layers.ReLU(name=f"{prefix}stem_relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{prefix}stem_pool")(x)
    return layers.Identity(name=f"{prefix}stem")(x)


def _stage(x, stage: int, n_blocks: int, base: int, kind: str, sync_batchnorm: bool, prefix: str = ""):
    """Stage `stage` (1..4): its blocks, then the Identity `prefix + f"stage{stage}"`."""
    filters = base * 2 ** (stage - 1)
    for b in range(n_blocks):
        stride = 2 if (b == 0 and stage > 1) else 1
        x = _block(x, filters, stride, kind, f"{prefix}stage{stage}_block{b + 1}", sync_batchnorm)
    return layers.Identity(name=f"{prefix}stage{stage}")(x)


def _channels(x, start: int, stop: int, name: str):
    """Channels start:stop of a [B, H, W, C] map, with stock layers and no weights: the channels
    moved to the rows axis, cropped there (Cropping2D), moved back."""
    y = layers.Permute((3, 1, 2), name=f"{name}_channels_first")(x)
    y = layers.Cropping2D(((start, x.shape[-1] - stop), (0, 0)), name=f"{name}_take")(y)
    return layers.Permute((2, 3, 1), name=f"{name}_channels_last")(y)


def split_resnet(
    depth: int = 18,
    width: float = 1.0,
    stem: str = "cifar",
    image_size: int | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    sync_batchnorm: bool = True,
    name: str | None = None,
) -> keras.Model:
    """The split-brain autoencoder's backbone (Zhang, Isola & Efros 2017): two ResNets of half the
    width side by side, one on the grey level (the `grey=True` front) and one on the colour without
    the grey level (a fixed linear chroma front, `chroma_kernel`). Every stage layer (`stem` ...
    `stage4`, `pooled`) is the concatenation of the two halves' (grey half's channels first), so
    the loader, the probes and fine-tuning see one backbone of `width`; each half's next stage
    reads its own channels back out of it (`_channels`), which keeps the halves independent.

    The halves' own stages are the layers `SPLIT_PREFIXES[half] + stage` (`l_stage4`,
    `ab_stage4`): the pretext heads read them. Takes RGB in [0, 255]; stock layers only."""
    _check(depth, width, stem)
    name = name or f"split_resnet{depth}_w{width:g}_{stem}"
    kind, blocks = _DEPTHS[depth]
    base = _base_channels(width / 2)
    inputs = keras.Input((image_size, image_size, 3), name="images")
    grey = layers.Conv2D(3, 1, use_bias=False, trainable=False, name=GREY_LAYER)(inputs)
    chroma = layers.Conv2D(2, 1, use_bias=False, trainable=False, name=CHROMA_LAYER)(inputs)
    l_prefix, ab_prefix = SPLIT_PREFIXES
    halves = [
        _stem(_normalize(grey, mean, std, l_prefix), base, stem, sync_batchnorm, l_prefix),
        # The chroma channels are differences of colour channels, about zero-mean: only rescaled; the
        # stem's batch norm sets their scale.
        _stem(layers.Rescaling(1.0 / 255.0, name=f"{ab_prefix}rescale")(chroma), base, stem, sync_batchnorm,
              ab_prefix),
    ]
    x = layers.Concatenate(name="stem")(halves)
    for stage, n_blocks in enumerate(blocks, start=1):
        split = halves[0].shape[-1]
        halves = [_stage(_channels(x, lo, hi, f"{prefix}stage{stage}_input"), stage, n_blocks, base, kind,
                         sync_batchnorm, prefix)
                  for prefix, (lo, hi) in zip(SPLIT_PREFIXES, ((0, split), (split, x.shape[-1])))]
        x = layers.Concatenate(name=f"stage{stage}")(halves)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    model = keras.Model(inputs, layers.Identity(name="pooled")(x), name=name)
    model.get_layer(GREY_LAYER).set_weights([grey_kernel()])
    model.get_layer(CHROMA_LAYER).set_weights([chroma_kernel()])
    return model


def stage_model(backbone: keras.Model, stages=("pooled",), name: str | None = None) -> keras.Model:
    """A model from the backbone's input to a dict of the named stage outputs (shared weights)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; available: {list(STAGES)}")
    outputs = {s: backbone.get_layer(s).output for s in stages}
    return keras.Model(backbone.input, outputs, name=name or f"{backbone.name}_stages")
