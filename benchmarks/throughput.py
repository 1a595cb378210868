"""Throughput and memory benchmark: RotNet through the zoo's training loop vs a plain supervised
Keras `fit` of the same backbone on the same images and batch, plus the input pipeline alone.

Each measurement runs in its own subprocess so that its peak memory (ru_maxrss) is its own.
Counts are images through the backbone per second: RotNet's step of B source images feeds 4B
rotated images, so the supervised baseline uses batches of 4B images.

    python benchmarks/throughput.py --data-dir DATA --out benchmarks/results/throughput_cifar10.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

BACKBONE = {"arch": "resnet", "depth": 18, "width": 0.25, "stem": "cifar", "image_size": 32,
            "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def run_part(part: str, data_dir: str, batch: int, steps: int, warmup: int) -> dict:
    import ssl_zoo  # noqa: F401  (oneDNN setting before TF)
    import keras
    import tensorflow as tf

    from ssl_zoo.data.pipeline import build_dataset
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.methods import build_method
    from ssl_zoo.train.loop import Trainer
    from ssl_zoo.train.recipe import recipe_from_dict

    source = open_source("tfds:cifar10", data_dir)
    method = build_method("rotnet", backbone=BACKBONE, head_hidden_units=(256,), image_size=32)
    if part == "pipeline":
        ds = build_dataset(source, "train", batch_size=batch, image_size=32, augment="crop_flip",
                           batch_transform=method.batch_transform, training=True, repeat=True)
        it = iter(ds)
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(steps):
            inputs, _ = next(it)
        seconds = time.perf_counter() - t0
        return {"backbone_images_per_second": steps * int(inputs.shape[0]) / seconds}
    if part == "rotnet":
        recipe = recipe_from_dict({"method": {"name": "rotnet"}, "backbone": BACKBONE,
                                   "train": {"global_batch": batch, "epochs": 1}})
        trainer = Trainer(method, recipe, source, tf.distribute.get_strategy(), "/tmp/ssl_zoo_bench_unused")
        ds = trainer._train_dataset(epoch=0, skip=0)
        it = iter(ds)
        for _ in range(warmup):
            trainer.train_step(next(it))
        t0 = time.perf_counter()
        for _ in range(steps):
            metrics = trainer.train_step(next(it))
        float(metrics["loss_sum"])
        seconds = time.perf_counter() - t0
        return {"backbone_images_per_second": steps * batch * 4 / seconds, "peak_rss_gib": _peak_rss_gib()}
    if part == "supervised":
        backbone = method.build_backbone()
        model = keras.Sequential([backbone, keras.layers.Dense(10)])
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        ds = build_dataset(source, "train", batch_size=4 * batch, image_size=32, augment="crop_flip",
                           training=True, repeat=True)
        model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
        t0 = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        seconds = time.perf_counter() - t0
        return {"backbone_images_per_second": steps * 4 * batch / seconds, "peak_rss_gib": _peak_rss_gib()}
    raise ValueError(part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("SSL_ZOO_DATA_DIR"))
    parser.add_argument("--batch", type=int, default=128, help="source images per step")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, args.data_dir, args.batch, args.steps, args.warmup)))
        return
    results = {}
    for part in ("pipeline", "supervised", "rotnet"):
        out = subprocess.run(
            [sys.executable, __file__, "--part", part, "--data-dir", args.data_dir, "--batch", str(args.batch),
             "--steps", str(args.steps), "--warmup", str(args.warmup)],
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if out.returncode:
            raise SystemExit(f"{part} failed:\n{out.stderr[-3000:]}")
        results[part] = json.loads(out.stdout.strip().splitlines()[-1])
        print(part, results[part], flush=True)
    report = {
        "command": "python benchmarks/throughput.py --data-dir DATA "
                   f"--batch {args.batch} --steps {args.steps} --warmup {args.warmup}",
        "backbone": BACKBONE, "source_images_per_step": args.batch,
        "backbone_images_per_step": 4 * args.batch,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        **results,
        "rotnet_over_supervised": results["rotnet"]["backbone_images_per_second"]
        / results["supervised"]["backbone_images_per_second"],
        "pipeline_over_rotnet": results["pipeline"]["backbone_images_per_second"]
        / results["rotnet"]["backbone_images_per_second"],
    }
    print(json.dumps(report, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
