"""Linear probe: a softmax classifier trained on frozen features with plain `Model.fit`.

Features are standardised with the training split's statistics (so stages with very different
scales, and random-init networks, get a fair optimiser), then one Dense layer is trained with
AdamW for a fixed number of epochs. The test split is used once, at the end: no early stopping or
model selection on it.

Features streamed to disk (`np.memmap`, `extract(..., to_dir=...)`) are never loaded whole: their
statistics are summed over row chunks, the standardisation is the probe's first layer, and the
batches are read from the file (a fresh permutation each epoch). The classifier, optimiser and
schedule are the same; only the order of the training batches differs from the in-memory path.
"""

from __future__ import annotations

import numpy as np
import keras

CHUNK_ROWS = 4096  # rows per read when summing a memmap's statistics


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

    on_disk = isinstance(train_x, np.memmap)
    if on_disk:
        mean, std = chunked_mean_std(train_x)
        layers = [keras.layers.Normalization(mean=mean[0], variance=np.square(std[0] + 1e-6))]
    else:
        mean = train_x.mean(0, keepdims=True)
        std = train_x.std(0, keepdims=True) + 1e-6
        train_x = (train_x - mean) / std
        test_x = (test_x - mean) / std
        layers = []
    keras.utils.set_random_seed(seed)
    probe = keras.Sequential(
        [keras.Input((train_x.shape[1],)), *layers, keras.layers.Dense(num_classes)], name="linear_probe"
    )
    steps = epochs * int(np.ceil(len(train_x) / batch_size))
    probe.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps), weight_decay=weight_decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if on_disk:
        history = probe.fit(RowBatches(train_x, train_y, batch_size, shuffle_seed=seed), epochs=epochs, verbose=0,
                            callbacks=[keras_progress(label)])
        _, test_acc = probe.evaluate(RowBatches(test_x, test_y, 1024), verbose=0)
    else:
        history = probe.fit(train_x, train_y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
                            callbacks=[keras_progress(label)])
        _, test_acc = probe.evaluate(test_x, test_y, batch_size=1024, verbose=0)
    return {
        "train_accuracy": float(history.history["accuracy"][-1]),
        "test_accuracy": float(test_acc),
        "dims": int(train_x.shape[1]),
    }


def chunked_mean_std(x: np.ndarray, chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) standard deviation of `x`, read `chunk` rows at a time
    (float64 sums: a memmap of any length is never loaded whole)."""
    total = np.zeros(x.shape[1], np.float64)
    squares = np.zeros(x.shape[1], np.float64)
    for start in range(0, len(x), chunk):
        rows = np.asarray(x[start:start + chunk], np.float64)
        total += rows.sum(0)
        squares += np.square(rows).sum(0)
    mean = total / len(x)
    var = np.maximum(squares / len(x) - np.square(mean), 0.0)
    return mean.astype(np.float32)[None], np.sqrt(var).astype(np.float32)[None]


class RowBatches(keras.utils.PyDataset):
    """Batches of rows of an array too large for memory (a memmap), read in file order within a
    batch; with `shuffle_seed`, a new permutation of the rows every epoch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None):
        super().__init__()
        self.x, self.y, self.batch_size = x, np.asarray(y), int(batch_size)
        self.rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        self.order = np.arange(len(x))
        self.on_epoch_end()

    def __len__(self) -> int:
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, i: int):
        rows = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
        return np.asarray(self.x[rows], np.float32), self.y[rows]

    def on_epoch_end(self) -> None:
        if self.rng is not None:
            self.order = self.rng.permutation(len(self.x))
