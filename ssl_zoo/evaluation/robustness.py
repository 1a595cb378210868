"""Adversarial robustness of a fine-tuned classifier: accuracy under FGSM (Goodfellow, Shlens &
Szegedy 2015) and PGD (Madry et al. 2018) attacks in an L-infinity ball of radius epsilon, on
images in the zoo's pixel scale [0, 255] (epsilon 8 = the usual 8/255).

Used by `ssl-zoo label-efficiency --robustness-eps ...` to compare the classifiers fine-tuned from a
pretrained backbone with the ones trained from random initialisation (seed `003`'s question: is
self-supervised pretraining any less fragile?). The attacks differentiate through the classifier
with a TensorFlow gradient tape, as evaluation does everywhere in the zoo.

PGD: a random start drawn uniformly in the ball (seeded), `steps` signed-gradient steps of
`step_size` (default 2.5 epsilon / steps, Madry et al.'s choice), each projected back onto the
ball and the pixel range.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ssl_zoo.errors import ConfigError


def _loss_gradient(model, x, y):
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32),
                                                              logits=tf.cast(logits, tf.float32))
    return tape.gradient(loss, x)


def fgsm(model, images, labels, epsilon: float):
    """x + epsilon sign(grad_x loss), clipped to [0, 255]."""
    x = tf.convert_to_tensor(images, tf.float32)
    return tf.clip_by_value(x + epsilon * tf.sign(_loss_gradient(model, x, labels)), 0.0, 255.0)


def pgd(model, images, labels, epsilon: float, steps: int = 10, step_size: float | None = None, seed: int = 0):
    """Projected gradient ascent on the loss inside the epsilon ball around `images`."""
    x0 = tf.convert_to_tensor(images, tf.float32)
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    start = tf.random.stateless_uniform(tf.shape(x0), [seed, 0x7D6], -epsilon, epsilon)
    x = tf.clip_by_value(x0 + start, 0.0, 255.0)
    for _ in range(steps):
        x = x + step_size * tf.sign(_loss_gradient(model, x, labels))
        x = tf.clip_by_value(tf.clip_by_value(x, x0 - epsilon, x0 + epsilon), 0.0, 255.0)
    return x


def robust_accuracy(model, dataset, epsilons=(2.0, 8.0), pgd_steps: int = 10, max_examples: int = 1000,
                    seed: int = 0) -> dict:
    """Accuracy of `model` (images in [0, 255] -> logits) on the first `max_examples` of `dataset`
    (batches of (images, labels)): clean, and under FGSM and PGD at each epsilon."""
    if any(e <= 0 for e in epsilons) or pgd_steps < 1 or max_examples < 1:
        raise ConfigError(f"robustness needs epsilons > 0, pgd_steps >= 1 and max_examples >= 1, got "
                          f"{list(epsilons)}, {pgd_steps}, {max_examples}")
    correct = {"clean": 0, **{f"fgsm_eps{e:g}": 0 for e in epsilons}, **{f"pgd{pgd_steps}_eps{e:g}": 0 for e in epsilons}}
    seen = 0

    def hits(x, y):
        return int(np.sum(np.argmax(model(x, training=False), -1) == y))

    for i, (images, labels) in enumerate(dataset):
        take = min(int(images.shape[0]), max_examples - seen)
        x, y = tf.cast(images[:take], tf.float32), np.asarray(labels[:take])
        correct["clean"] += hits(x, y)
        for e in epsilons:
            correct[f"fgsm_eps{e:g}"] += hits(fgsm(model, x, y, e), y)
            correct[f"pgd{pgd_steps}_eps{e:g}"] += hits(pgd(model, x, y, e, pgd_steps, seed=seed + i), y)
        seen += take
        if seen >= max_examples:
            break
    return {"num_examples": seen, "pixel_scale": "[0, 255]",
            "accuracy": {k: v / max(seen, 1) for k, v in correct.items()}}
