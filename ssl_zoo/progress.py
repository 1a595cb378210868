"""Progress of long commands as log lines: at most one every few seconds, with a rate and an ETA.

The same lines on a terminal and in a log file (a `\\r` progress bar garbles log files, and the
commands' other output is log lines too). `Progress` is plain Python; `keras_progress` adapts it to
a Keras `fit` as a callback. Lines go to the `ssl_zoo.progress` logger at INFO, which `ssl-zoo`
prints; a library caller sees them once it configures logging.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("ssl_zoo.progress")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """`update(done)` logs `label: done/total unit (pct), rate, ETA` when `every` seconds have passed
    since the last line; `finish()` logs the total time. The rate is measured from the first update,
    so a first step that traces a graph does not distort the ETA for long."""

    def __init__(self, label: str, total: int | None = None, unit: str = "steps", every: float = 5.0):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.start = time.monotonic()
        self._first: tuple[float, int] | None = None
        self._last_line = self.start

    def line(self, done: int, extra: str = "") -> str:
        now = time.monotonic()
        parts = [f"{done}/{self.total} {self.unit} ({done / self.total:.0%})" if self.total else f"{done} {self.unit}"]
        if self._first and done > self._first[1] and now > self._first[0]:
            rate = (done - self._first[1]) / (now - self._first[0])
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total:
                parts.append(f"ETA {_duration(max(self.total - done, 0) / rate)}")
        parts.append(f"elapsed {_duration(now - self.start)}")
        return f"{self.label}: " + ", ".join(parts) + (f", {extra}" if extra else "")

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        if force or now - self._last_line >= self.every:
            self._last_line = now
            log.info("%s", self.line(done, extra))

    def finish(self, extra: str = "") -> None:
        log.info("%s: done in %s%s", self.label, _duration(time.monotonic() - self.start),
                 f", {extra}" if extra else "")


def keras_progress(label: str, every: float = 5.0):
    """A Keras callback logging `fit`'s progress through `Progress`: steps over all epochs (when the
    data's length is known), the current epoch and its loss."""
    import keras

    class _Callback(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.epochs = self.params.get("epochs") or 1
            self.steps = self.params.get("steps")
            self.epoch = 0
            self.progress = Progress(label, self.epochs * self.steps if self.steps else None, every=every)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def _extra(self, logs) -> str:
            loss = (logs or {}).get("loss")
            return f"epoch {self.epoch + 1}/{self.epochs}" + (f", loss {float(loss):.4f}" if loss is not None else "")

        def on_train_batch_end(self, batch, logs=None):
            self.progress.update(self.epoch * (self.steps or 0) + batch + 1, self._extra(logs))

        def on_train_end(self, logs=None):
            self.progress.finish(self._extra(logs))

    return _Callback()
