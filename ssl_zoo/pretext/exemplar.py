"""Exemplar CNN pretext (Dosovitskiy, Fischer, Springenberg, Riedmiller & Brox, TPAMI 2016,
"Discriminative Unsupervised Feature Learning with Exemplar Convolutional Neural Networks").

Each surrogate class is one "seed" patch cut from one image; its examples are the seed under
random transformations, and the network classifies which seed a view came from, so it must become
invariant to the transformations while keeping what identifies the patch.

- Seeds "from regions containing considerable gradients" (Sec. 3.1): among `candidates` random
  boxes (positions drawn from a stateless seed) the one with the largest mean Sobel gradient
  magnitude is kept (`select_seed_box`).
- Transformations (Sec. 3.1): "translation: vertical or horizontal translation by a distance
  within 0.2 of the patch size; scaling: multiplication of the patch scale by a factor between
  0.7 and 1.4; rotation: rotation of the image by an angle up to 20 degrees; contrast 1: multiply
  the projection of each patch pixel onto the principal components of the set of all pixels by a
  factor between 0.5 and 2; contrast 2: raise saturation and value (S and V components of the HSV
  color representation) of all pixels to a power between 0.25 and 4 ..., multiply these values by
  a factor between 0.7 and 1.4, add to them a value between -0.1 and 0.1; color: add a value
  between -0.1 and 0.1 to the hue". Contrast 1 is applied per channel about the patch mean (the
  principal components of one small patch are close to the colour axes after contrast 2's mixing;
  this keeps the op cheap); the others are as written, with pure TF ops (a projective-transform
  resampler for the geometry, HSV for the colour).

A seed bank stores, per class, a context square `context_size` around the seed box, so that
translation, scaling and rotation bring real neighbouring pixels into view (reflection only
beyond it).
"""

from __future__ import annotations

import math

import tensorflow as tf

from ssl_zoo.data.augment import center_crop


def gradient_magnitude(image):
    """Sobel gradient magnitude of the grey image, [H, W] float32."""
    grey = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))[None]  # [1, H, W, 1]
    edges = tf.image.sobel_edges(grey)[0, :, :, 0, :]  # [H, W, 2]
    return tf.norm(edges, axis=-1)


def select_seed_box(image, seed, patch_size: int, candidates: int):
    """Top-left (row, col) of the candidate box with the largest mean gradient magnitude.

    `candidates` positions are drawn uniformly from `seed`; the choice is the argmax, so the box
    is a pure function of (image, seed)."""
    shape = tf.shape(image)
    mag = gradient_magnitude(image)
    # Box means of the magnitude at every top-left position, from an integral image.
    integral = tf.pad(tf.cumsum(tf.cumsum(mag, 0), 1), [[1, 0], [1, 0]])
    p = patch_size
    box_sum = integral[p:, p:] - integral[:-p, p:] - integral[p:, :-p] + integral[:-p, :-p]
    rows = tf.random.stateless_uniform([candidates], seed, 0, shape[0] - p + 1, dtype=tf.int32)
    cols = tf.random.stateless_uniform([candidates], tf.random.experimental.stateless_fold_in(seed, 1),
                                       0, shape[1] - p + 1, dtype=tf.int32)
    scores = tf.gather_nd(box_sum, tf.stack([rows, cols], 1))
    best = tf.argmax(scores, output_type=tf.int32)
    return tf.stack([rows[best], cols[best]]), scores[best] / float(p * p)


def seed_context(image, seed, *, image_size: int, patch_size: int, context_size: int, candidates: int):
    """One source image -> (context [C, C, 3] uint8 centred on its seed box, mean gradient).

    The image is first brought to `image_size` (centre crop of the resized image, as the
    training data is seen); the context is cut around the seed box with reflection padding."""
    image = center_crop(image, image_size)
    corner, score = select_seed_box(image, seed, patch_size, candidates)
    pad = (context_size - patch_size + 1) // 2
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    top = corner + pad - (context_size - patch_size) // 2
    context = tf.slice(padded, [top[0], top[1], 0], [context_size, context_size, 3])
    context = tf.ensure_shape(context, [context_size, context_size, 3])
    return tf.cast(tf.round(tf.clip_by_value(context, 0.0, 255.0)), tf.uint8), score


def _affine(out_size: int, context_size: int, scale, angle, shift):
    """Projective-transform rows [B, 8] mapping output pixel (x, y) to context coordinates: the
    output patch is the seed box, zoomed by `scale` [B] (>1 magnifies), rotated by `angle` [B] and
    moved by `shift` [B, 2] (dx, dy) pixels, all about the centres."""
    c_out = (out_size - 1) / 2.0
    c_in = (context_size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # [x_in, y_in] = R(angle)/scale @ [x - c_out, y - c_out] + c_in - shift
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = c_in - shift[:, 0] - a0 * c_out - a1 * c_out
    b2 = c_in - shift[:, 1] - b0 * c_out - b1 * c_out
    zero = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)


