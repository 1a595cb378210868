"""`ssl-zoo evaluate MODEL --protocol zoo`: every part in one report, written after each part,
resumed without redoing or losing finished parts (the parts' own measurements are tested in
test_evaluation.py and test_label_efficiency.py; here a stand-in measures them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssl_zoo.data.sources import ArraySource
from ssl_zoo.errors import ConfigError
from ssl_zoo.evaluation import zoo_protocol


class StandIn:
    """Records the parts it was asked to measure; raises on the part named `fail_on`."""

    def __init__(self, fail_on: str | None = None):
        self.calls, self.fail_on, self.features_dirs, self.partials = [], fail_on, set(), []

    def __call__(self, model, settings, data_dir, features_dir=None, partial=None):
        self.features_dirs.add(features_dir)
        self.partials.append(partial)
        name = f"{settings['source']}@{settings.get('image_size', '-')}:{settings['kind']}"
        if self.fail_on and self.fail_on in name:
            raise RuntimeError(f"interrupted at {name}")
        self.calls.append(name)
        if settings["kind"] == "evaluate":
            return {"summary": {"best_stage": "stage2", "best_stage_probe": 0.6, "random_init_best_probe": 0.5},
                    "knn": {"trained": 0.4, "random_init": 0.3}}
        return {"fractions": {f"{f:g}": {"trained": {"unfrozen": {"test_accuracy": 0.5 + f / 4}},
                                         "random_init": {"unfrozen": {"test_accuracy": 0.3}}}
                              for f in settings["fractions"]}}


def test_plan_measures_imagenette_at_the_training_size_only_when_it_is_not_32():
    assert list(zoo_protocol.plan(32)) == ["cifar10", "imagenette_32", "label_efficiency"]
    at_96 = zoo_protocol.plan(96)
    assert list(at_96) == list(zoo_protocol.PARTS) and at_96["imagenette_natural"]["image_size"] == 96
    assert at_96["label_efficiency"]["fractions"] == [0.01, 0.1, 1.0]
    assert all(s["version"] == zoo_protocol.PROTOCOL_VERSION for s in at_96.values())
    with pytest.raises(ConfigError, match="unknown \\['knn'\\]"):
        zoo_protocol.plan(32, parts=["cifar10", "knn"])


def test_every_part_lands_in_one_report_and_a_rerun_keeps_them(tmp_path):
    out = tmp_path / "protocol.json"
    first = StandIn()
    report = zoo_protocol.run_zoo_protocol("m", out=out, natural_size=96, part_runner=first)
    assert len(first.calls) == 4 and sorted(report["parts"]) == sorted(zoo_protocol.PARTS)
    assert json.loads(out.read_text())["parts"].keys() == report["parts"].keys()
    assert "label_efficiency: 1%: 50.25% vs 30.00%, 10%: 52.50% vs 30.00%, 100%: 75.00% vs 30.00%" in \
        "\n".join(zoo_protocol.summary_lines(report))
    again = StandIn()
    zoo_protocol.run_zoo_protocol("m", out=out, natural_size=96, part_runner=again)
    assert again.calls == []  # nothing redone
    # A part asked for with other settings is measured again; the others are kept.
    changed = StandIn()
    zoo_protocol.run_zoo_protocol("m", out=out, natural_size=96, fractions=(0.01, 0.1), part_runner=changed)
    assert changed.calls == ["tfds:cifar10@32:label_efficiency"]


def test_an_interrupted_protocol_keeps_its_finished_parts_and_resumes(tmp_path):
    out = tmp_path / "protocol.json"
    with pytest.raises(RuntimeError, match="interrupted"):
        zoo_protocol.run_zoo_protocol("m", out=out, natural_size=32, part_runner=StandIn(fail_on="imagenette"))
    assert list(json.loads(out.read_text())["parts"]) == ["cifar10"]
    resumed = StandIn()
    report = zoo_protocol.run_zoo_protocol("m", out=out, natural_size=32, part_runner=resumed)
    assert resumed.calls == ["folder:imagenette-96px@32:evaluate", "tfds:cifar10@32:label_efficiency"]
    assert sorted(report["parts"]) == ["cifar10", "imagenette_32", "label_efficiency"]
    # Each part was offered its own file for progress within it, gone once the part landed.
    assert resumed.partials == [tmp_path / "protocol.json.imagenette_32.partial.json",
                                tmp_path / "protocol.json.label_efficiency.partial.json"]


def test_a_label_efficiency_part_interrupted_between_fractions_resumes_within_the_part(tmp_path, monkeypatch):
    import ssl_zoo.finetune

    fine_tuned, killed = [], []

    def fake_finetune(model, *, dataset, **kw):
        fraction = dataset.name.split("[")[-1].split(" ")[0]
        if fraction == "1" and not killed:
            killed.append(fraction)
            raise KeyboardInterrupt  # the first run is stopped during 100 %
        fine_tuned.append(fraction)
        acc = {"unfrozen": {"test_accuracy": 0.5}}
        return {"trained": acc, "random_init": acc, "protocol": {"image_size": 32}}

    monkeypatch.setattr(ssl_zoo.finetune, "finetune", fake_finetune)
    monkeypatch.setattr("ssl_zoo.evaluation.label_efficiency.read_labels",
                        lambda data, split: (np.arange(1000), np.arange(1000) % 10))
    monkeypatch.setattr("ssl_zoo.data.sources.open_source", lambda spec, data_dir=None: ArraySource(
        np.zeros((10, 8, 8, 3), np.uint8), np.arange(10) % 10))
    out = tmp_path / "protocol.json"
    with pytest.raises(KeyboardInterrupt):
        zoo_protocol.run_zoo_protocol("m", out=out, natural_size=32, parts=["label_efficiency"])
    partial = tmp_path / "protocol.json.label_efficiency.partial.json"
    assert sorted(json.loads(partial.read_text())["fractions"]) == ["0.01", "0.1"]
    report = zoo_protocol.run_zoo_protocol("m", out=out, natural_size=32, parts=["label_efficiency"])
    assert fine_tuned == ["0.01", "0.1", "1"]  # 1 % and 10 % were not redone
    assert sorted(report["parts"]["label_efficiency"]["report"]["fractions"]) == ["0.01", "0.1", "1"]
    assert not partial.exists()


def test_another_models_report_is_never_extended(tmp_path):
    out = tmp_path / "protocol.json"
    zoo_protocol.run_zoo_protocol("m", out=out, natural_size=32, parts=["cifar10"], part_runner=StandIn())
    with pytest.raises(ConfigError, match="holds the protocol of 'm', not 'other'"):
        zoo_protocol.run_zoo_protocol("other", out=out, natural_size=32, part_runner=StandIn())


def test_natural_size_comes_from_a_released_entrys_recipe():
    assert zoo_protocol.natural_image_size("rotnet_resnet18w025_cifar10") == 32
    assert zoo_protocol.natural_image_size("jigsaw_resnet18w025_imagenette96") == 96
    assert zoo_protocol.natural_image_size("no/such/model.keras") is None
    with pytest.raises(ConfigError, match="give --natural-size"):
        zoo_protocol.run_zoo_protocol("no/such/model.keras", out="unused.json", part_runner=StandIn())


@pytest.mark.parametrize("argv, match", [
    (["--protocol", "zoo", "--dataset", "tfds:mnist"], "leave out --dataset"),
    (["--protocol", "zoo", "--parts", "cifar10,knn"], "unknown \\['knn'\\]"),
    (["--protocol", "zoo", "--natural-size", "4"], "at least 8 px"),
])
def test_cli_mistakes_are_one_sentence(argv, match, tmp_path):
    from ssl_zoo.cli import build_parser, cmd_evaluate

    args = build_parser().parse_args(["evaluate", "rotnet_resnet18w025_cifar10", "--out", str(tmp_path / "r.json"), *argv])
    with pytest.raises(ConfigError, match=match):
        cmd_evaluate(args)
    assert not (tmp_path / "r.json").exists()


def test_the_features_folder_reaches_every_part_and_stays_out_of_the_settings(tmp_path):
    runner = StandIn()
    report = zoo_protocol.run_zoo_protocol("m", out=tmp_path / "p.json", natural_size=32, part_runner=runner,
                                           features_dir=tmp_path / "features")
    assert runner.features_dirs == {tmp_path / "features"}
    assert all("features" not in json.dumps(part["settings"]) for part in report["parts"].values())
