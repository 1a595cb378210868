"""Linear probe: a softmax classifier trained on frozen features with plain `Model.fit`.

Features are standardised with the training split's statistics (so stages with very different
scales, and random-init networks, get a fair optimiser), then one Dense layer is trained with
AdamW for a fixed number of epochs. The test split is used once, at the end: no early stopping or
model selection on it.
"""

from __future__ import annotations

import numpy as np
import keras


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    epochs: int = 30,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    label: str = "linear probe",
) -> dict:
    """`label` names the probe in its progress lines (`ssl_zoo.progress`)."""
    from ssl_zoo.progress import keras_progress

    mean = train_x.mean(0, keepdims=True)
    std = train_x.std(0, keepdims=True) + 1e-6
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std
    keras.utils.set_random_seed(seed)
    probe = keras.Sequential(
        [keras.Input((train_x.shape[1],)), keras.layers.Dense(num_classes)], name="linear_probe"
    )
    steps = epochs * int(np.ceil(len(train_x) / batch_size))
    probe.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps), weight_decay=weight_decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = probe.fit(train_x, train_y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
                        callbacks=[keras_progress(label)])
    _, test_acc = probe.evaluate(test_x, test_y, batch_size=1024, verbose=0)
    return {
        "train_accuracy": float(history.history["accuracy"][-1]),
        "test_accuracy": float(test_acc),
        "dims": int(train_x.shape[1]),
    }
