"""`ssl-zoo` command line: train, evaluate, diagnose, export, list, card, pictures, leaderboard, push, finetune,
label-efficiency."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from ssl_zoo import __version__
from ssl_zoo.errors import ConfigError, SslZooError

# What TensorFlow's C++ side prints while it loads and looks for devices, on every command: the
# oneDNN and CPU-instruction banners (twice: two shared libraries), the CUDA probe of a CPU machine
# (`failed call to cuInit: ... UNKNOWN ERROR (303)`), absl's note that logging is not initialised.
# TF_CPP_MIN_LOG_LEVEL does not reach these (they are logged before absl is initialised), so the
# commands capture file descriptor 2 while TensorFlow loads and drop these lines (`-v` keeps them);
# anything else printed meanwhile is passed on.
_TF_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|cudart_stub|cuda_executor|"
    r"cuInit|cuda drivers|cpu_feature_guard|To enable the following instructions|rebuild TensorFlow with|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|TF-TRT Warning|"
    r"gpu_device.cc.*Cannot dlopen|Skipping registering GPU devices")


def _add_data_dir(p):
    p.add_argument("--data-dir", default=None,
                   help="data root (holding tensorflow_datasets/ and image folders); default $SSL_ZOO_DATA_DIR")


class _StderrFormatter(logging.Formatter):
    """Warnings and errors on stderr as `ssl-zoo: error: SENTENCE` (the way argparse reports)."""

    def format(self, record):
        return f"ssl-zoo: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool = False) -> None:
    """Progress and results on stdout, warnings and errors on stderr. TensorFlow's C++ logging is
    cut to fatal errors unless -v (it must be set before TensorFlow is first imported: nothing in
    the command-line path imports it before this)."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(_StderrFormatter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[out, err])
    logging.getLogger("absl").setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _import_tensorflow(args) -> None:
    """Imports TensorFlow and finds its devices with file descriptor 2 captured, dropping the
    start-up lines of `_TF_NOISE` (all of it passes with -v). Called by each command that needs
    TensorFlow, after its arguments have been checked."""
    if getattr(args, "verbose", False) or "tensorflow" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe (cuInit) runs here, not at the first op
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not _TF_NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
        tf.get_logger().setLevel(logging.ERROR)


def _data_dir_problem(data_dir) -> str | None:
    """`--data-dir` (or $SSL_ZOO_DATA_DIR) naming a local directory that does not exist."""
    value, origin = (data_dir, "--data-dir") if data_dir else (os.environ.get("SSL_ZOO_DATA_DIR"), "$SSL_ZOO_DATA_DIR")
    if not value or "://" in str(value):  # unset, or a URL (gs://...) that TensorFlow's filesystems read
        return None
    path = Path(value).expanduser()
    if not path.exists():
        return f"data directory {value} ({origin}) does not exist"
    if not path.is_dir():
        return f"data directory {value} ({origin}) is a file, not a directory"
    return None


def _check_args(args) -> None:
    """The mistakes in paths that can be named before anything is imported: a data directory that
    does not exist, `--out` of the wrong kind (a run/export folder that is a file, a report file
    that is a directory)."""
    if hasattr(args, "data_dir"):
        problem = _data_dir_problem(args.data_dir)
        if problem:
            raise ConfigError(problem)
    out, kind = getattr(args, "out", None), getattr(args, "out_kind", None)
    if out and kind == "folder" and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a folder (it is created if missing)")
    if out and kind == "file" and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a directory; give the report's file name, e.g. {Path(out) / 'report.json'}")


def _flag_error(e, flags: dict[str, str | None]) -> ConfigError:
    """A `RecipeValueError` of a value the command line set, named by its flag."""
    flag = flags.get(e.field)
    return ConfigError(f"{flag} {e.problem}") if flag else e


