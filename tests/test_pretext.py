import numpy as np
import pytest
import tensorflow as tf

from ssl_zoo.pretext.rotation import NUM_ROTATIONS, rotate_batch


def _images(n=3, size=8):
    return np.random.default_rng(0).integers(0, 255, (n, size, size, 3)).astype(np.float32)


def _check(images, inputs, targets):
    n = len(images)
    assert inputs.shape == (4 * n,) + images.shape[1:]
    assert targets.shape == (4 * n,)
    assert set(np.unique(targets)) == set(range(NUM_ROTATIONS))
    for j in range(4 * n):
        # Rotating back by the label recovers the image it came from: the label describes the transform.
        back = np.rot90(inputs[j], k=-int(targets[j]), axes=(0, 1))
        np.testing.assert_array_equal(back, images[j % n])
    # All four rotations of every image are in the batch.
    for i in range(n):
        assert sorted(int(targets[r * n + i]) for r in range(4)) == [0, 1, 2, 3]


def test_rotation_eager():
    images = _images()
    inputs, targets = rotate_batch(images)
    _check(images, inputs.numpy(), targets.numpy())


def test_rotation_inside_tf_data():
    images = _images(6)
    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(6, np.int64))).batch(3).map(rotate_batch)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 2
    for b, (inputs, targets) in enumerate(batches):
        assert targets.dtype == np.int32
        _check(images[3 * b : 3 * b + 3], inputs, targets)


def test_rotation_is_not_a_no_op():
    images = _images(1)
    inputs, _ = rotate_batch(images)
    assert not np.array_equal(inputs[0], inputs[1])


def test_rotation_rejects_non_square():
    with pytest.raises(tf.errors.InvalidArgumentError, match="square"):
        rotate_batch(np.zeros((1, 4, 6, 3), np.float32))
