"""Rotation pretext (Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by
Predicting Image Rotations").

"we found that ... feeding the network with all four rotated copies of an image simultaneously
... significantly improves" results (Sec. 2.2): so the transform takes a batch of B images and
returns all 4B rotations with their labels, every image's four copies in the same batch.
"""

from __future__ import annotations

import tensorflow as tf

NUM_ROTATIONS = 4  # 0, 90, 180, 270 degrees counter-clockwise


def rotate_batch(images, labels=None):
    """`images` [B, S, S, C] (or one [S, S, C] image) -> (inputs [4B, S, S, C], targets [4B]).

    `inputs[r * B + i]` is image i rotated by r * 90 degrees counter-clockwise and its target is r,
    so `tf.image.rot90(inputs[j], -targets[j])` gives back the original image. The source labels
    are ignored: the pretext label comes from the image itself.
    """
    del labels
    images = tf.convert_to_tensor(images)
    if images.shape.rank == 3:
        images = images[None]
    tf.debugging.assert_equal(
        tf.shape(images)[1], tf.shape(images)[2], message="rotation pretext needs square images"
    )
    batch = tf.shape(images)[0]
    inputs = tf.concat([tf.image.rot90(images, k) for k in range(NUM_ROTATIONS)], axis=0)
    targets = tf.repeat(tf.range(NUM_ROTATIONS, dtype=tf.int32), batch)
    return inputs, targets
