"""The zoo's one protocol for an entry (`ssl-zoo evaluate MODEL --protocol zoo`): every question a
user of the zoo asks of a backbone, measured the same way for every entry, in one report.

Parts (each its own sub-report, with its own protocol id):
- `cifar10`: per-stage linear probe and weighted kNN on CIFAR-10 at 32 px (`evaluate_model`);
- `imagenette_natural`: the same on Imagenette at the size the entry was trained at (skipped when
  that is 32 px: it would be `imagenette_32` again);
- `imagenette_32`: the same on Imagenette downsized to 32 px, where every entry can be compared;
- `label_efficiency`: fine-tuning on CIFAR-10 with 1 %, 10 % and 100 % of the labels against the
  same architecture from random init (`label_efficiency`), every classifier also attacked with FGSM
  and PGD-10 at 2/255 and 8/255 on 500 test images.

Every part is written to the report as soon as it finishes, and a run given an existing report
keeps the parts it already holds when they were asked for with the same settings: an interrupted
protocol (an hour per entry on two CPU cores) resumes where it stopped and never redoes or loses
finished work. `PROTOCOL_VERSION` is part of every settings record, so a changed protocol never
passes for an old one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ssl_zoo.errors import ConfigError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
CIFAR10 = "tfds:cifar10"
IMAGENETTE = "folder:imagenette-96px"
FRACTIONS = (0.01, 0.1, 1.0)
# Every fine-tuned classifier attacked (seed 003's question): FGSM and PGD-10 at 2/255 and 8/255.
ROBUSTNESS = {"epsilons": [2.0, 8.0], "max_examples": 500, "pgd_steps": 10}
PARTS = ("cifar10", "imagenette_natural", "imagenette_32", "label_efficiency")


def natural_image_size(model) -> int | None:
    """The image size a released entry (zoo name or preset folder) was trained at, from its
    metadata's recorded recipe; None when the model carries no such record (a bare .keras file)."""
    from ssl_zoo import zoo
    from ssl_zoo.preset import METADATA_FILE

    folder = None
    if isinstance(model, str) and zoo.is_entry(model):
        folder = zoo.preset_dir(zoo.get_entry(model))
    elif Path(str(model)).is_dir():
        folder = Path(str(model))
    if folder is None or not (folder / METADATA_FILE).is_file():
        return None
    meta = json.loads((folder / METADATA_FILE).read_text())
    return ((meta.get("recipe") or {}).get("data") or {}).get("image_size")


