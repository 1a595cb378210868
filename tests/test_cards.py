"""Generated model cards: Hugging Face metadata that parses, numbers equal to the evaluation JSON,
commands that the CLI accepts, a recipe that round-trips."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import release_fixtures as rf

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def preset(tmp_path_factory):
    return rf.exported(tmp_path_factory)["preset"]


def test_card_parses_and_model_index_equals_eval_json(preset):
    report = rf.eval_report()
    card = ModelCard.load(preset / "README.md")
    data = card.data
    assert data.library_name == "keras" and data.license == "apache-2.0"
    assert data.datasets == ["uoft-cs/cifar10"] and "self-supervised-learning" in data.tags and "rotnet" in data.tags
    assert data.model_name == rf.NAME
    values = {r.metric_name: r.metric_value for r in data.eval_results}
    s = report["summary"]
    # Only this model's own results, rounded to 4 decimals; the random-init floor is in the text only.
    assert values == {f"linear probe top-1 ({s['best_stage']})": round(s["best_stage_probe"], 4),
                      f"kNN top-1 (k={report['knn']['k']}, {report['knn']['stage']})": round(report["knn"]["trained"], 4)}
    assert {r.dataset_type for r in data.eval_results} == {"uoft-cs/cifar10"}
    assert {r.dataset_split for r in data.eval_results} == {"test"}


def test_card_table_equals_eval_json(preset):
    report = rf.eval_report()
    text = (preset / "README.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (\d+) \| ([\d.]+) % \| ([\d.]+) % \| ([+-][\d.]+) pt \|$", text, re.M)
    # Network order, whatever the report's key order (reports are written with sorted keys).
    assert list(report["linear_probe"])[0] == "pooled"
    assert [r[0] for r in rows] == ["stem", "stage1", "stage2", "stage3", "stage4", "pooled"]
    for stage, dims, trained, floor, gain in rows:
        r = report["linear_probe"][stage]
        assert int(dims) == r["dims"]
        assert float(trained) == round(100 * r["trained"], 2)
        assert float(floor) == round(100 * r["random_init"], 2)
        assert float(gain) == round(100 * (r["trained"] - r["random_init"]), 2)
    knn = report["knn"]
    assert f"kNN (k={knn['k']}, {knn['stage']} features): {100 * knn['trained']:.2f} %" in text
    assert "56.42 %" in text  # pretext (rotation) accuracy on held-out data, from history.json
    assert "Gidaris" in text and "load_backbone" in text and "## Limitations" in text
    assert "test fixture (no training)" in text  # hardware as recorded, with its source
    assert (preset / "probe_per_stage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_commands_parse_and_recipe_round_trips(preset):
    from ssl_zoo.cli import build_parser
    from ssl_zoo.train.recipe import recipe_from_dict

    text = (preset / "README.md").read_text()
    commands = [line for line in text.splitlines() if line.startswith("ssl-zoo ")]
    assert [c.split()[1] for c in commands] == ["train", "evaluate", "export"]
    parser = build_parser()
    evaluate = parser.parse_args(shlex.split(commands[1])[1:])
    protocol = rf.eval_report()["protocol"]
    assert evaluate.probe_epochs == 30 and evaluate.max_train_examples == protocol["num_train"]
    assert evaluate.image_size == protocol["image_size"] and evaluate.knn_k == 200
    export = parser.parse_args(shlex.split(commands[2])[1:])
    assert export.register and export.name == rf.NAME
    toml = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    recipe = recipe_from_dict(tomllib.loads(toml)).to_dict()
    recorded = json.loads((preset / "metadata.json").read_text())["recipe"]
    recipe["description"] = recorded["description"]
    assert json.loads(json.dumps(recipe)) == recorded


def test_model_cards_folder_and_cli(preset, tmp_path):
    from ssl_zoo.cli import main

    assert main(["card", str(preset), "--out", str(tmp_path / "model_cards")]) == 0
    card = tmp_path / "model_cards" / f"{rf.NAME}.md"
    assert (tmp_path / "model_cards" / f"{rf.NAME}_probe.png").exists()
    text = card.read_text()
    assert f"({rf.NAME}_probe.png)" in text
    assert text.replace(f"{rf.NAME}_probe.png", "probe_per_stage.png") == (preset / "README.md").read_text()


def test_card_in_preset_rewrites_the_presets_own_card(tmp_path, tmp_path_factory):
    # After a card template change: the preset's README.md is re-rendered from its metadata too.
    from ssl_zoo.cli import main

    preset = rf.copy_export(tmp_path, tmp_path_factory)["preset"]
    expected = (preset / "README.md").read_text()
    (preset / "README.md").write_text("stale")
    assert main(["card", str(preset), "--out", str(tmp_path / "model_cards"), "--in-preset"]) == 0
    assert (preset / "README.md").read_text() == expected


# The entries released before batch norm was written plain, whose config.json was rewritten later.
FIRST_RELEASED_WITH_SYNCHRONIZED_BN = {"rotnet_resnet18w025_cifar10", "jigsaw_resnet18w025_imagenette96",
                                       "relative_patch_resnet18w025_imagenette96", "exemplar_resnet18w025_imagenette96"}


@pytest.mark.parametrize("name", [e["name"] for e in json.loads(
    (REPO / "ssl_zoo" / "zoo" / "entries.json").read_text())["entries"]])
def test_released_cards_are_what_the_current_template_renders(name):
    # A card template change must reach every released entry: its packaged preset card and its copy in
    # model_cards/ are regenerated from the preset's metadata (`ssl-zoo card PRESET`), never hand-edited.
    from ssl_zoo.cards import render_card, supervised_reference
    from ssl_zoo.leaderboard import label_efficiency_beside, zoo_protocol_beside
    from ssl_zoo.pictures import pictures_beside

    preset = REPO / "ssl_zoo" / "zoo" / "presets" / name
    meta = json.loads((preset / "metadata.json").read_text())
    # The method's own training plot (clustering methods), where it drew one.
    in_preset = "training.png" if (preset / "training.png").is_file() else None
    in_cards = f"{name}_training.png" if (REPO / "model_cards" / f"{name}_training.png").is_file() else None
    assert (preset / "README.md").read_text() == render_card(meta, "probe_per_stage.png", in_preset)
    pictures = pictures_beside(REPO / "model_cards", name)
    label_efficiency = label_efficiency_beside(REPO / "model_cards", name)
    # Drawn by `ssl-zoo card` wherever the entry has a label-efficiency report.
    label_efficiency_plot = f"{name}_label_efficiency.png" if label_efficiency else None
    assert label_efficiency_plot is None or (REPO / "model_cards" / label_efficiency_plot).is_file()
    assert (REPO / "model_cards" / f"{name}.md").read_text() == render_card(
        meta, f"{name}_probe.png", in_cards, pictures, supervised_reference(name),
        label_efficiency, zoo_protocol_beside(REPO / "model_cards", name), label_efficiency_plot), \
        f"model_cards/{name}.md is stale: run `ssl-zoo card --all`"
    assert '"synchronized": true' not in (preset / "config.json").read_text()
    assert "is plain (`synchronized: false`)" in (preset / "README.md").read_text()
    if name in FIRST_RELEASED_WITH_SYNCHRONIZED_BN:
        # Re-released with plain batch norm (config.json only; the weights kept their registry hash),
        # and the card says so from the metadata's record.
        assert meta["batch_norm"] == {"config": "plain", "config_rewritten": True}
        assert "re-released with only its `config.json` rewritten" in (preset / "README.md").read_text()
    else:
        assert meta["batch_norm"]["config"] == "plain" and not meta["batch_norm"].get("config_rewritten")


KNOWN_HUB_DATASETS = {"uoft-cs/cifar10", "uoft-cs/cifar100", "frgfm/imagenette"}


@pytest.mark.parametrize("name", [e["name"] for e in json.loads(
    (REPO / "ssl_zoo" / "zoo" / "entries.json").read_text())["entries"]])
def test_released_cards_read_right_on_the_hub(name):
    """What the Hub reads from a released card, parsed by huggingface_hub itself: model-index holds
    only this model's results (probe and kNN, no random-init floor), each equal to the evaluation
    report rounded to 4 decimals; dataset ids are Hub repositories; the model-index round-trips."""
    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    preset = REPO / "ssl_zoo" / "zoo" / "presets" / name
    meta = json.loads((preset / "metadata.json").read_text())
    report = meta["evaluation"]
    card = ModelCard.load(preset / "README.md")
    data = card.data
    assert isinstance(data, ModelCardData) and data.library_name == "keras" and data.model_name == name
    from ssl_zoo.cards import _dataset

    evaluated_on = _dataset(report["dataset"])[0]  # the Hub id of the evaluation's dataset, listed last
    assert set(data.datasets) <= KNOWN_HUB_DATASETS and data.datasets[-1] == evaluated_on
    results = {r.metric_name: r for r in data.eval_results}
    s, knn = report["summary"], report["knn"]
    assert {k: r.metric_value for k, r in results.items()} == {
        f"linear probe top-1 ({s['best_stage']})": round(s["best_stage_probe"], 4),
        f"kNN top-1 (k={knn['k']}, {knn['stage']})": round(knn["trained"], 4)}
    assert not any("random" in k or "floor" in k for k in results)
    for r in data.eval_results:
        assert r.dataset_type == evaluated_on and r.metric_type == "accuracy"
        assert r.dataset_split == report["protocol"]["test_split"]
        assert len(repr(r.metric_value).split(".")[-1]) <= 4, r.metric_value
    header = card.content.split("---")[1]
    assert "random-init" not in header and "0000" not in header
    model_name, parsed = model_index_to_eval_results(data.to_dict()["model-index"])
    assert model_name == name and eval_results_to_model_index(name, parsed) == data.to_dict()["model-index"]
    # The floor is still stated, in the text.
    assert f"best random-init stage ({s['random_init_best_stage']})" in card.text


def test_card_shows_label_efficiency_and_robustness_beside_it(preset, tmp_path):
    from ssl_zoo.cards import render_card
    from ssl_zoo.leaderboard import label_efficiency_beside

    meta = json.loads((preset / "metadata.json").read_text())
    name = meta["name"]

    def run(accuracy, attacked):
        return {"frozen": {"test_accuracy": accuracy - 0.05}, "unfrozen": {"test_accuracy": accuracy},
                "robustness": {"accuracy": {"clean": accuracy, "pgd10_eps8": attacked}}}

    report = {"model": name, "dataset": "tfds:cifar10", "protocol_id": "abcdef012345",
              "protocol": {"test_split": "test", "schedule": "SCHEDULE", "robustness": "ATTACKS"},
              "fractions": {"0.1": {"num_labels": 5000, "trained": run(0.6, 0.1), "random_init": run(0.4, 0.02)},
                            "0.01": {"num_labels": 500, "trained": run(0.45, 0.05), "random_init": run(0.2, 0.0)}}}
    assert label_efficiency_beside(tmp_path, name) is None
    (tmp_path / f"{name}.label_efficiency.json").write_text(json.dumps(report))
    text = render_card(meta, label_efficiency=label_efficiency_beside(tmp_path, name))
    section = text.split("## Label efficiency")[1].split("## Method")[0]
    assert section.index("| 1 % | 500 | 45.00 % | 20.00 % | +25.00 pt |") < section.index("| 10 % | 5,000 | 60.00 %")
    assert "| 10 % | pgd10_eps8 | 10.00 % | 2.00 % |" in section and "ATTACKS" in section and "SCHEDULE" in section
    assert "reused" not in section
    report["fractions"]["0.1"]["random_init"]["reused"] = {"measured_for": "rotnet_x", "file": "f.json"}
    (tmp_path / f"{name}.label_efficiency.json").write_text(json.dumps(report))
    assert "measured once for `rotnet_x` and reused" in render_card(meta, label_efficiency=label_efficiency_beside(
        tmp_path, name))
    (tmp_path / f"{name}.label_efficiency.json").write_text(json.dumps({**report, "model": "another"}))
    with pytest.raises(ValueError, match="another"):
        label_efficiency_beside(tmp_path, name)


def test_card_draws_its_label_efficiency_plot_with_the_supervised_ceiling(tmp_path):
    import shutil

    from ssl_zoo.cards import write_model_card

    # A registered entry, so that its supervised reference is known; the reports are copied beside.
    name, reference = "rotnet_resnet18w025_cifar10", "supervised_resnet18w025_cifar10"
    for entry in (name, reference):
        shutil.copy(REPO / "model_cards" / f"{entry}.label_efficiency.json", tmp_path)
    card = write_model_card(REPO / "ssl_zoo" / "zoo" / "presets" / name, tmp_path).read_text()
    plot = tmp_path / f"{name}_label_efficiency.png"
    assert plot.stat().st_size > 5000
    section = card.split("## Label efficiency")[1].split("## ")[0]
    assert f"]({plot.name})" in section
    # The report removed (the weights re-released): the plot and its link go with it.
    (tmp_path / f"{name}.label_efficiency.json").unlink()
    assert "_label_efficiency.png" not in write_model_card(REPO / "ssl_zoo" / "zoo" / "presets" / name, tmp_path).read_text()
    assert not plot.exists()


def test_card_without_evaluation_states_it(preset):
    from ssl_zoo.cards import render_card

    meta = json.loads((preset / "metadata.json").read_text())
    meta["evaluation"] = None
    meta["hardware"] = None
    text = render_card(meta)
    card = ModelCard(text)
    assert card.data.eval_results is None
    assert "no measured downstream numbers" in text
    assert "Hardware: not recorded" in text
    measured = text.split("## Results")[1].split("## Method")[0]
    assert "%" not in measured.replace("56.42 %", "").replace("chance 25.00 %", "")  # pretext acc., chance


def test_card_of_any_size_backbone_trained_on_tiles(preset):
    """A context-method entry: trained on tiles of another dataset's images, no fixed input size,
    evaluated on CIFAR-10. The card must say so rather than claim the data's image size."""
    from ssl_zoo.cards import render_card

    meta = json.loads((preset / "metadata.json").read_text())
    meta["method"] = {"name": "jigsaw", "num_permutations": 100, "tile_size": 28}
    meta["input"]["image_size"] = None
    meta["data"] = {"source": "folder:imagenette-96px"}
    meta["recipe"]["data"] = {"source": "folder:imagenette-96px", "image_size": 96, "eval_split": "val"}
    text = render_card(meta)
    card = ModelCard(text)
    assert card.data.datasets == ["frgfm/imagenette", "uoft-cs/cifar10"]
    assert {r.dataset_type for r in card.data.eval_results} == {"uoft-cs/cifar10"}
    assert "any size" in text and "trained on 28 px views and evaluated at 16 px" in text
    assert "keras.Input((16, 16, 3))" in text and "--image-size 16" in text
    assert "Jigsaw puzzles" in text and "Noroozi & Favaro" in text
    assert "the held-out val split of Imagenette after epoch 2: 56.42 % (loss 1.0517; chance 1.00 %)" in text
    assert "on 28 px views cut from 96 px images" in text


