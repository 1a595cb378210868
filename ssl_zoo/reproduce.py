"""`ssl-zoo reproduce NAME`: retrain a released entry from the recipe its metadata records (every
value as run), evaluate it under the protocol its card was measured with, and put the new
numbers next to the card's, stage by stage.

The run folder is an ordinary training run: a killed reproduction resumes where it stopped (run
the same command again), on whatever strategy the command names. Whether a difference matters
is read against the run-to-run spread of the zoo's training (`SPREAD_FILE`, two seeds of one
entry, in accuracy points); where that spread has not been measured the comparison says so
instead of guessing a threshold.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ssl_zoo.errors import ConfigError

log = logging.getLogger(__name__)

SPREAD_FILE = Path(__file__).parent / "zoo" / "seed_spread.json"


def card_protocol(evaluation: dict) -> dict[str, Any]:
    """`evaluate_model` keyword arguments that repeat the protocol of an entry's recorded
    evaluation report (its dataset, splits, size, seed, stages, k, training-set size and probe
    epochs)."""
    try:
        protocol = evaluation["protocol"]
        epochs = re.search(r"(\d+) epochs", protocol["linear_probe"])
        if not epochs:
            raise KeyError("linear_probe epochs")
        return {
            "source": evaluation["dataset"], "train_split": protocol["train_split"],
            "test_split": protocol["test_split"], "image_size": int(protocol["image_size"]),
            "seed": int(protocol["seed"]), "stages": sorted(evaluation["linear_probe"], key=_stage_order),
            "knn_k": int(evaluation["knn"]["k"]), "max_train_examples": int(protocol["num_train"]),
            "probe_epochs": int(epochs.group(1)),
        }
    except (KeyError, TypeError) as e:
        raise ConfigError(f"the entry's evaluation report lacks {e} of its protocol: it cannot be repeated") from None


def _stage_order(stage: str) -> int:
    from ssl_zoo.backbones import STAGES

    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def read_spread(path: Path | None = None) -> dict | None:
    """The measured run-to-run spread ({"probe": {stage: points}, "knn": points, "entry", "seeds",
    "command"}) or None where none was measured."""
    path = Path(path or SPREAD_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


def spread_from_reports(reports: list[dict], *, entry: str, seeds: list[int], command: str) -> dict:
    """The run-to-run spread `compare` reads, from evaluation reports of one recipe trained with
    different seeds and evaluated under one protocol: per stage (and for kNN) the range of the
    probe accuracy over the seeds, in points. With two seeds that is |a - b|, a rough measure: a
    reproduction within it differs from the card no more than the zoo's own seeds do."""
    if len(reports) < 2 or len(reports) != len(seeds):
        raise ConfigError(f"the spread needs one evaluation report per seed, at least two; got {len(reports)} "
                          f"reports for seeds {seeds}")
    ids = {r.get("protocol_id") for r in reports}
    if len(ids) != 1:
        raise ConfigError(f"the reports were measured under different protocols {sorted(map(str, ids))}: "
                          "their differences are not the seeds'")
    stages = [s for s in sorted(reports[0]["linear_probe"], key=_stage_order) if all(s in r["linear_probe"] for r in reports)]

    def points(values):
        return round(100.0 * (max(values) - min(values)), 2)

    return {"entry": entry, "seeds": list(seeds), "command": command, "protocol_id": ids.pop(),
            "probe": {s: points([r["linear_probe"][s]["trained"] for r in reports]) for s in stages},
            "knn": points([r["knn"]["trained"] for r in reports]),
            "per_seed": {str(seed): {"probe": {s: r["linear_probe"][s]["trained"] for s in stages},
                                     "knn": r["knn"]["trained"]} for seed, r in zip(seeds, reports)}}


def compare(card: dict, now: dict, spread: dict | None) -> dict:
    """Stage by stage, the card's probe accuracy, the new one, their difference in points and
    whether it lies within the measured spread (None: spread not measured); the same for kNN."""
    rows = []
    for stage in sorted(card["linear_probe"], key=_stage_order):
        if stage not in now["linear_probe"]:
            continue
        old, new = card["linear_probe"][stage]["trained"], now["linear_probe"][stage]["trained"]
        rows.append(_row(stage, old, new, (spread or {}).get("probe", {}).get(stage)))
    rows.append(_row(f"kNN ({card['knn']['stage']})", card["knn"]["trained"], now["knn"]["trained"],
                     (spread or {}).get("knn")))
    return {"rows": rows, "same_protocol": card.get("protocol_id") == now.get("protocol_id"),
            "spread": spread}


