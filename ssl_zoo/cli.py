"""`ssl-zoo` command line: train, evaluate (and, as the zoo grows, export, list, load, finetune)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _add_data_dir(p):
    p.add_argument("--data-dir", default=None,
                   help="data root (holding tensorflow_datasets/ and image folders); default $SSL_ZOO_DATA_DIR")


def _setup_logging(verbose: bool = False) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("absl").setLevel(logging.WARNING)


def cmd_train(args) -> int:
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.methods import build_method
    from ssl_zoo.train.loop import Trainer
    from ssl_zoo.train.recipe import apply_overrides, load_recipe
    from ssl_zoo.train.strategy import build_strategy

    recipe = load_recipe(args.recipe)
    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.steps_per_epoch is not None:
        overrides.append(f"train.steps_per_epoch={args.steps_per_epoch}")
    if args.global_batch is not None:
        overrides.append(f"train.global_batch={args.global_batch}")
    recipe = apply_overrides(recipe, overrides)
    strategy = build_strategy(args.strategy, devices=args.devices.split(",") if args.devices else None,
                              tpu=args.tpu, logical_cpus=args.logical_cpus)
    method_cfg = dict(recipe.method)
    method = build_method(method_cfg.pop("name"), backbone=recipe.backbone, **method_cfg)
    source = open_source(recipe.data.source, args.data_dir)
    trainer = Trainer(method, recipe, source, strategy, args.out)
    result = trainer.fit()
    print(json.dumps(result["history"][-1] if result["history"] else {}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from ssl_zoo.evaluation.run import evaluate_model

    report = evaluate_model(
        args.model, data_dir=args.data_dir, source=args.dataset, stages=args.stages.split(","),
        knn_k=args.knn_k, out=args.out, seed=args.seed, max_train_examples=args.max_train_examples,
        image_size=args.image_size, probe_epochs=args.probe_epochs,
    )
    print(json.dumps(report["summary"], indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-zoo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a method from a recipe")
    p.add_argument("recipe", help="recipe TOML file (see training/)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, final model; resumed if it exists")
    _add_data_dir(p)
    p.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker", "tpu"])
    p.add_argument("--devices", default=None, help="comma-separated devices for --strategy mirrored")
    p.add_argument("--logical-cpus", type=int, default=0, help="split the CPU into N logical devices (testing)")
    p.add_argument("--tpu", default="", help="TPU name or address for --strategy tpu")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--global-batch", type=int, default=None)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="linear probe per stage and kNN, next to the random-init floor")
    p.add_argument("model", help="a .keras backbone or pretext model, a preset folder, or a zoo name")
    _add_data_dir(p)
    p.add_argument("--dataset", default="tfds:cifar10")
    p.add_argument("--stages", default="stem,stage1,stage2,stage3,stage4,pooled")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the report JSON here")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from ssl_zoo.data.sources import DataError

    try:
        return args.func(args)
    except DataError as e:
        logging.getLogger("ssl_zoo").error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