def test_card_of_an_entry_trained_on_one_photo_names_the_photo(preset):
    from ssl_zoo.cards import render_card

    meta = json.loads((preset / "metadata.json").read_text())
    spec = "single:photos/african_elephants.jpg?height=1436&size=64&n=20000"
    meta["data"] = {"source": spec}
    meta["recipe"]["data"] = {"source": spec, "image_size": 32, "eval_split": "test"}
    text = render_card(meta)
    assert "on one photo (african_elephants.jpg, served as augmented crops) without labels" in text
    assert ModelCard(text).data.datasets == ["uoft-cs/cifar10"]  # the photo is no Hub dataset
    assert "?height" not in text.split("## Method")[0]


def test_exemplar_card_says_its_pretext_accuracy_is_on_new_transformations(preset):
    from ssl_zoo.cards import render_card

    meta = json.loads((preset / "metadata.json").read_text())
    meta["method"] = {"name": "exemplar", "num_classes": 2000, "patch_size": 32}
    meta["input"]["image_size"] = None
    text = render_card(meta)
    assert "accuracy on fresh random transformations of the seed patches" in text and "chance 0.05 %" in text
    assert "held-out" not in text.split("## Results")[1].split("## Method")[0]


def test_relative_patch_limitation_names_the_runs_chromatic_defence(preset):
    from ssl_zoo.cards import render_card

    meta = json.loads((preset / "metadata.json").read_text())
    meta["input"]["image_size"] = None
    limitations = {}
    for defence in ("channel_drop", "grey", "none", None):
        meta["method"] = {"name": "relative_patch", "patch_size": 24}
        if defence:
            meta["method"]["chroma_defence"] = defence
        limitations[defence] = render_card(meta).split("## Limitations")[1].split("## Files")[0]
    assert "single colour channels" in limitations["channel_drop"]
    assert limitations[None] == limitations["channel_drop"]  # recorded before the parameter existed
    assert "green-magenta" in limitations["grey"] and "single colour" not in limitations["grey"]
    assert "not whole images." in limitations["none"]


