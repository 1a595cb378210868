"""Where a method's training step spends its time, next to the supervised `fit` step it is compared
with in `throughput.py`: each step is timed cumulatively, part after part, on the same batches in one
process, so that each part's cost is the difference between two consecutive rows.

For a method on the default step (`PretextMethod.train_step`: forward, loss, gradients, update,
metrics) the rows are

    forward          the pretext model (backbone + head) in training mode
    + loss           the method's per-example loss
    + gradients      the backward pass
    + update         the optimizer's update (the step without its metrics)
    step             the loop's whole step (+ metrics, the replica reduction, the step counter)

and for the supervised baseline (the backbone + a linear classifier on as many images of the same
side): forward, + loss, + gradients, + update. Methods with their own step (adversarial,
momentum encoders) are refused: their parts are not these.

The batches are made before any timing (the input pipeline's cost is `throughput.py`'s "pipeline"
row), and every row is timed in several rounds, the rows of both sides interleaved within each
round; the median round is reported with the spread of the others, so that a slow moment of a
shared machine does not land on one side only.

    python benchmarks/step_profile.py --data-dir DATA --methods colorization,split_brain
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import RECIPES, _backbone_images, _supervised_model, emit_report  # noqa: E402


def _seconds_per_call(fn, batches, warmup: int) -> float:
    """Seconds per call of the tf.function `fn` over `batches` after `warmup` untimed calls."""
    for b in batches[:warmup]:
        out = fn(b)
    _wait(out)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        out = fn(b)
    _wait(out)
    return (time.perf_counter() - t0) / (len(batches) - warmup)


def _wait(out) -> None:
    import tensorflow as tf

    for t in tf.nest.flatten(out):
        t.numpy()


def timed_rows(rows: dict, rounds: int, warmup: int) -> dict:
    """{name: {"ms": median over rounds, "min_ms", "max_ms"}} of `rows` = {name: (fn, batches)},
    every row timed once per round, in order, `rounds` times."""
    import statistics

    times = {name: [] for name in rows}
    for _ in range(rounds):
        for name, (fn, batches) in rows.items():
            times[name].append(1000 * _seconds_per_call(fn, batches, warmup))
    return {name: {"ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t)} for name, t in times.items()}


def profile_method(method_name: str, data_dir: str, steps: int, warmup: int, rounds: int) -> dict:
    import ssl_zoo  # noqa: F401  (oneDNN setting before TF)
    import tensorflow as tf

    from ssl_zoo import losses
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.methods import PretextMethod, method_from_recipe
    from ssl_zoo.train.loop import Trainer
    from ssl_zoo.train.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / RECIPES[method_name])
    source = open_source(recipe.data.source, data_dir, cache=recipe.data.cache)
    method = method_from_recipe(recipe)
    if type(method).train_step is not PretextMethod.train_step:
        raise SystemExit(f"{method_name} has its own train_step: its parts are not the default step's")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(method, recipe, source, tf.distribute.get_strategy(), scratch)
        batches = []
        for batch in trainer._train_dataset(epoch=0, skip=0):
            batches.append(batch)
            if len(batches) == warmup + steps:
                break
        per_step, side = _backbone_images(batches[0]["inputs"])
        model, optimizer = trainer.model, trainer.context.optimizer

        @tf.function
        def forward(b):
            return model(b["inputs"], training=True)

        @tf.function
        def forward_loss(b):
            return method.loss(b["targets"], model(b["inputs"], training=True))

        def _gradients(b):
            with tf.GradientTape() as tape:
                per_example = method.loss(b["targets"], model(b["inputs"], training=True))
                loss = losses.replica_loss(per_example, model)
            return tape.gradient(loss, model.trainable_variables)

        gradients = tf.function(_gradients)

        @tf.function
        def update(b):
            grads = _gradients(b)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return grads[0]

        method_rows = {name: (fn, batches) for name, fn in (
            ("forward", forward), ("+ loss", forward_loss), ("+ gradients", gradients), ("+ update", update),
            ("step", trainer.train_step))}

        supervised = _supervised_model(method, source, side)
        images = [(tf.random.uniform((per_step, side, side, 3), 0, 255, seed=i), tf.zeros((per_step,), tf.int32))
                  for i in range(warmup + steps)]

        @tf.function
        def s_forward(b):
            return supervised(b[0], training=True)

        @tf.function
        def s_forward_loss(b):
            return supervised.compute_loss(x=b[0], y=b[1], y_pred=supervised(b[0], training=True))

        def _s_gradients(b):
            with tf.GradientTape() as tape:
                loss = supervised.compute_loss(x=b[0], y=b[1], y_pred=supervised(b[0], training=True))
            return tape.gradient(loss, supervised.trainable_variables)

        s_gradients = tf.function(_s_gradients)

        @tf.function
        def s_update(b):
            grads = _s_gradients(b)
            supervised.optimizer.apply(grads, supervised.trainable_variables)
            return grads[0]

        supervised_rows = {f"supervised {name}": (fn, images) for name, fn in (
            ("forward", s_forward), ("+ loss", s_forward_loss), ("+ gradients", s_gradients), ("+ update", s_update))}
        timed = timed_rows({**method_rows, **supervised_rows}, rounds, warmup)
    step, supervised_step = timed["step"]["ms"], timed["supervised + update"]["ms"]
    return {"recipe": RECIPES[method_name], "backbone_images_per_step": per_step, "view_side": side,
            "rows": timed, "step_over_supervised_step": step / supervised_step,
            "method_over_supervised_without_pipeline": supervised_step / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("SSL_ZOO_DATA_DIR"))
    parser.add_argument("--methods", required=True, help=f"comma-separated, from {sorted(RECIPES)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("give --data-dir or set SSL_ZOO_DATA_DIR")
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(RECIPES))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(RECIPES)}")
    report = {"command": f"python benchmarks/step_profile.py --data-dir DATA --methods {args.methods} "
                         f"--steps {args.steps} --warmup {args.warmup} --rounds {args.rounds}",
              "cpus": os.cpu_count(),
              "methods": {m: profile_method(m, args.data_dir, args.steps, args.warmup, args.rounds) for m in methods}}
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
