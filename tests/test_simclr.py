"""SimCLR: NT-Xent against a NumPy reference, negatives across replicas (loss and gradients),
the two-view transform, and the method contract."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_BACKBONE, two_replica_strategy
from method_contract import MethodContract
from ssl_zoo import losses
from ssl_zoo.pretext.contrastive import simclr_view, two_views

IMAGES = np.random.default_rng(0).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)


def nt_xent_reference(z1, z2, temperature):
    """The paper's Eq. 1 written out over all 2N views of one global batch (NumPy, float64)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / temperature
    losses_, correct = [], []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        logits = sim[i, others]
        losses_.append(-sim[i, positive] + np.log(np.exp(logits).sum()))
        correct.append(others[int(np.argmax(logits))] == positive)
    return np.array(losses_), np.array(correct)


def test_nt_xent_matches_the_numpy_reference():
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(6, 5)).astype("float32"), rng.normal(size=(6, 5)).astype("float32")
    got, correct = losses.nt_xent(z1, z2, 0.2)
    want, want_correct = nt_xent_reference(z1, z2, 0.2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(correct.numpy(), want_correct)
    # Perfectly aligned views far from the others: loss near its floor, every positive found.
    eye = np.eye(6, 8, dtype="float32")
    low, found = losses.nt_xent(eye, eye, 0.05)
    assert float(tf.reduce_max(low)) < 1e-6 and bool(tf.reduce_all(found))


def test_nt_xent_negatives_cross_replicas_loss_and_gradients():
    """Two replicas with half of the global batch each: the summed global-mean loss and its
    gradient equal those of one replica with all of it (the negatives really cross replicas)."""
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 4)).astype("float32")
    w = tf.Variable(rng.normal(size=(4, 4)).astype("float32"))

    def loss_and_grad(a, b):
        with tf.GradientTape() as tape:
            per_example, _ = losses.nt_xent(tf.matmul(a, w), tf.matmul(b, w), 0.3)
            loss = losses.global_mean(per_example)
        return loss, tape.gradient(loss, w)

    one_loss, one_grad = loss_and_grad(z1, z2)
    strategy = two_replica_strategy([d.name for d in tf.config.list_logical_devices("CPU")])
    with strategy.scope():
        w_mirrored = tf.Variable(w.numpy())
    halves = [(z1[:4], z2[:4]), (z1[4:], z2[4:])]
    per_replica = strategy.experimental_distribute_values_from_function(lambda ctx: halves[ctx.replica_id_in_sync_group])

    @tf.function
    def distributed(batch):
        def step(ab):
            with tf.GradientTape() as tape:
                per_example, _ = losses.nt_xent(tf.matmul(ab[0], w_mirrored), tf.matmul(ab[1], w_mirrored), 0.3)
                loss = losses.global_mean(per_example)
            return loss, tape.gradient(loss, w_mirrored)

        loss, grad = strategy.run(step, args=(batch,))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", grad, axis=None)

    two_loss, two_grad = distributed(per_replica)
    np.testing.assert_allclose(float(two_loss), float(one_loss), rtol=1e-5)
    np.testing.assert_allclose(two_grad.numpy(), one_grad.numpy(), rtol=1e-4, atol=1e-6)
    # Without the gather each replica would only see its own 4 images: a different loss.
    local_only = np.mean([losses.nt_xent(tf.matmul(a, w), tf.matmul(b, w), 0.3)[0].numpy() for a, b in halves])
    assert abs(local_only - float(one_loss)) > 1e-3


def test_two_views_differ_repeat_with_their_seed_and_stay_in_range():
    image = tf.constant(IMAGES[0])
    seed = tf.constant([3, 4], tf.int64)
    a1, a2 = two_views(image, 16, seed)
    b1, b2 = two_views(image, 16, seed)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert a1.shape == a2.shape == (16, 16, 3)
    assert not np.allclose(a1, a2)
    for view in (a1, a2):
        assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 255.0 + 1e-3
    # Greyscale at probability 0.2 and jitter at 0.8: both happen over a handful of seeds.
    grey = [bool(np.allclose(v[..., 0], v[..., 1], atol=1e-3))
            for v in (simclr_view(image, 16, tf.constant([0, i], tf.int64)).numpy() for i in range(40))]
    assert 2 <= sum(grey) <= 20
    blurred = simclr_view(image, 16, seed, blur_probability=1.0, jitter_probability=0.0, grey_probability=0.0)
    sharp = simclr_view(image, 16, seed, blur_probability=0.0, jitter_probability=0.0, grey_probability=0.0)
    assert float(tf.reduce_mean(tf.abs(blurred - sharp))) > 0.1


