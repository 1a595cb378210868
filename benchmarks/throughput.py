"""Throughput and memory benchmark: every zoo method's training step (through the shared training
loop, on its recipe's data, batch and view size) against a plain supervised Keras `fit` of the
same backbone on the same number of images of the same size, plus each input pipeline alone.

The question it answers: does the pretext input pipeline (rotations, tile/patch cutting, exemplar
transformations) starve the model? Counts are *backbone images* per second: a RotNet step of B
source images feeds 4B rotated images, a jigsaw step 9B tiles, a relative-patch step 2B patches,
a SimCLR step 2B views, a PIRL step B views and 9B tiles (counted as
the same pixels at the view's side), so the supervised baseline uses batches of that many images at that size
(random crops of the same source images, held in memory so that the baseline is bound by the model alone). The
pipeline rows say whether either side is input-bound.

Methods with hooks (DeepCluster's clustering, SeLa's label refreshes) also get their hooks timed
on the whole training split ("hooks"), and a rate with the hooks' time per epoch included.
Adversarial methods (those with a `generator_step`: the context encoder, super-resolution,
BiGAN) also get their generator's step alone timed ("generator"), so that the discriminator's
share of a step is shown separately.

Images per second alone compare unlike amounts of work: a colorization step runs a dense head the
supervised baseline does not have, a MoCo or BYOL step runs a forward-only pass. So the arithmetic of one
step of each side is also counted ("compute": floating-point operations per backbone image, from the traced
step's graph by TensorFlow's profiler, forward and backward), and their ratio turns the measured speed
into the rate at which each side does its arithmetic ("flop_rate_over_supervised"): about 1 when the
method's step is as efficient as `fit`, whatever extra networks it trains.

Each measurement runs in its own subprocess so that its peak memory (VmHWM) is its own. This machine's
speed drifts by 15-20 % between minutes, so `--repeats R` times the method and the supervised baseline
alternately R times and keeps the median round's ratio (every round's ratio is in the report).

    python benchmarks/throughput.py --data-dir DATA --out benchmarks/results/throughput.json
    python benchmarks/throughput.py --data-dir DATA --methods rotnet --steps 40   # one method
    python benchmarks/throughput.py --data-dir DATA --methods colorization --repeats 3
    python benchmarks/throughput.py --data-dir DATA --methods super_resolution --set method.decoder_channels=8
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "rotnet": "training/rotnet_resnet18w025_cifar10.toml",
    "jigsaw": "training/jigsaw_resnet18w025_imagenette96.toml",
    "relative_patch": "training/relative_patch_resnet18w025_imagenette96.toml",
    "exemplar": "training/exemplar_resnet18w025_imagenette96.toml",
    "simclr": "training/simclr_resnet18w025_cifar10.toml",
    "byol": "training/byol_resnet18w025_cifar10.toml",
    "moco": "training/moco_resnet18w025_cifar10.toml",
    "pirl": "training/pirl_resnet18w025_cifar10.toml",
    "deepcluster": "training/deepcluster_resnet18w025_cifar10.toml",
    "sela": "training/sela_resnet18w025_cifar10.toml",
    "colorization": "training/colorization_resnet18w025_cifar10.toml",
    "split_brain": "training/split_brain_resnet18w025_cifar10.toml",
    "context_encoder": "training/context_encoder_resnet18w025_cifar10.toml",
    "super_resolution": "training/super_resolution_resnet18w025_cifar10.toml",
    "bigan": "training/bigan_resnet18w025_cifar10.toml",
}


def _peak_rss_gib() -> float:
    # VmHWM is this process's own peak; ru_maxrss would carry the parent's across the exec (Linux).
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return int(line.split()[1]) / 2**20  # kB


def _backbone_images(inputs) -> tuple[int, int]:
    """(images the backbone sees in this batch, their side): every input tensor of rank >= 4 is a
    stack of [..., H, W, C] images, whatever the method's leading axes (views, tiles) are. Inputs of
    several sides (PIRL: 32 px views and 14 px tiles) count as the same number of pixels at the
    largest side, the images a convolutional backbone does the same work on (rounded up)."""
    import math

    import numpy as np
    import tensorflow as tf

    stacks = [(int(np.prod(t.shape[:-3])), int(t.shape[-3])) for t in tf.nest.flatten(inputs) if t.shape.rank >= 4]
    side = max(s for _, s in stacks)
    return math.ceil(sum(n * s * s for n, s in stacks) / side**2), side


def step_flops(concrete_function) -> dict:
    """{"flops": floating-point operations of one call of a traced step, "uncounted_calls": ops
    whose bodies the count does not enter}. TensorFlow's profiler counts from the graph's static
    shapes every op with a registered cost (convolutions and matrix products forward and backward,
    element-wise ops); the bodies of nested function calls and loops are not counted, so their
    number is reported beside the count."""
    import tensorflow as tf

    profiler = tf.compat.v1.profiler
    options = profiler.ProfileOptionBuilder(profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    graph = concrete_function.graph
    nested = {"PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile", "If", "StatelessIf"}
    return {"flops": int(profiler.profile(graph=graph, options=options).total_float_ops),
            "uncounted_calls": sum(op.type in nested for op in graph.get_operations())}


def _supervised_model(method, source, side: int):
    """The baseline: the method's backbone + a linear classifier, compiled as `fit` trains it."""
    import keras

    classes = source.num_classes() or 10
    model = keras.Sequential([keras.Input((side, side, 3)), method.build_backbone(), keras.layers.Dense(classes)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)  # "auto" picks XLA on a Linux CPU, several times slower here
    return model


def _supervised_step_flops(model, images: int, side: int) -> dict:
    """`step_flops` of the step `fit` runs on one batch (forward, loss, gradients, SGD update)."""
    import tensorflow as tf

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)
        return loss

    x, y = tf.zeros((images, side, side, 3)), tf.zeros((images,), tf.int32)
    return step_flops(step.get_concrete_function(x, y))


