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


def sparse_cross_entropy(labels, logits):
    """Per-example softmax cross-entropy from integer labels (float32 for numerical safety)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )
