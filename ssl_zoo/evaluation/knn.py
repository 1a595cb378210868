"""Weighted k-nearest-neighbour classifier on L2-normalised features (Wu et al. 2018, the
protocol most SSL papers report): cosine similarity, the k most similar training examples vote
with weight exp(sim / T), T = 0.07, k = 200."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk: int = 1000,
) -> float:
    bank = tf.math.l2_normalize(tf.constant(train_x, tf.float32), axis=1)
    bank_labels = tf.constant(train_y, tf.int32)
    k = min(k, len(train_x))
    correct = 0
    for start in range(0, len(test_x), chunk):
        q = tf.math.l2_normalize(tf.constant(test_x[start : start + chunk], tf.float32), axis=1)
        sim = tf.matmul(q, bank, transpose_b=True)
        top_sim, top_idx = tf.math.top_k(sim, k=k)
        votes = tf.one_hot(tf.gather(bank_labels, top_idx), num_classes) * tf.exp(top_sim / temperature)[..., None]
        pred = tf.argmax(tf.reduce_sum(votes, axis=1), axis=-1, output_type=tf.int32)
        correct += int(tf.reduce_sum(tf.cast(pred == test_y[start : start + chunk], tf.int32)))
    return correct / len(test_x)