def test_stages_in_network_order():
    from ssl_zoo.cards import stages_in_network_order

    assert stages_in_network_order(["pooled", "stage1", "stage10", "stage2", "stem"]) == [
        "stem", "stage1", "stage2", "stage10", "pooled"]


def test_pretext_chance_levels():
    from ssl_zoo.cards import pretext_classes

    assert pretext_classes({"name": "rotnet"}) == 4
    assert pretext_classes({"name": "relative_patch"}) == 8
    assert pretext_classes({"name": "jigsaw", "num_permutations": 1000}) == 1000
    assert pretext_classes({"name": "exemplar", "num_classes": 2000}) == 2000


@pytest.mark.slow  # traces two ResNet training graphs (~1 min on 2 busy cores)
def test_card_code_block_runs(preset, tmp_path, monkeypatch):
    """The 'How to use' snippet, run as written against a registry holding the entry."""
    import tensorflow as tf

    from ssl_zoo.zoo import register_preset

    registry = tmp_path / "zoo" / "entries.json"
    register_preset(preset, registry=registry)
    monkeypatch.setenv("SSL_ZOO_REGISTRY", str(registry))
    code = re.search(r"```python\n(.*?)```", (preset / "README.md").read_text(), re.S).group(1)
    train_ds = tf.data.Dataset.from_tensor_slices((rf.images(8, seed=2), tf.range(8) % 10)).batch(8)
    scope = {"train_ds": train_ds}
    exec(compile(code, "card-snippet", "exec"), scope)
    assert scope["classifier"].output.shape[-1] == 10