def _default_report(command: str, model) -> Path:
    """Where a report goes without --out: results/COMMAND-MODEL-TIME.json in the current folder."""
    path = Path(str(model).rstrip("/"))
    name = path.parent.name if path.suffix == ".keras" and path.parent.name else path.stem or path.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("hf://", "")).strip("_") or "model"
    return Path("results") / f"{command}-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _launch_workers(args, check=None) -> int | None:
    """--local-workers: start the workers and supervise them (returns their status); --worker-hosts:
    make this process one worker of that cluster (returns None and training goes on here). `check`
    runs before any worker starts (a recipe mistake is then reported once, not by every worker)."""
    from ssl_zoo.train.launch import run_local_workers, tf_config, without_option

    if args.strategy not in ("default", "multiworker"):
        raise ConfigError(f"--local-workers / --worker-hosts run MultiWorkerMirroredStrategy, not --strategy {args.strategy}")
    if args.local_workers and args.worker_hosts:
        raise ConfigError("give either --local-workers (all workers on this host) or --worker-hosts (a cluster)")
    if args.local_workers:
        if check is not None:
            check()
        argv = without_option(without_option(args.argv, "--local-workers"), "--strategy")
        return run_local_workers([sys.executable, "-m", "ssl_zoo.cli", *argv, "--strategy", "multiworker"],
                                 args.local_workers)
    if args.worker_index is None:
        raise ConfigError("--worker-hosts needs --worker-index (this machine's position in the list, from 0)")
    os.environ["TF_CONFIG"] = tf_config(args.worker_hosts.split(","), args.worker_index)
    args.strategy = "multiworker"
    return None


def _train_recipe(args):
    """The recipe with the command line's values, every value checked (before TensorFlow is imported)."""
    from ssl_zoo.train.recipe import RecipeValueError, apply_overrides, load_recipe

    recipe = load_recipe(args.recipe)
    overrides = list(args.set or [])
    shortcuts = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "global_batch": args.global_batch}
    overrides += [f"train.{key}={value}" for key, value in shortcuts.items() if value is not None]
    try:
        recipe = apply_overrides(recipe, overrides)
    except RecipeValueError as e:
        given = {k: "--" + k.replace("_", "-") for k, v in shortcuts.items() if v is not None}
        raise _flag_error(e, given if e.section == "train" else {}) from None
    return recipe


def cmd_train(args) -> int:
    if args.local_workers or args.worker_hosts:
        status = _launch_workers(args, check=lambda: _train_recipe(args))
        if status is not None:
            return status
    recipe = _train_recipe(args)
    _import_tensorflow(args)
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.loop import Trainer
    from ssl_zoo.train.strategy import build_strategy

    strategy = build_strategy(args.strategy, devices=args.devices.split(",") if args.devices else None,
                              tpu=args.tpu, logical_cpus=args.logical_cpus)
    method = method_from_recipe(recipe)
    source = open_source(recipe.data.source, args.data_dir, cache=recipe.data.cache)
    trainer = Trainer(method, recipe, source, strategy, args.out)
    result = trainer.fit()
    print(json.dumps(result["history"][-1] if result["history"] else {}, indent=2))
    return 0


def cmd_reproduce(args) -> int:
    _import_tensorflow(args)
    from ssl_zoo.reproduce import format_comparison, reproduce_entry
    from ssl_zoo.train.strategy import build_strategy

    overrides = list(args.set or [])
    overrides += [f"train.{k}={v}" for k, v in {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch}.items()
                  if v is not None]
    strategy = build_strategy(args.strategy, devices=args.devices.split(",") if args.devices else None,
                              tpu=args.tpu, logical_cpus=args.logical_cpus)
    result = reproduce_entry(args.entry, data_dir=args.data_dir, out=args.out, strategy=strategy,
                             overrides=overrides, cache=args.cache)
    print(format_comparison(result["entry"], result["comparison"]))
    if overrides:
        print(f"note: trained with {overrides}: a check of the pipeline, not of the card's numbers")
    print(f"report: {Path(args.out) / 'reproduce.json'}")
    return 0