def test_torchvision_jitter_ops_match_their_formulas_and_the_order_is_uniform():
    """torchvision's ColorJitter, written out in NumPy (its adjust_brightness / _contrast /
    _saturation for float images: blends clipped to [0, 1], grey weights 0.2989 / 0.587 / 0.114)."""
    from ssl_zoo.pretext.contrastive import blend_contrast, blend_saturation, random_order, scale_brightness

    x = np.random.default_rng(1).uniform(0, 1, (6, 6, 3)).astype(np.float32)
    grey = (x @ np.array([0.2989, 0.587, 0.114], np.float32))[..., None]
    for f in (0.6, 1.3):
        np.testing.assert_allclose(scale_brightness(x, f), np.clip(x * f, 0, 1), atol=1e-6)
        np.testing.assert_allclose(blend_contrast(x, f), np.clip(f * x + (1 - f) * grey.mean(), 0, 1), atol=1e-5)
        np.testing.assert_allclose(blend_saturation(x, f), np.clip(f * x + (1 - f) * grey, 0, 1), atol=1e-5)
    counts = {}
    for i in range(2400):
        order = tuple(random_order(tf.constant([7, i], tf.int64), 4).numpy())
        counts[order] = counts.get(order, 0) + 1
    assert len(counts) == 24 and min(counts.values()) > 50 and max(counts.values()) < 150  # 100 expected each


def test_torchvision_jitter_scales_brightness_where_the_paper_shifts_it():
    """A black image stays black under multiplicative brightness and contrast about the grey mean;
    the paper's additive brightness lifts it. Both are repeatable by seed and stay in [0, 1]."""
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.methods.simclr import SimCLR
    from ssl_zoo.pretext.contrastive import colour_jitter

    black = tf.zeros((8, 8, 3))
    seeds = [tf.constant([0, i], tf.int64) for i in range(20)]
    assert all(float(tf.reduce_max(colour_jitter(black, sd, 0.5, "torchvision"))) == 0.0 for sd in seeds)
    assert max(float(tf.reduce_max(colour_jitter(black, sd, 0.5, "paper"))) for sd in seeds) > 0.2
    image = tf.constant(IMAGES[1] / 255.0, tf.float32)
    a, b = (colour_jitter(image, seeds[3], 0.5, "torchvision") for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 1.0
    assert not np.allclose(a, colour_jitter(image, seeds[4], 0.5, "torchvision"))
    with pytest.raises(ConfigError, match="jitter_style must be one of"):
        SimCLR(jitter_style="pytorch", backbone=dict(TINY_BACKBONE))
    with pytest.raises(ConfigError, match="crop_sampler must be one of"):
        SimCLR(crop_sampler="pil", backbone=dict(TINY_BACKBONE))


def test_batch_norm_over_each_view_normalises_each_view_by_its_own_statistics():
    """"each" is the model called once per view; "both" one call on the 2N views. In training mode
    batch norm makes them differ; in inference mode (moving statistics) they are the same."""
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.methods.simclr import SimCLR

    views = [tf.constant(v[:, :16, :16] / 1.0, tf.float32) for v in (IMAGES[:4], IMAGES[4:8])]
    both = SimCLR(image_size=16, head_hidden_units=(16,), projection_dim=8, backbone=dict(TINY_BACKBONE))
    each = SimCLR(image_size=16, head_hidden_units=(16,), projection_dim=8, backbone=dict(TINY_BACKBONE),
                  batch_norm_views="each")
    model = both.build_model()
    reference = losses.nt_xent(model(views[0], training=True), model(views[1], training=True), both.temperature)[0]
    np.testing.assert_allclose(each._contrast(model, views, training=True)[0], reference, rtol=1e-5, atol=1e-5)
    assert not np.allclose(both._contrast(model, views, training=True)[0], reference, atol=1e-3)
    np.testing.assert_allclose(both._contrast(model, views, training=False)[0],
                               each._contrast(model, views, training=False)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="batch_norm_views"):
        SimCLR(batch_norm_views="per_view", backbone=dict(TINY_BACKBONE))


CONTRACT = MethodContract(
    method={"name": "simclr", "image_size": 16, "head_hidden_units": [16], "projection_dim": 8},
    image_size=16, images=IMAGES, backbone=dict(TINY_BACKBONE), keras_fit=False)


def test_head_output_batch_norm_ends_the_projection_with_a_batch_norm():
    """head_output_batch_norm: Dense without bias, then a batch norm (the SimCLR authors' and
    LightlySSL's head); in training each output dimension is centred over the batch."""
    import keras

    from ssl_zoo.methods.simclr import SimCLR

    plain = SimCLR(image_size=16, backbone=dict(TINY_BACKBONE, image_size=16)).build_model()
    normed = SimCLR(image_size=16, head_output_batch_norm=True, backbone=dict(TINY_BACKBONE, image_size=16)).build_model()
    plain_head, head = plain.get_layer("pretext_head"), normed.get_layer("pretext_head")
    assert not isinstance(plain_head.layers[-1], keras.layers.BatchNormalization)
    assert isinstance(head.layers[-1], keras.layers.BatchNormalization)
    assert head.layers[-2].use_bias is False and plain_head.layers[-1].use_bias is True
    z = np.asarray(normed(np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32"), training=True))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas_and_sigkill_resume(tmp_path):
    CONTRACT.run_slow(tmp_path)