def test_card_shows_each_stage_as_a_fraction_of_the_supervised_reference():
    from ssl_zoo.cards import render_card, supervised_reference

    meta = json.loads((REPO / "ssl_zoo" / "zoo" / "presets" / "rotnet_resnet18w025_cifar10" / "metadata.json").read_text())
    probe = meta["evaluation"]["linear_probe"]
    reference = {"name": "supervised_ref", "stages": {s: {"trained": 2 * v["trained"]} for s, v in probe.items()
                                                      if s != "pooled"}}
    text = render_card(meta, reference=reference)
    assert "| stage | probe dims | trained | random init | gain | of supervised |" in text
    assert "| 50 % |" in text and [line for line in text.splitlines() if line.startswith("| pooled |")][0].endswith("| – |")
    assert "[supervised_ref](supervised_ref.md)" in text
    assert "of supervised" not in render_card(meta)
    # A reference is never measured against itself; an unregistered name has none.
    assert supervised_reference("not_an_entry") is None


def test_card_lists_the_zoo_protocols_other_datasets(preset, tmp_path):
    from ssl_zoo.cards import render_card
    from ssl_zoo.leaderboard import ZOO_PROTOCOL_SUFFIX, zoo_protocol_beside

    meta = json.loads((preset / "metadata.json").read_text())
    name, released = meta["name"], meta["evaluation"]
    imagenette = json.loads(json.dumps(released))
    imagenette.update(dataset="folder:imagenette-96px")
    imagenette["protocol"].update(test_split="val", num_train=9469, num_test=3925)
    imagenette["summary"].update(best_stage_probe=0.4321, random_init_best_probe=0.3, gain_over_best_random_init=0.1321)
    report = {"model": name, "protocol": "zoo", "parts": {
        "cifar10": {"settings": {"kind": "evaluate"}, "report": released},
        "imagenette_32": {"settings": {"kind": "evaluate"}, "report": imagenette}}}
    assert zoo_protocol_beside(tmp_path, name) is None
    (tmp_path / f"{name}{ZOO_PROTOCOL_SUFFIX}").write_text(json.dumps(report))
    text = render_card(meta, zoo_protocol=zoo_protocol_beside(tmp_path, name))
    section = text.split("## Other datasets", 1)[1].split("\n## ", 1)[0]
    assert "| imagenette_32 | Imagenette" in section and "43.21 %" in section and "+13.21 pt" in section
    assert "| cifar10 |" not in section  # the released protocol is the card's own table
    assert f"{name}{ZOO_PROTOCOL_SUFFIX}" in section
    # Only the released protocol measured: no section.
    only = {**report, "parts": {"cifar10": report["parts"]["cifar10"]}}
    assert "## Other datasets" not in render_card(meta, zoo_protocol=only)