def cmd_diagnose(args) -> int:
    _import_tensorflow(args)
    from ssl_zoo.methods import diagnose_run

    options = {"picture": args.picture} if args.picture else {}
    report = diagnose_run(args.run, data_dir=args.data_dir, split=args.split, max_examples=args.max_examples,
                          overrides=args.set or [], out=args.out, **options)
    print(json.dumps({name: {k: v for k, v in d.items() if k not in ("method", "overrides", "run")}
                      for name, d in report.items()}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from ssl_zoo.train.recipe import EvalConfig, ProbeConfig, RecipeValueError, evaluation_protocol

    if args.protocol == "zoo":
        return evaluate_zoo_protocol(args)

    # Flags given override the recipe's [evaluation] section (of --recipe, or of a run folder's run.json).
    flags = dict(source=args.dataset, train_split=args.train_split, test_split=args.test_split,
                 image_size=args.image_size, knn_k=args.knn_k,
                 stages=args.stages.split(",") if args.stages else None)
    protocol = evaluation_protocol(args.model, args.recipe)
    protocol.update({k: v for k, v in flags.items() if v is not None})
    names = {"source": "--dataset", "train_split": "--train-split", "test_split": "--test-split",
             "image_size": "--image-size", "knn_k": "--knn-k", "stages": "--stages"}
    try:  # checked here, before TensorFlow is imported
        EvalConfig(**{**protocol, "stages": tuple(protocol["stages"])})
        ProbeConfig(probe_epochs=args.probe_epochs, max_train_examples=args.max_train_examples, seed=args.seed)
    except RecipeValueError as e:
        raise _flag_error(e, {**{k: f for k, f in names.items() if flags[k] is not None},
                              "probe_epochs": "--probe-epochs", "max_train_examples": "--max-train-examples",
                              "seed": "--seed"}) from None
    out = args.out or _default_report("evaluate", args.model)
    _import_tensorflow(args)
    from ssl_zoo.evaluation import run

    report = run.evaluate_model(
        args.model, data_dir=args.data_dir, out=str(out), seed=args.seed, max_train_examples=args.max_train_examples,
        probe_epochs=args.probe_epochs, cache=args.cache, features_dir=args.features_dir, **protocol,
    )
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {out}")
    return 0


def _random_init_cache(args):
    """The `--random-init-cache` folder (default: `ssl_zoo.finetune.default_random_init_cache()`), or
    None with `--no-random-init-cache`."""
    if args.no_random_init_cache:
        return None
    from ssl_zoo.finetune import RandomInitCache, default_random_init_cache

    return RandomInitCache(args.random_init_cache or default_random_init_cache())


def _add_random_init_cache(p) -> None:
    p.add_argument("--random-init-cache", default=None,
                   help="folder of finished random-init fine-tuning runs, reused for an architecture, examples and "
                        "schedule measured before (default $SSL_ZOO_RANDOM_INIT_CACHE or ~/.cache/ssl_zoo/random_init)")
    p.add_argument("--no-random-init-cache", action="store_true", help="measure every random-init floor afresh")


def evaluate_zoo_protocol(args) -> int:
    """`ssl-zoo evaluate MODEL --protocol zoo`: every part of the zoo's protocol in one report."""
    from ssl_zoo.evaluation.zoo_protocol import PARTS, plan, run_zoo_protocol, summary_lines

    single = {"--recipe": args.recipe, "--dataset": args.dataset, "--train-split": args.train_split,
              "--test-split": args.test_split, "--stages": args.stages, "--image-size": args.image_size,
              "--knn-k": args.knn_k, "--max-train-examples": args.max_train_examples}
    clash = [flag for flag, value in single.items() if value is not None]
    if clash:
        raise ConfigError(f"--protocol zoo fixes the datasets, sizes and stages; leave out {', '.join(clash)}")
    parts = args.parts.split(",") if args.parts else list(PARTS)
    plan(args.natural_size or 32, parts=parts)  # an unknown part is named before TensorFlow is imported
    if args.natural_size is not None and args.natural_size < 8:
        raise ConfigError(f"--natural-size must be at least 8 px, not {args.natural_size}")
    out = args.out or _default_report("protocol", args.model)
    _import_tensorflow(args)
    from functools import partial

    from ssl_zoo.evaluation.zoo_protocol import run_part

    report = run_zoo_protocol(args.model, data_dir=args.data_dir, out=out, natural_size=args.natural_size,
                              parts=parts, probe_epochs=args.probe_epochs, features_dir=args.features_dir,
                              part_runner=partial(run_part, random_init_cache=_random_init_cache(args)))
    for line in summary_lines(report):
        print(line)
    print(f"report: {out}")
    return 0


def cmd_export(args) -> int:
    _import_tensorflow(args)
    from ssl_zoo.cards import write_model_card
    from ssl_zoo.export import export
    from ssl_zoo.zoo import format_table, register_preset

    written = export(args.model, args.name, args.out, eval_report=args.eval,
                     formats=tuple(args.formats.split(",")), hardware=args.hardware,
                     recipe_file=args.recipe, diagnostics=args.diagnostics, context_check=args.context_check)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if args.register or args.cards_dir:
        if "preset" not in written:
            raise SystemExit("--register and --cards-dir need the preset format")
        print(f"card: {write_model_card(written['preset'], args.cards_dir or 'model_cards')}")
    if args.register:
        entry = register_preset(written["preset"], registry=args.registry, hf=args.hf)
        print(format_table([entry]))
    return 0


def cmd_list(args) -> int:
    from ssl_zoo.zoo import format_table, list_entries

    entries = list_entries(args.registry)
    if args.json:
        print(json.dumps([{k: v for k, v in e.items() if not k.startswith("_")} for e in entries], indent=2))
    else:
        print(format_table(entries))
    return 0


def cmd_leaderboard(args) -> int:
    from ssl_zoo.leaderboard import write

    result = write(args.out, readme=None if args.no_readme else args.readme, registry=args.registry)
    for row in result["rows"]:
        print(f"{row['name']:<44} {row['best_stage']:<7} {100 * row['best_probe']:6.2f} % "
              f"({100 * (row['best_probe'] - row['floor_best']):+.2f} over the best random-init stage), "
              f"kNN {100 * row['knn']:.2f} %  [protocol {row['protocol_id']}]")
    print(f"leaderboard: {result['leaderboard']}")
    for plot in result["plots"]:
        print(f"plot: {plot}")
    if result["readme"]:
        print(f"readme: {result['readme']}")
    return 0


def cmd_pictures(args) -> int:
    _import_tensorflow(args)
    from ssl_zoo import zoo
    from ssl_zoo.cards import write_model_card
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.pictures import write_entry_pictures

    names = [e["name"] for e in zoo.list_entries()] if args.all else args.names
    if not names:
        raise ConfigError("name an entry (or preset folder), or pass --all")
    for name in names:
        result = write_entry_pictures(name, data_dir=args.data_dir, cards_dir=args.out, num_images=args.num_images)
        card = write_model_card(result["preset"], args.out)
        print(f"{result['name']}: {', '.join(result['pictures'].values())}; precision@{result['k']} "
              f"{100 * result['precision_at_k']:.1f} % on {result['images']} images of {result['dataset']}/"
              f"{result['split']}; card {card}")
    return 0


def cmd_card(args) -> int:
    _import_tensorflow(args)
    from ssl_zoo.cards import write_card_files, write_model_card
    from ssl_zoo.loader import resolve_source
    from ssl_zoo.preset import read_metadata

    from ssl_zoo import zoo
    from ssl_zoo.errors import ConfigError

    if args.all == bool(args.source):
        raise ConfigError("name one preset folder or zoo entry, or pass --all (every registered entry)")
    for source in [e["name"] for e in zoo.list_entries()] if args.all else [args.source]:
        res = resolve_source(source)
        if res.kind != "preset":
            raise SystemExit(f"{source}: a card is generated from a preset folder (its metadata.json)")
        print(write_model_card(res.path, args.out))
        if args.in_preset:
            print(write_card_files(read_metadata(res.path), res.path))
    return 0


def cmd_push(args) -> int:
    from ssl_zoo.hub import push

    print(push(args.source, args.repo, private=args.private, commit_message=args.message))
    return 0


def cmd_finetune(args) -> int:
    from ssl_zoo.train.recipe import FinetuneConfig, RecipeValueError

    settings = dict(epochs_frozen=args.epochs_frozen, epochs_unfrozen=args.epochs_unfrozen, lr_frozen=args.lr_frozen,
                    lr_unfrozen=args.lr_unfrozen, batch_size=args.batch_size,
                    max_train_examples=args.max_train_examples, max_test_examples=args.max_test_examples,
                    steps_per_epoch=args.steps_per_epoch, seed=args.seed, image_size=args.image_size)
    try:  # checked here, before TensorFlow is imported
        FinetuneConfig(**settings)
    except RecipeValueError as e:
        raise _flag_error(e, {k: "--" + k.replace("_", "-") for k in settings}) from None
    out = args.out or _default_report("finetune", args.source)
    _import_tensorflow(args)
    from ssl_zoo.finetune import finetune

    report = finetune(args.source, dataset=args.dataset, data_dir=args.data_dir, random_init=not args.no_random_init,
                      out=str(out), train_split=args.train_split, test_split=args.test_split, **settings)
    print(json.dumps({k: report[k] for k in ("trained", "random_init") if k in report}, indent=2))

    def accuracies(run: dict) -> str:
        return ", ".join(f"{phase} {run[phase]['test_accuracy']:.2%}" for phase in ("frozen", "unfrozen")
                         if isinstance(run.get(phase), dict) and "test_accuracy" in run[phase])

    split = report["protocol"]["test_split"]
    where = args.dataset if split == "test" else f"{args.dataset} ({split} split)"
    print(f"test accuracy on {where}: pretrained {accuracies(report['trained'])}"
          + (f" | random init {accuracies(report['random_init'])}" if "random_init" in report else ""))
    print(f"report: {out}")
    return 0


def cmd_label_efficiency(args) -> int:
    from ssl_zoo.train.recipe import FinetuneConfig, RecipeValueError

    settings = dict(epochs_frozen=args.epochs_frozen, epochs_unfrozen=args.epochs_unfrozen, lr_frozen=args.lr_frozen,
                    lr_unfrozen=args.lr_unfrozen, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
                    max_test_examples=args.max_test_examples, seed=args.seed, image_size=args.image_size)
    try:  # checked here, before TensorFlow is imported
        FinetuneConfig(**settings)
        fractions = [float(f) for f in args.fractions.split(",")]
    except RecipeValueError as e:
        raise _flag_error(e, {k: "--" + k.replace("_", "-") for k in settings}) from None
    except ValueError:
        raise ConfigError(f"--fractions must be numbers separated by commas, not {args.fractions!r}") from None
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"--fractions must each be in (0, 1], not {bad[0]:g}")
    robustness = None
    if args.robustness_eps:
        try:
            epsilons = [float(e) for e in args.robustness_eps.split(",")]
        except ValueError:
            raise ConfigError(f"--robustness-eps must be numbers separated by commas, not {args.robustness_eps!r}") from None
        if any(not e > 0 for e in epsilons) or args.robustness_examples < 1:
            raise ConfigError("--robustness-eps must be positive and --robustness-examples at least 1")
        robustness = {"epsilons": epsilons, "max_examples": args.robustness_examples, "pgd_steps": 10}
    out = args.out or _default_report("label-efficiency", args.model)
    _import_tensorflow(args)
    from ssl_zoo.evaluation.label_efficiency import label_efficiency
    from ssl_zoo.finetune import final_accuracy

    report = label_efficiency(args.model, dataset=args.dataset, data_dir=args.data_dir, fractions=fractions,
                              train_split=args.train_split, test_split=args.test_split, out=str(out),
                              robustness=robustness, random_init_cache=_random_init_cache(args), **settings)

    def attacked(run: dict) -> str:
        found = run.get("robustness", {}).get("accuracy", {})
        return "".join(f", {k} {v:.2%}" for k, v in found.items() if k != "clean")

    for fraction, row in report["fractions"].items():
        print(f"{fraction} of the labels ({row['num_labels']} images): pretrained {final_accuracy(row['trained']):.2%}"
              f"{attacked(row['trained'])} | random init {final_accuracy(row['random_init']):.2%}"
              f"{attacked(row['random_init'])}")
    print(f"report: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ssl_zoo.train.recipe import EvalConfig

    parser = argparse.ArgumentParser(prog="ssl-zoo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a method from a recipe")
    p.add_argument("recipe", help="recipe TOML file (see training/)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, final model; resumed if it exists")
    _add_data_dir(p)
    p.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker", "tpu"])
    p.add_argument("--devices", default=None, help="comma-separated devices for --strategy mirrored")
    p.add_argument("--logical-cpus", type=int, default=0, help="split the CPU into N logical devices (testing)")
    p.add_argument("--tpu", default="", help="TPU name or address for --strategy tpu")
    p.add_argument("--local-workers", type=int, default=0, metavar="N",
                   help="run N multi-worker processes on this host (free local ports; TF_CONFIG set for each)")
    p.add_argument("--worker-hosts", default=None, metavar="HOST:PORT,...",
                   help="multi-worker cluster: every worker's address, the same list on every machine")
    p.add_argument("--worker-index", type=int, default=None, help="with --worker-hosts: this machine's index")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--global-batch", type=int, default=None)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value")
    p.set_defaults(func=cmd_train, out_kind="folder")

    p = sub.add_parser("evaluate", help="linear probe per stage and kNN, next to the random-init floor",
                       description="Linear probe per stage and kNN, next to the random-init floor. The protocol "
                                   "(--dataset, splits, --stages, --image-size, --knn-k) defaults to the [evaluation] "
                                   "section of --recipe, else of a run folder's recorded recipe, else that "
                                   "section's defaults (shown); a flag given overrides it.")
    ev = EvalConfig()
    p.add_argument("model", help="a training run folder, a .keras backbone or pretext model, a preset folder, or a zoo name")
    _add_data_dir(p)
    p.add_argument("--recipe", default=None, help="recipe file (training/NAME.toml) whose [evaluation] section sets the protocol")
    p.add_argument("--dataset", default=None, help=f"default {ev.source}")
    p.add_argument("--train-split", default=None, help=f"split the probe is trained on (default {ev.train_split})")
    p.add_argument("--test-split", default=None,
                   help=f"split the accuracy is reported on, e.g. val for image folders (default {ev.test_split})")
    p.add_argument("--stages", default=None, help=f"default {','.join(ev.stages)}")
    p.add_argument("--image-size", type=int, default=None, help=f"default {ev.image_size}")
    p.add_argument("--knn-k", type=int, default=None, help=f"default {ev.knn_k}")
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", action="store_true",
                   help="image folders: decode each split once and keep it in memory for both models")
    p.add_argument("--features-dir", default=None,
                   help="stream the frozen features to files in this folder instead of memory, for a split whose "
                        "features do not fit (removed after each model's probes; same protocol, same numbers up "
                        "to the order of the probe's batches)")
    p.add_argument("--protocol", choices=("single", "zoo"), default="single",
                   help="zoo: the zoo's whole protocol in one resumable report (CIFAR-10 probe and kNN, Imagenette "
                        "at the entry's training size and at 32 px, fine-tuning with 1 / 10 / 100 %% of the labels); "
                        "single (default): one dataset, as the flags say")
    p.add_argument("--parts", default=None, help="with --protocol zoo: only these parts (comma-separated: "
                                                   "cifar10, imagenette_natural, imagenette_32, label_efficiency)")
    p.add_argument("--natural-size", type=int, default=None,
                   help="with --protocol zoo: the size the model was trained at (read from a zoo entry's metadata)")
    _add_random_init_cache(p)
    p.add_argument("--out", default=None,
                   help="write the report JSON here (default results/evaluate-MODEL-TIME.json, printed at the end)")
    p.set_defaults(func=cmd_evaluate, out_kind="file")

    p = sub.add_parser("reproduce", help="retrain a released entry from its recorded recipe and compare, stage by "
                                         "stage, the card's protocol's numbers with the card's")
    p.add_argument("entry", help="zoo name, preset folder or hf://org/name of a released entry")
    p.add_argument("--out", required=True, help="run folder; the same command resumes a stopped reproduction")
    _add_data_dir(p)
    p.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker", "tpu"])
    p.add_argument("--devices", default=None, help="comma-separated devices for --strategy mirrored")
    p.add_argument("--logical-cpus", type=int, default=0, help="split the CPU into N logical devices (testing)")
    p.add_argument("--tpu", default="", help="TPU name or address for --strategy tpu")
    p.add_argument("--epochs", type=int, default=None, help="fewer epochs: a check of the pipeline, not of the card")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recorded recipe value")
    p.add_argument("--cache", action="store_true", help="image folders: decode each split once for the evaluation")
    p.set_defaults(func=cmd_reproduce, out_kind="folder")

    p = sub.add_parser("diagnose", aliases=["context-check"],
                       help="the method's own checks of a trained run (relative patch: pretext accuracy with the "
                            "centre patch swapped or blanked, does the model use its context?)")
    p.add_argument("run", help="a training run folder (ssl-zoo train --out) of a method with diagnostics")
    _add_data_dir(p)
    p.add_argument("--split", default=None, help="held-out split (default: the recipe's eval split)")
    p.add_argument("--max-examples", type=int, default=None, help="default: the whole split")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="correct the run's recorded recipe, e.g. method.placement=grid")
    p.add_argument("--out", default=None, help="write the report JSON here")
    p.add_argument("--picture", default=None, help="also draw the pretext task on held-out images into this PNG "
                                                   "(colorization: grey input, colorized, true colour)")
    p.set_defaults(func=cmd_diagnose, out_kind="file")

    p = sub.add_parser("export", help="release artefacts (preset = HF checkpoint, SavedModel, .keras) of a trained model")
    p.add_argument("model", help="a training run folder (ssl-zoo train --out), a .keras backbone / pretext model, "
                                 "or a released entry (zoo name, hf://, preset or export folder) to write other "
                                 "formats of, e.g. --formats onnx")
    p.add_argument("--name", default=None, help="entry name: method_backbone_data, e.g. rotnet_resnet18w025_cifar10 "
                                                "(default for a released entry: its own)")
    p.add_argument("--out", required=True, help="folder receiving preset/, saved_model/ and NAME.keras")
    p.add_argument("--eval", default=None, help="the `ssl-zoo evaluate --out` report of this model (numbers for the card)")
    p.add_argument("--formats", default="preset,saved_model,keras",
                   help="comma-separated, from preset, saved_model, keras, onnx (onnx needs pip install \"ssl_zoo[onnx]\")")
    p.add_argument("--hardware", default=None, help="what the run trained on, if run.json does not record it")
    p.add_argument("--recipe", default=None,
                   help="the recipe file this release is reproduced with (training/NAME.toml): its values must "
                        "equal the run's, and its header replaces the one recorded when the run started")
    p.add_argument("--diagnostics", default=None, help="an `ssl-zoo diagnose --out` report of this run, recorded "
                                                         "in the metadata and shown in the card")
    p.add_argument("--context-check", default=None, help="former name of --diagnostics (also takes the bare report "
                                                           "the former `ssl-zoo context-check` wrote)")
    p.add_argument("--register", action="store_true",
                   help="copy the preset into the zoo (ssl_zoo/zoo/presets/NAME), add/update its registry entry "
                        "and write the card to --cards-dir")
    p.add_argument("--registry", default=None, help="registry file (default: $SSL_ZOO_REGISTRY or the packaged one)")
    p.add_argument("--cards-dir", default=None, help="write NAME.md + plot here (default with --register: model_cards)")
    p.add_argument("--hf", default=None, help="hf://org/name the entry is (or will be) pushed to")
    p.set_defaults(func=cmd_export, out_kind="folder")

    p = sub.add_parser("list", help="the zoo's released entries")
    p.add_argument("--registry", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("leaderboard", help="every released entry's evaluation side by side: model_cards/LEADERBOARD.md, "
                                           "its plot and the README's table")
    p.add_argument("--registry", default=None)
    p.add_argument("--out", default="model_cards", help="folder of LEADERBOARD.md and its plot (default model_cards)")
    p.add_argument("--readme", default="README.md", help="README whose leaderboard block is rewritten (default README.md)")
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("card", help="(re)generate the model card of a preset / zoo entry from its metadata")
    p.add_argument("source", nargs="?", default=None, help="preset folder, export folder or zoo name")
    p.add_argument("--all", action="store_true", help="every registered entry (after a release: the cards show each "
                                                      "stage as a fraction of the supervised reference's)")
    p.add_argument("--out", default="model_cards", help="cards folder (default model_cards)")
    p.add_argument("--in-preset", action="store_true",
                   help="also rewrite the preset's own README.md and plot (after a card template change)")
    p.set_defaults(func=cmd_card, out_kind="folder")

    p = sub.add_parser("pictures", help="draw an entry's first-layer filters, held-out nearest neighbours and "
                                        "pretext task beside its card, and relink the card")
    p.add_argument("names", nargs="*", help="zoo names or preset folders")
    p.add_argument("--all", action="store_true", help="every entry of the registry")
    _add_data_dir(p)
    p.add_argument("--out", default="model_cards", help="cards folder (default model_cards)")
    p.add_argument("--num-images", type=int, default=2000, help="held-out images searched (default 2000)")
    p.set_defaults(func=cmd_pictures, out_kind="folder")

    p = sub.add_parser("push", help="upload a preset folder or zoo entry to the Hugging Face Hub")
    p.add_argument("source", help="preset folder, export folder's preset/, or zoo name")
    p.add_argument("repo", help="hf://org/name[@branch]")
    p.add_argument("--private", action="store_true")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("finetune", help="fine-tune a backbone (frozen, then unfrozen) next to random init")
    p.add_argument("source", help="zoo name, hf://org/name, preset / SavedModel folder or .keras file")
    _add_data_dir(p)
    p.add_argument("--dataset", default="tfds:cifar10")
    p.add_argument("--image-size", type=int, default=None,
                   help="image side; default the backbone's input size (required for any-size backbones)")
    p.add_argument("--train-split", default="train", help="split trained on (default train)")
    p.add_argument("--test-split", default=None,
                   help="split the accuracy is measured on (default: test, or val for an image folder with "
                        "train/ and val/ such as Imagenette)")
    p.add_argument("--epochs-frozen", type=int, default=2)
    p.add_argument("--epochs-unfrozen", type=int, default=2)
    p.add_argument("--lr-frozen", type=float, default=1e-3)
    p.add_argument("--lr-unfrozen", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-train-examples", type=int, default=None, help="train on the first K shuffled examples")
    p.add_argument("--max-test-examples", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--no-random-init", action="store_true", help="skip the random-init floor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="write the report JSON here (default results/finetune-MODEL-TIME.json, printed at the end)")
    p.set_defaults(func=cmd_finetune, out_kind="file")

    p = sub.add_parser("label-efficiency", help="fine-tune with 1 %% / 10 %% / ... of the labels (class-balanced) next "
                                                "to random init, the same steps for every fraction")
    p.add_argument("model", help="zoo name, hf://org/name, preset folder or .keras file")
    _add_data_dir(p)
    p.add_argument("--dataset", default="tfds:cifar10")
    p.add_argument("--fractions", default="0.01,0.1", help="label fractions, comma-separated (default 0.01,0.1)")
    p.add_argument("--image-size", type=int, default=None,
                   help="image side; default the backbone's input size (required for any-size backbones)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default=None, help="default: test, or val for an image folder with train/ and val/")
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--epochs-frozen", type=int, default=4)
    p.add_argument("--epochs-unfrozen", type=int, default=4)
    p.add_argument("--lr-frozen", type=float, default=1e-3)
    p.add_argument("--lr-unfrozen", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-test-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--robustness-eps", default="",
                   help="also attack every final classifier with FGSM and PGD-10 at these L-inf radii in [0, 255] "
                        "pixels, comma-separated (e.g. 2,8); default off")
    p.add_argument("--robustness-examples", type=int, default=1000, help="test images attacked (default 1000)")
    _add_random_init_cache(p)
    p.add_argument("--out", default=None,
                   help="write the report JSON here after every fraction (default "
                        "results/label-efficiency-MODEL-TIME.json); a report there of the same model, data and "
                        "settings is extended: the fractions it holds are kept, not measured again")
    p.set_defaults(func=cmd_label_efficiency, out_kind="file")
    return parser


# Write failures that are the machine's, not the program's: the disk or a quota is full, or a file
# outgrew a size limit. TensorFlow's C++ writers report them as OpErrors with the OS's text.
_WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "File too large")


def _write_failure(e: BaseException) -> str | None:
    """The one sentence for a failed write (a full disk), or None for any other error."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        where = f" writing {e.filename}" if e.filename else ""
        return f"{e.strerror}{where}"
    text = str(e)
    found = next((m for m in _WRITE_FAILURES if m in text), None)
    if found is None or not type(e).__module__.startswith("tensorflow"):
        return None
    path = re.search(r"(/[^\s:;,'\"]+)", text)
    return f"{found}" + (f" writing {path.group(1)}" if path else "")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed: --local-workers hands it on to its workers
    _setup_logging(args.verbose)
    try:
        _check_args(args)
        return args.func(args)
    except SslZooError as e:  # a complete message for the user (what was wrong, where): no traceback
        logging.getLogger("ssl_zoo").error("%s", e)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the trainer has said where it saved; no traceback
        logging.getLogger("ssl_zoo").warning("stopped (%s)", e or "interrupted")
        return 130
    except Exception as e:
        failure = _write_failure(e)
        if failure is None:
            raise
        # Every artefact is written atomically (a temporary name, then a rename): what was finished
        # before the failed write is intact, and the same command resumes from the last checkpoint.
        logging.getLogger("ssl_zoo").error("%s: free some space and run the same command again (finished files "
                                           "and the last checkpoint are intact)", failure)
        return 2


if __name__ == "__main__":
    sys.exit(main())