def method_recipe(method_name: str, overrides: list[str] | None = None):
    """The method's released recipe (`RECIPES`), with `--set section.key=value` overrides (the
    trainer's own parsing: a variant is benchmarked as `ssl-zoo train --set` would train it)."""
    from ssl_zoo.train.recipe import apply_overrides, load_recipe

    recipe = load_recipe(ROOT / RECIPES[method_name])
    return apply_overrides(recipe, list(overrides)) if overrides else recipe


def run_part(part: str, method_name: str, data_dir: str, steps: int, warmup: int, images: int, side: int,
             overrides: list[str] | None = None) -> dict:
    import ssl_zoo  # noqa: F401  (oneDNN setting before TF)
    import keras
    import numpy as np
    import tensorflow as tf

    from ssl_zoo.data.pipeline import build_dataset
    from ssl_zoo.data.sources import ArraySource, open_source
    from ssl_zoo.methods import PretextMethod, method_from_recipe
    from ssl_zoo.train.loop import Trainer

    recipe = method_recipe(method_name, overrides)
    source = open_source(recipe.data.source, data_dir, cache=recipe.data.cache)
    method = method_from_recipe(recipe)

    if part in ("supervised", "supervised_pipeline"):
        # The denominator is the model's own speed on `images` images of `side` px per step, so the
        # baseline must not be input-bound itself: decoding a whole JPEG per backbone image (where
        # jigsaw decodes one per nine tiles) would starve it and flatter the method. It therefore
        # reads crops of the same source images held in memory (two steps' worth, crop-flipped).
        decoded = build_dataset(source, recipe.data.train_split, batch_size=images, image_size=side,
                                augment="center", training=True, repeat=True)
        pool = list(itertools.islice(decoded, 2))  # one pass: images and labels of the same batches
        in_memory = ArraySource(np.concatenate([x for x, _ in pool]).astype(np.uint8),
                                np.concatenate([y for _, y in pool]), name="crops")
        ds = build_dataset(in_memory, "train", batch_size=images, image_size=side, augment="crop_flip",
                           training=True, repeat=True)
        if part == "supervised_pipeline":
            it = iter(ds)
            for _ in range(warmup):
                next(it)
            t0 = time.perf_counter()
            for _ in range(steps):
                next(it)
            return {"backbone_images_per_second": steps * images / (time.perf_counter() - t0)}
        model = _supervised_model(method, source, side)
        # One `fit`, timed from the end of the last warm-up step to the end of the last step, so
        # that neither tracing nor fit's own start-up counts.
        ends = []
        clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
        model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock])
        seconds = ends[-1] - ends[warmup - 1]
        return {"backbone_images_per_second": steps * images / seconds, "peak_rss_gib": _peak_rss_gib()}

    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(method, recipe, source, tf.distribute.get_strategy(), scratch)
        # Epoch after epoch, as training reads it (an epoch of Imagenette is only ~70 steps).
        batches = itertools.chain.from_iterable(trainer._train_dataset(epoch=e, skip=0) for e in itertools.count())
        first = next(batches)
        per_step, view_side = _backbone_images(first["inputs"])
        if part == "pipeline":
            for _ in range(warmup):
                next(batches)
            t0 = time.perf_counter()
            for _ in range(steps):
                next(batches)
            seconds = time.perf_counter() - t0
            return {"backbone_images_per_second": steps * per_step / seconds,
                    "backbone_images_per_step": per_step, "view_side": view_side}
        if part == "hooks":
            # What an epoch spends outside its steps: DeepCluster's clustering before the epoch,
            # SeLa's label refreshes (one at the epoch's start, the others within it); each hook
            # runs once on the whole training split and is counted as often as an epoch runs it.
            spe = trainer.steps_per_epoch
            cls = type(method)
            t0 = time.perf_counter()
            trainer._epoch_hook(1)
            epoch_hook = time.perf_counter() - t0 if cls.on_epoch_begin is not PretextMethod.on_epoch_begin else 0.0
            refreshes = len(method.refresh_offsets(spe))
            refresh = 0.0
            if refreshes:
                t0 = time.perf_counter()
                trainer._refresh_hook(1)
                refresh = time.perf_counter() - t0
            return {"steps_per_epoch": spe, "epoch_hook_seconds": epoch_hook, "refresh_seconds": refresh,
                    "refreshes_per_epoch": refreshes, "hook_seconds_per_epoch": epoch_hook + refreshes * refresh,
                    "peak_rss_gib": _peak_rss_gib()}
        if part == "generator":
            # The method's step without its discriminator's: the generator's forward (which runs
            # the discriminator once, frozen, for its adversarial term) and update.
            step = tf.function(lambda b: method.generator_step(trainer.context, b))
            step(first)
            for _ in range(warmup):
                step(next(batches))
            t0 = time.perf_counter()
            for _ in range(steps):
                metrics, _ = step(next(batches))
            float(metrics["loss_sum"])
            return {"backbone_images_per_second": steps * per_step / (time.perf_counter() - t0)}
        if part == "compute":
            # Arithmetic per backbone image of the method's step and of the baseline's on as many
            # images of the same side (static: the same on any machine, unlike the timings).
            trainer.train_step(first)
            method_step = step_flops(trainer._train_fn.get_concrete_function(first))
            supervised_step = _supervised_step_flops(_supervised_model(method, source, view_side), per_step, view_side)
            out = {"method_flops_per_backbone_image": method_step["flops"] / per_step,
                   "supervised_flops_per_image": supervised_step["flops"] / per_step,
                   "uncounted_calls": {"method": method_step["uncounted_calls"],
                                       "supervised": supervised_step["uncounted_calls"]}}
            if hasattr(method, "generator_step"):
                generator = tf.function(lambda b: method.generator_step(trainer.context, b))
                generator(first)
                out["generator_flops_per_backbone_image"] = step_flops(generator.get_concrete_function(first))["flops"] / per_step
            out["method_compute_over_supervised"] = (out["method_flops_per_backbone_image"]
                                                     / out["supervised_flops_per_image"])
            return out
        if part == "method":
            trainer.train_step(first)
            for _ in range(warmup):
                trainer.train_step(next(batches))
            t0 = time.perf_counter()
            for _ in range(steps):
                metrics = trainer.train_step(next(batches))
            float(metrics["loss_sum"])  # wait for the last step
            seconds = time.perf_counter() - t0
            return {"backbone_images_per_second": steps * per_step / seconds,
                    "source_images_per_second": steps * recipe.train.global_batch / seconds,
                    "peak_rss_gib": _peak_rss_gib()}
    raise ValueError(part)