def _row(stage: str, old: float, new: float, spread_points: float | None) -> dict:
    diff = 100.0 * (new - old)
    return {"stage": stage, "card": old, "now": new, "difference_points": diff, "spread_points": spread_points,
            "within_spread": None if spread_points is None else abs(diff) <= spread_points}


def format_comparison(name: str, comparison: dict) -> str:
    lines = [f"{name}: card vs reproduced (accuracy %, difference in points)",
             f"{'stage':<16} {'card':>7} {'now':>7} {'diff':>7}  within spread"]
    for r in comparison["rows"]:
        within = ("not measured" if r["within_spread"] is None
                  else f"{'yes' if r['within_spread'] else 'NO'} (±{r['spread_points']:.1f})")
        lines.append(f"{r['stage']:<16} {100 * r['card']:>7.2f} {100 * r['now']:>7.2f} "
                     f"{r['difference_points']:>+7.2f}  {within}")
    if not comparison["same_protocol"]:
        lines.append("note: the protocol ids differ (the card's evaluation was made under another protocol); "
                     "the differences above are not only the training's")
    spread = comparison["spread"]
    if spread is not None and spread.get("entry"):
        lines.append(f"note: the spread is the range over seeds {spread.get('seeds')} of {spread['entry']} "
                     f"({SPREAD_FILE.name}); another entry's own spread may be wider or narrower")
    if comparison["spread"] is None:
        lines.append(f"note: no run-to-run spread is measured yet ({SPREAD_FILE.name}): read the differences "
                     "without a threshold")
    return "\n".join(lines)


def reproduce_entry(entry: str | dict, *, data_dir=None, out, strategy=None, overrides=(), spread_file=None,
                    cache: bool = False) -> dict:
    """Retrains `entry` (a zoo name, preset folder or hf:// source, or its metadata dict) into
    the run folder `out` (resumed if it exists), evaluates the run's backbone under the card's
    protocol and writes `out/reproduce.json`: the new evaluation report, the comparison and the
    overrides (a reproduction with overrides, e.g. fewer epochs, is a check of the pipeline,
    not of the card's numbers, and says so)."""
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.evaluation.run import evaluate_model
    from ssl_zoo.loader import load_metadata
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.preset import write_json
    from ssl_zoo.train.loop import Trainer
    from ssl_zoo.train.recipe import apply_overrides, recipe_from_dict
    from ssl_zoo.train.strategy import build_strategy

    meta = entry if isinstance(entry, dict) else load_metadata(entry)
    name = (meta or {}).get("name", str(entry))
    if not meta or not meta.get("recipe") or not meta.get("evaluation"):
        raise ConfigError(f"{name}: its metadata records no recipe or no evaluation, so there is nothing to "
                          "reproduce against")
    recipe = apply_overrides(recipe_from_dict(dict(meta["recipe"]), name=meta["recipe"].get("name", name)),
                             list(overrides))
    protocol = card_protocol(meta["evaluation"])
    out = Path(out)
    log.info("reproducing %s: training into %s (resumed if it was started), then the card's protocol on %s",
             name, out, protocol["source"])
    method = method_from_recipe(recipe)
    source = open_source(recipe.data.source, data_dir, cache=recipe.data.cache)
    Trainer(method, recipe, source, strategy or build_strategy("default"), out).fit()
    report = evaluate_model(str(out / "backbone.keras"), data_dir=data_dir, out=str(out / "eval.json"), cache=cache,
                            **protocol)
    comparison = compare(meta["evaluation"], report, read_spread(spread_file))
    result = {"entry": name, "run": str(out), "overrides": list(overrides), "protocol": protocol,
              "comparison": comparison, "evaluation": report}
    write_json(result, out / "reproduce.json")
    return result