def plan(natural_size: int, *, fractions=FRACTIONS, probe_epochs: int = 30, parts=PARTS) -> dict[str, dict[str, Any]]:
    """{part: settings} of the protocol for an entry trained at `natural_size` px."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ConfigError(f"--parts: unknown {unknown}; the zoo protocol's parts are {list(PARTS)}")
    every = {
        "cifar10": {"kind": "evaluate", "source": CIFAR10, "image_size": 32, "test_split": "test",
                    "probe_epochs": probe_epochs},
        "imagenette_natural": {"kind": "evaluate", "source": IMAGENETTE, "image_size": int(natural_size),
                               "test_split": "val", "probe_epochs": probe_epochs, "cache": True},
        "imagenette_32": {"kind": "evaluate", "source": IMAGENETTE, "image_size": 32, "test_split": "val",
                          "probe_epochs": probe_epochs, "cache": True},
        # 32 px, CIFAR-10's own size: a backbone of any size (the context methods') needs it said.
        "label_efficiency": {"kind": "label_efficiency", "source": CIFAR10, "image_size": 32,
                             "fractions": sorted(float(f) for f in fractions), "robustness": dict(ROBUSTNESS)},
    }
    chosen = {p: {**every[p], "version": PROTOCOL_VERSION} for p in PARTS if p in parts}
    if int(natural_size) == 32:
        chosen.pop("imagenette_natural", None)  # the same measurement as imagenette_32
    return chosen


def run_part(model, settings: dict[str, Any], data_dir, features_dir=None, partial=None,
             random_init_cache=None) -> dict[str, Any]:
    """One part's sub-report (TensorFlow imported here, not at module import). `features_dir`:
    where the evaluation parts stream their features (`evaluate_model`); not a setting of the
    protocol, since it changes where numbers are held, not what they are. `partial`: a file where a
    part that measures several things in turn (label efficiency's fractions) keeps those it
    finished, so that a rerun after an interruption resumes within the part. `random_init_cache`:
    label efficiency's reusable floors (`ssl_zoo.finetune.RandomInitCache`), not a setting either."""
    if settings["kind"] == "evaluate":
        from ssl_zoo.evaluation.run import evaluate_model

        return evaluate_model(model, data_dir=data_dir, source=settings["source"], image_size=settings["image_size"],
                              test_split=settings["test_split"], probe_epochs=settings["probe_epochs"],
                              cache=settings.get("cache", False), features_dir=features_dir)
    from ssl_zoo.evaluation.label_efficiency import label_efficiency

    return label_efficiency(model, dataset=settings["source"], data_dir=data_dir, fractions=settings["fractions"],
                            image_size=settings["image_size"], robustness=settings.get("robustness"), out=partial,
                            random_init_cache=random_init_cache)


def run_zoo_protocol(model, *, data_dir=None, out, natural_size: int | None = None, parts=PARTS,
                     fractions=FRACTIONS, probe_epochs: int = 30, part_runner=run_part,
                     features_dir=None) -> dict[str, Any]:
    """Runs the protocol's parts on `model`, writing `out` after each; resumes from `out`.
    `part_runner(model, settings, data_dir, features_dir, partial)`: the function that measures a
    part (tests swap it); `partial` is `OUT.PART.partial.json`, removed once the part is in `out`."""
    from ssl_zoo.preset import write_json

    size = natural_size or natural_image_size(model)
    if size is None:
        raise ConfigError(f"{model}: no recorded training image size; give --natural-size")
    todo = plan(size, fractions=fractions, probe_epochs=probe_epochs, parts=parts)
    out = Path(out)
    report = {"model": str(model), "protocol": "zoo", "version": PROTOCOL_VERSION, "natural_size": int(size),
              "parts": {}}
    if out.is_file():
        previous = json.loads(out.read_text())
        if previous.get("model") != str(model):
            raise ConfigError(f"{out} holds the protocol of {previous.get('model')!r}, not {model!r}: "
                              "give another --out")
        report["parts"] = dict(previous.get("parts", {}))
    t0 = time.time()
    for i, (name, settings) in enumerate(todo.items()):
        done = report["parts"].get(name)
        if done is not None and done.get("settings") == settings:
            log.info("zoo protocol %d/%d: %s already measured in %s, kept", i + 1, len(todo), name, out)
            continue
        log.info("zoo protocol %d/%d: %s (%s)", i + 1, len(todo), name,
                 ", ".join(f"{k}={v}" for k, v in settings.items() if k != "kind"))
        started = time.time()
        partial = out.with_name(f"{out.name}.{name}.partial.json")
        result = part_runner(model, settings, data_dir, features_dir, partial)
        report["parts"][name] = {"settings": settings, "report": result, "seconds": round(time.time() - started, 1)}
        write_json(report, out, sort_keys=True)  # atomically, after every part
        partial.unlink(missing_ok=True)
    report["seconds_this_run"] = round(time.time() - t0, 1)
    write_json(report, out, sort_keys=True)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per part: the best stage's probe and kNN next to random init, or the
    fine-tuned accuracy per label fraction."""
    from ssl_zoo.finetune import final_accuracy

    lines = []
    for name, part in report["parts"].items():
        r = part["report"]
        if part["settings"]["kind"] == "evaluate":
            s = r["summary"]
            lines.append(f"{name}: best stage {s['best_stage']} {s['best_stage_probe']:.2%} (random init best "
                         f"{s['random_init_best_probe']:.2%}), kNN {r['knn']['trained']:.2%} "
                         f"(random init {r['knn']['random_init']:.2%}) [{part['seconds'] / 60:.1f} min]")
        else:
            cells = [f"{float(f):.0%}: {final_accuracy(row['trained']):.2%} vs {final_accuracy(row['random_init']):.2%}"
                     for f, row in sorted(r["fractions"].items(), key=lambda kv: float(kv[0]))]
            lines.append(f"{name}: " + ", ".join(cells) + f" [{part['seconds'] / 60:.1f} min]")
    return lines