def _run_subprocess(args, part: str, method: str, images: int = 0, side: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--part", part, "--methods", method, "--data-dir", args.data_dir,
         "--steps", str(args.steps), "--warmup", str(args.warmup), "--images", str(images), "--side", str(side),
         *(f"--set={item}" for item in args.set or [])],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if out.returncode:
        raise SystemExit(f"{method}/{part} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(method, part, result, flush=True)
    return result


def median_round(rounds: list[tuple[dict, dict]]) -> tuple[dict, dict, float, list[float]]:
    """(method run, supervised run, ratio) of the round whose method / supervised ratio is the
    median (the lower middle of an even number), and every round's ratio in order."""
    ratios = [m["backbone_images_per_second"] / s["backbone_images_per_second"] for m, s in rounds]
    middle = sorted(range(len(rounds)), key=ratios.__getitem__)[(len(rounds) - 1) // 2]
    return rounds[middle][0], rounds[middle][1], ratios[middle], ratios


def benchmark_method(args, method: str) -> dict:
    from ssl_zoo.methods import method_from_recipe

    recipe = method_recipe(method, args.set)
    pipeline = _run_subprocess(args, "pipeline", method)
    images, side = pipeline["backbone_images_per_step"], pipeline["view_side"]
    trained, supervised, ratio, round_ratios = median_round(
        [(_run_subprocess(args, "method", method), _run_subprocess(args, "supervised", method, images, side))
         for _ in range(args.repeats)])
    supervised_pipeline = _run_subprocess(args, "supervised_pipeline", method, images, side)
    compute = _run_subprocess(args, "compute", method)
    hooks = None
    if _has_hooks(recipe):
        hooks = _run_subprocess(args, "hooks", method)
        # An epoch: its steps at the measured step rate, plus its hooks.
        step_seconds = hooks["steps_per_epoch"] * images / trained["backbone_images_per_second"]
        hooks["method_images_per_second_with_hooks"] = (
            hooks["steps_per_epoch"] * images / (step_seconds + hooks["hook_seconds_per_epoch"]))
        hooks["method_with_hooks_over_supervised"] = (
            hooks["method_images_per_second_with_hooks"] / supervised["backbone_images_per_second"])
    adversarial = None
    if hasattr(method_from_recipe(recipe), "generator_step"):
        generator = _run_subprocess(args, "generator", method)
        step, without = 1 / trained["backbone_images_per_second"], 1 / generator["backbone_images_per_second"]
        flops = compute["method_flops_per_backbone_image"]
        adversarial = {"generator": generator, "discriminator_share_of_step": (step - without) / step,
                       "discriminator_share_of_flops": (flops - compute["generator_flops_per_backbone_image"]) / flops,
                       "generator_over_supervised": (generator["backbone_images_per_second"]
                                                     / supervised["backbone_images_per_second"])}
    return {
        "recipe": RECIPES[method],
        "data": recipe.data.source,
        "source_images_per_step": recipe.train.global_batch,
        "backbone_images_per_step": images,
        "view_side": side,
        "pipeline": pipeline,
        "method": trained,
        "supervised": supervised,
        "supervised_pipeline": supervised_pipeline,
        "method_over_supervised": ratio,
        **({"method_over_supervised_rounds": round_ratios} if len(round_ratios) > 1 else {}),
        "compute": compute,
        "flop_rate_over_supervised": ratio * compute["method_compute_over_supervised"],
        "pipeline_over_method": pipeline["backbone_images_per_second"] / trained["backbone_images_per_second"],
        **({"hooks": hooks} if hooks else {}),
        **({"adversarial": adversarial} if adversarial else {}),
    }


def _has_hooks(recipe) -> bool:
    """Whether the recipe's method runs epoch or refresh hooks (clustering, label refreshes)."""
    from ssl_zoo.methods import PretextMethod, method_from_recipe

    method = method_from_recipe(recipe)
    return type(method).on_epoch_begin is not PretextMethod.on_epoch_begin or bool(method.refresh_offsets(100))


def emit_report(report: dict, out: str | None) -> None:
    """Prints the report as JSON and, with `out`, writes it there (folders made as needed)."""
    print(json.dumps(report, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("SSL_ZOO_DATA_DIR"))
    parser.add_argument("--methods", default=",".join(RECIPES), help=f"comma-separated, from {sorted(RECIPES)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1,
                        help="time the method and the supervised baseline alternately this many times; the median "
                             "round's ratio is reported")
    parser.add_argument("--out", default=None)
    parser.add_argument("--compute-only", action="store_true",
                        help="only count each step's arithmetic (no timings: a few seconds per method)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a value of every benchmarked method's recipe, as `ssl-zoo train --set` "
                             "(repeatable): a variant's speed and arithmetic against the same baseline")
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(RECIPES))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(RECIPES)}")
    if args.data_dir is None:
        parser.error("give --data-dir or set SSL_ZOO_DATA_DIR")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if args.part:
        print(json.dumps(run_part(args.part, methods[0], args.data_dir, args.steps, args.warmup, args.images, args.side,
                                  args.set)))
        return
    sys.path.insert(0, str(ROOT))
    report = {
        "command": f"python benchmarks/throughput.py --data-dir DATA --methods {args.methods} "
                   f"--steps {args.steps} --warmup {args.warmup}"
                   + (f" --repeats {args.repeats}" if args.repeats > 1 else "")
                   + "".join(f" --set {item}" for item in args.set or []),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "methods": {method: ({"compute": _run_subprocess(args, "compute", method)} if args.compute_only
                             else benchmark_method(args, method)) for method in methods},
    }
    if args.compute_only:
        report["command"] += " --compute-only"
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