def draw_transformation(
    seed,
    *,
    patch_size: int,
    translate: float = 0.2,
    scale: tuple[float, float] = (0.7, 1.4),
    rotate_degrees: float = 20.0,
    contrast: tuple[float, float] = (0.5, 2.0),
    sv_power: tuple[float, float] = (0.25, 4.0),
    sv_factor: tuple[float, float] = (0.7, 1.4),
    sv_shift: float = 0.1,
    hue_shift: float = 0.1,
) -> dict[str, tf.Tensor]:
    """The random parameters of one view, from a stateless seed. Scale, contrast and the S/V powers
    are drawn log-uniformly (symmetric around 1). Only the draws happen per example: applying them
    (`apply_transformations`) is done on whole batches, where each op's fixed cost is shared by
    the batch instead of paid per 32 px view."""
    s = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8))
    uniform = tf.random.stateless_uniform
    return {
        "shift": uniform([2], s[0], -translate, translate) * patch_size,
        "scale": tf.exp(uniform([], s[1], math.log(scale[0]), math.log(scale[1]))),
        "angle": uniform([], s[2], -1.0, 1.0) * (rotate_degrees * math.pi / 180.0),
        "contrast": tf.exp(uniform([3], s[3], math.log(contrast[0]), math.log(contrast[1]))),
        "sv_power": tf.exp(uniform([2], s[4], math.log(sv_power[0]), math.log(sv_power[1]))),
        "sv_factor": uniform([2], s[5], sv_factor[0], sv_factor[1]),
        "sv_add": uniform([2], s[6], -sv_shift, sv_shift),
        "hue_add": uniform([], s[7], -hue_shift, hue_shift),
    }


def apply_transformations(contexts, params, *, patch_size: int, geometric: bool = True, colour: bool = True):
    """Seed contexts [B, C, C, 3] and their drawn parameters (`draw_transformation`, stacked) ->
    views [B, P, P, 3] float32 in [0, 255].

    With `geometric=False` and `colour=False` each view is exactly its seed box (the centre of the
    context)."""
    contexts = tf.cast(contexts, tf.float32)
    size = contexts.shape[1]
    if geometric:
        transforms = _affine(patch_size, size, params["scale"], params["angle"], params["shift"])
        views = tf.raw_ops.ImageProjectiveTransformV3(
            images=contexts, transforms=transforms, output_shape=tf.constant([patch_size, patch_size]),
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
        )
    else:
        off = (size - patch_size) // 2
        views = contexts[:, off : off + patch_size, off : off + patch_size]
    if colour:
        # Contrast 1: deviations from the patch mean scaled, per channel.
        c = params["contrast"][:, None, None, :]
        mean = tf.reduce_mean(views, axis=[1, 2], keepdims=True)
        views = tf.clip_by_value(mean + c * (views - mean), 0.0, 255.0)
        # Contrast 2 on S and V, and colour: hue shift.
        hsv = tf.image.rgb_to_hsv(views / 255.0)
        h, sv = hsv[..., :1], hsv[..., 1:]
        per_view = lambda name: params[name][:, None, None, :]  # noqa: E731  [B, 1, 1, 2]
        sv = tf.clip_by_value(tf.pow(sv, per_view("sv_power")) * per_view("sv_factor") + per_view("sv_add"), 0.0, 1.0)
        h = tf.math.floormod(h + params["hue_add"][:, None, None, None], 1.0)
        views = tf.image.hsv_to_rgb(tf.concat([h, sv], -1)) * 255.0
    return tf.ensure_shape(tf.clip_by_value(views, 0.0, 255.0), [None, patch_size, patch_size, 3])


def transform_seed(context, seed, *, patch_size: int, geometric: bool = True, colour: bool = True,
                   **ranges):
    """A seed context [C, C, 3] -> one random view [P, P, 3] float32 in [0, 255]: the batched
    transformation applied to a batch of one, so that both give the same view for a seed."""
    params = draw_transformation(seed, patch_size=patch_size, **ranges)
    return _apply_to_one(context, params, patch_size=patch_size, geometric=geometric, colour=colour)


def _apply_to_one(context, params, **kwargs):
    """`apply_transformations` on a batch of one: the per-example path shares the batched code."""
    return apply_transformations(context[None], {k: v[None] for k, v in params.items()}, **kwargs)[0]


def draw_example(bank, seed, *, patch_size: int, **ranges):
    """-> (seed context [C, C, 3] uint8, its view's drawn parameters, class id int32): the
    per-example half of an Exemplar example; `apply_transformations` on the batch makes the views.
    The class is drawn uniformly from the `bank` [N, C, C, 3]."""
    bank = tf.convert_to_tensor(bank)
    class_seed, view_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    label = tf.random.stateless_uniform([], class_seed, 0, tf.shape(bank)[0], dtype=tf.int32)
    return tf.gather(bank, label), draw_transformation(view_seed, patch_size=patch_size, **ranges), label


def exemplar_example(bank, seed, *, patch_size: int, return_debug: bool = False, geometric: bool = True,
                     colour: bool = True, **ranges):
    """-> (view [P, P, 3], class id int32): a uniformly drawn surrogate class (seed patch) of
    `bank` [N, C, C, 3] under a random transformation; the same view the batched pipeline makes
    for this seed. With `return_debug`, also the class's untransformed seed patch."""
    context, params, label = draw_example(bank, seed, patch_size=patch_size, **ranges)
    view = _apply_to_one(context, params, patch_size=patch_size, geometric=geometric, colour=colour)
    if return_debug:
        off = (context.shape[0] - patch_size) // 2
        return view, label, context[off : off + patch_size, off : off + patch_size]
    return view, label
