"""`ssl-zoo reproduce`: the card's protocol is read back from its evaluation report, the new
numbers are compared stage by stage against the measured spread (or say that none is measured),
and end to end a tiny entry is retrained, evaluated under its card's protocol, and a second run
of the same command resumes instead of retraining."""

import json

import pytest

from release_fixtures import eval_report
from ssl_zoo.errors import ConfigError
from ssl_zoo.reproduce import card_protocol, compare, format_comparison


def test_card_protocol_repeats_the_recorded_evaluation():
    protocol = card_protocol(eval_report())
    assert protocol == {"source": "tfds:cifar10", "train_split": "train", "test_split": "test", "image_size": 16,
                        "seed": 0, "stages": ["stem", "stage1", "stage2", "stage3", "stage4", "pooled"], "knn_k": 200,
                        "max_train_examples": 5000, "probe_epochs": 30}
    broken = eval_report()
    broken["protocol"]["linear_probe"] = "one Dense layer"
    with pytest.raises(ConfigError, match="cannot be repeated"):
        card_protocol(broken)


def test_an_entry_without_recipe_or_evaluation_is_refused_before_training(tmp_path):
    from ssl_zoo.reproduce import reproduce_entry

    with pytest.raises(ConfigError, match="nothing to reproduce against"):
        reproduce_entry({"name": "x", "evaluation": eval_report()}, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_comparison_reads_differences_against_the_measured_spread():
    card, now = eval_report(), eval_report()
    now["linear_probe"]["stage3"]["trained"] += 0.02  # +2 points
    now["knn"]["trained"] -= 0.005
    spread = {"probe": {"stage3": 1.0, "stage4": 1.0}, "knn": 1.0}
    rows = {r["stage"]: r for r in compare(card, now, spread)["rows"]}
    assert rows["stage3"]["difference_points"] == pytest.approx(2.0) and rows["stage3"]["within_spread"] is False
    assert rows["stage4"]["within_spread"] is True and rows["stem"]["within_spread"] is None
    assert rows["kNN (pooled)"]["difference_points"] == pytest.approx(-0.5) and rows["kNN (pooled)"]["within_spread"]
    text = format_comparison("x", compare(card, now, None))
    assert "not measured" in text and "no run-to-run spread is measured yet" in text
    assert "NO (±1.0)" in format_comparison("x", compare(card, now, spread))


@pytest.mark.slow
def test_reproduce_retrains_evaluates_under_the_card_protocol_and_resumes(tmp_path, monkeypatch, capsys):
    from helpers import TINY_BACKBONE, write_image_folder
    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.cli import main
    from ssl_zoo.evaluation.run import evaluate_model
    from ssl_zoo.train.recipe import recipe_from_dict

    for split, n in (("train", 8), ("val", 4)):
        for c, cls in enumerate(("cats", "dogs")):
            write_image_folder(tmp_path / "data" / split / cls, n=n, size=20, seed=10 * c + len(split))
    protocol = dict(source="folder:data", stages=["stage2", "pooled"], knn_k=3, probe_epochs=1, image_size=16,
                    test_split="val")
    card_eval = evaluate_model(build_backbone(dict(TINY_BACKBONE)), data_dir=tmp_path, **protocol)
    recipe = recipe_from_dict({
        "name": "tiny_rotnet", "method": {"name": "rotnet", "head_hidden_units": [8], "image_size": 16},
        "backbone": dict(TINY_BACKBONE),
        "data": {"source": "folder:data", "image_size": 16, "train_split": "train", "eval_split": None},
        "train": {"epochs": 1, "global_batch": 8, "seed": 0, "log_every": 1, "checkpoint_every": 1},
        "optimizer": {"name": "sgd", "learning_rate": 0.1, "warmup_epochs": 0.0}})
    meta = {"name": "tiny_rotnet", "recipe": recipe.to_dict(), "evaluation": card_eval}
    import ssl_zoo.loader

    monkeypatch.setattr(ssl_zoo.loader, "load_metadata", lambda source: meta)
    spread = tmp_path / "spread.json"
    spread.write_text(json.dumps({"probe": {"stage2": 100.0, "pooled": 100.0}, "knn": 100.0}))
    monkeypatch.setattr("ssl_zoo.reproduce.SPREAD_FILE", spread)
    out = tmp_path / "run"
    args = ["reproduce", "tiny_rotnet", "--data-dir", str(tmp_path), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "card vs reproduced" in printed and "stage2" in printed and "kNN (pooled)" in printed
    report = json.loads((out / "reproduce.json").read_text())
    assert report["comparison"]["same_protocol"] is True  # same dataset, splits, size, seed, epochs
    assert [r["stage"] for r in report["comparison"]["rows"]] == ["stage2", "pooled", "kNN (pooled)"]
    assert all(r["within_spread"] for r in report["comparison"]["rows"])  # a spread of 100 points
    assert report["protocol"]["probe_epochs"] == 1 and report["evaluation"]["protocol"]["num_train"] == 16
    steps = json.loads((out / "run.json").read_text())["steps"]
    # The same command again: the finished run is resumed (no new steps), evaluated again.
    assert main(args) == 0
    assert json.loads((out / "run.json").read_text())["steps"] == steps


def test_spread_is_the_range_over_seeds_under_one_protocol():
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.reproduce import spread_from_reports

    def report(stem, stage2, knn, pid="p"):
        return {"protocol_id": pid, "knn": {"trained": knn},
                "linear_probe": {"stage2": {"trained": stage2}, "stem": {"trained": stem}}}

    spread = spread_from_reports([report(0.50, 0.60, 0.40), report(0.52, 0.59, 0.43)], entry="e", seeds=[0, 1],
                                 command="CMD")
    assert spread["probe"] == {"stem": 2.0, "stage2": 1.0} and list(spread["probe"]) == ["stem", "stage2"]
    assert spread["knn"] == 3.0 and spread["protocol_id"] == "p" and spread["per_seed"]["1"]["knn"] == 0.43
    # compare() reads it as measured.
    rows = compare({"linear_probe": {"stem": {"trained": 0.5}}, "knn": {"stage": "pooled", "trained": 0.4}},
                   {"linear_probe": {"stem": {"trained": 0.515}}, "knn": {"trained": 0.45}}, spread)["rows"]
    assert rows[0]["within_spread"] is True and rows[1]["within_spread"] is False
    with pytest.raises(ConfigError, match="different protocols"):
        spread_from_reports([report(0.5, 0.6, 0.4), report(0.5, 0.6, 0.4, pid="q")], entry="e", seeds=[0, 1], command="")
    with pytest.raises(ConfigError, match="at least two"):
        spread_from_reports([report(0.5, 0.6, 0.4)], entry="e", seeds=[0], command="")


def test_the_released_spread_is_measured_and_named():
    from ssl_zoo.reproduce import format_comparison, read_spread

    spread = read_spread()
    assert spread is not None and len(spread["seeds"]) >= 2 and spread["protocol_id"]
    assert set(spread["probe"]) == {"stem", "stage1", "stage2", "stage3", "stage4", "pooled"}
    card = {"linear_probe": {"stem": {"trained": 0.5}}, "knn": {"stage": "pooled", "trained": 0.4}}
    text = format_comparison("x", compare(card, card, spread))
    assert f"seeds {spread['seeds']} of {spread['entry']}" in text and "not measured" not in text
