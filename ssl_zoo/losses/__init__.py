"""Losses: pure functions of tensors, correct under tf.distribute.

Inside `strategy.run` every replica computes its loss on its own slice of the global batch and the
optimizer *sums* the replicas' gradients. So a per-replica loss must be the sum over its examples
divided by the number of examples in the *global* batch; then the summed gradient equals the
gradient of the mean over the global batch, whatever the replica count.
"""

from __future__ import annotations

import tensorflow as tf


def num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_mean(per_example_loss, per_replica_count=None):
    """Sum of this replica's per-example losses over the global example count.

    Assumes equal per-replica batches (the training pipelines drop remainders)."""
    per_example_loss = tf.convert_to_tensor(per_example_loss)
    if per_replica_count is None:
        per_replica_count = tf.shape(per_example_loss)[0]
    global_count = tf.cast(per_replica_count * num_replicas(), per_example_loss.dtype)
    return tf.reduce_sum(per_example_loss) / global_count


def replica_loss(per_example_loss, model=None):
    """The loss a replica differentiates: its share of the global mean (`global_mean`) plus its
    share of the model's regularisation losses (`model.losses`, added once over all replicas)."""
    loss = global_mean(per_example_loss)
    if model is not None and model.losses:
        loss += tf.add_n(model.losses) / num_replicas()
    return loss


def sparse_cross_entropy(labels, logits):
    """Per-example softmax cross-entropy from integer labels (float32 for numerical safety)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def weighted_soft_cross_entropy(soft_targets, weights, logits):
    """Per-example mean over positions of `weights * -sum_q soft_targets log softmax(logits)`.

    `soft_targets`, `logits`: [B, ..., Q]; `weights`: [B, ...], one per position (colorization's
    class rebalancing, Zhang et al. 2016 eq. 2: the weight of the position's nearest bin)."""
    logits = tf.cast(logits, tf.float32)
    per_position = -tf.reduce_sum(tf.cast(soft_targets, tf.float32) * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    weighted = tf.cast(weights, tf.float32) * per_position
    return tf.reduce_mean(tf.reshape(weighted, [tf.shape(weighted)[0], -1]), axis=-1)


def nt_xent(z1, z2, temperature: float, replica_context=None):
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1) with the negatives of the *global* batch.

    `z1`, `z2`: this replica's projections of the two views of its B images. Every replica
    gathers both views' projections from all R replicas (differentiable `all_gather`), so each of
    its 2B queries is scored against all 2RB keys: its positive (the other view of its image)
    and 2RB - 2 negatives, itself masked out. This is what one replica computes on the whole
    global batch; the gradient reaching a key from other replicas' queries flows back through
    the gather (google-research/simclr's TF2 code does the same with a cross-replica concat).

    `replica_context` defaults to the current one (inside `strategy.run`, or the default
    strategy's). Returns `(per_example_loss [2B], positive_is_top1 [2B])` for this replica's
    queries, the first view's queries first; reduce with `global_mean`.
    """
    ctx = replica_context or tf.distribute.get_replica_context()
    z1 = tf.math.l2_normalize(tf.cast(z1, tf.float32), axis=-1)
    z2 = tf.math.l2_normalize(tf.cast(z2, tf.float32), axis=-1)
    local = tf.shape(z1)[0]
    if ctx.num_replicas_in_sync > 1:
        k1, k2 = ctx.all_gather(z1, axis=0), ctx.all_gather(z2, axis=0)
    else:
        k1, k2 = z1, z2
    total = tf.shape(k1)[0]
    keys = tf.concat([k1, k2], axis=0)  # [2N]: every first view, then every second view
    queries = tf.concat([z1, z2], axis=0)  # [2B]
    logits = tf.matmul(queries, keys, transpose_b=True) / temperature
    mine = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * local + tf.range(local)  # global rows of my images
    self_key = tf.concat([mine, total + mine], axis=0)
    positive = tf.concat([total + mine, mine], axis=0)
    logits -= 1e9 * tf.one_hot(self_key, 2 * total)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive, logits=logits)
    correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), positive)
    return per_example, correct


def info_nce(queries, positive_keys, negative_keys, temperature: float, exclude=None):
    """MoCo's InfoNCE (He et al. 2020, Eq. 1): each query against its own positive key and a set of
    negatives shared by the batch (MoCo's queue), a softmax over the K + 1 similarities of
    L2-normalised vectors at a temperature, the positive at index 0.

    `queries`, `positive_keys`: [B, D] (the keys are constants for the gradient); `negative_keys`:
    [K, D]. `exclude`: optional bool [B, K], negatives left out of a query's softmax (a memory bank's
    entry of the query's own image, PIRL). Returns `(per_example_loss [B], positive_is_top1 [B])`;
    reduce with `global_mean`.
    """
    q = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=-1)
    k = tf.math.l2_normalize(tf.stop_gradient(tf.cast(positive_keys, tf.float32)), axis=-1)
    negatives = tf.math.l2_normalize(tf.stop_gradient(tf.cast(negative_keys, tf.float32)), axis=-1)
    positive = tf.reduce_sum(q * k, axis=-1, keepdims=True)  # [B, 1]
    similarities = tf.matmul(q, negatives, transpose_b=True)
    if exclude is not None:
        similarities -= 1e9 * tf.cast(exclude, tf.float32)
    logits = tf.concat([positive, similarities], axis=1) / temperature
    labels = tf.zeros(tf.shape(q)[:1], tf.int32)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
    return per_example, correct


def gan_discriminator_loss(real_logits, fake_logits):
    """Per-example discriminator loss of the standard GAN (Goodfellow et al. 2014): binary
    cross-entropy with real = 1 and fake = 0, -log D(real) - log(1 - D(fake)), from logits
    (softplus(-r) + softplus(f), stable for large logits). [B, 1] or [B] logits -> [B]."""
    real = tf.reshape(tf.cast(real_logits, tf.float32), [tf.shape(real_logits)[0], -1])
    fake = tf.reshape(tf.cast(fake_logits, tf.float32), [tf.shape(fake_logits)[0], -1])
    return tf.reduce_mean(tf.nn.softplus(-real), axis=1) + tf.reduce_mean(tf.nn.softplus(fake), axis=1)


def gan_generator_loss(fake_logits):
    """Per-example non-saturating generator loss, -log D(fake) = softplus(-f) (Goodfellow et al.
    2014, Sec. 3: it gives strong gradients early, when the discriminator rejects every fake)."""
    fake = tf.reshape(tf.cast(fake_logits, tf.float32), [tf.shape(fake_logits)[0], -1])
    return tf.reduce_mean(tf.nn.softplus(-fake), axis=1)
