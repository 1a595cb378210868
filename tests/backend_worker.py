"""Runs under one Keras backend in a subprocess of tests/test_backends.py (KERAS_BACKEND is set before
anything imports Keras): loads every source it is given, runs one batch through it, trains one `fit`
step, and writes the outputs to an npz file and a JSON summary to stdout.

    python backend_worker.py SPEC.json

SPEC: {"backend", "images" (.npy), "labels" (.npy), "out" (.npz), "sources": [{"label", "route",
"path"}], "fit": source for the fit step, "head": (.npy) initial Dense kernel of the fit step}.
Routes: "ssl_zoo" = `ssl_zoo.load_backbone(path, stages=...)` (zoo name, preset, .keras);
"keras" = plain `keras.saving.load_model(path)` (a .keras file or a preset folder), no ssl_zoo.
"""

from __future__ import annotations

import json
import sys

import numpy as np

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled")


def staged(model):
    import keras

    return keras.Model(model.input, {s: model.get_layer(s).output for s in STAGES})


def load(route: str, path: str):
    import keras

    if route == "ssl_zoo":
        import ssl_zoo

        return ssl_zoo.load_backbone(path, stages=list(STAGES))
    if route == "keras":
        return staged(keras.saving.load_model(path, compile=False))
    raise ValueError(route)


def fit_step(route: str, path: str, x, y, head) -> dict:
    """One SGD step of backbone + Dense head (head kernel given, so every backend starts alike)."""
    import keras

    if route == "ssl_zoo":
        import ssl_zoo

        backbone = ssl_zoo.load_backbone(path)
    else:
        backbone = keras.saving.load_model(path, compile=False)
    inputs = keras.Input(x.shape[1:])
    dense = keras.layers.Dense(head.shape[1], name="head")
    model = keras.Model(inputs, dense(backbone(inputs)))
    dense.kernel.assign(head)
    bn = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    conv = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D))
    numpy = keras.ops.convert_to_numpy
    before = {"moving_mean": numpy(bn.moving_mean), "conv": numpy(conv.kernel)}
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return {
        "loss": float(history.history["loss"][0]),
        "moving_mean_moved": float(np.abs(numpy(bn.moving_mean) - before["moving_mean"]).max()),
        "conv_moved": float(np.abs(numpy(conv.kernel) - before["conv"]).max()),
        "head_after": numpy(dense.kernel),
    }


def main() -> int:
    spec = json.loads(open(sys.argv[1]).read())
    import keras

    assert keras.backend.backend() == spec["backend"], (keras.backend.backend(), spec["backend"])
    x = np.load(spec["images"]).astype("float32")
    y = np.load(spec["labels"])
    arrays, summary = {}, {"backend": keras.backend.backend(), "keras": keras.__version__, "loaded": []}
    for source in spec["sources"]:
        model = load(source["route"], source["path"])
        synced = [layer.name for layer in model.layers if getattr(layer, "synchronized", False)]
        assert not synced, (source, synced)
        out = model(x, training=False)
        for stage in STAGES:
            arrays[f"{source['label']}/{stage}"] = keras.ops.convert_to_numpy(out[stage])
        summary["loaded"].append(source["label"])
    fit = spec["fit"]
    step = fit_step(fit["route"], fit["path"], x, y, np.load(spec["head"]))
    arrays["fit/head_after"] = step.pop("head_after")
    summary["fit"] = step
    np.savez(spec["out"], **arrays)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
