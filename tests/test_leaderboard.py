"""`ssl-zoo leaderboard`: every released entry side by side, generated from its released metadata."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_zoo import leaderboard, zoo
from ssl_zoo.evaluation.protocol import protocol_id

REPO = Path(__file__).resolve().parents[1]


def _released():
    return [(e, json.loads((zoo.preset_dir(e) / "metadata.json").read_text()))
            for e in zoo.list_entries(zoo.ZOO_DIR / zoo.REGISTRY_FILE)]


def test_every_entry_appears_with_its_cards_numbers():
    rows = {r["name"]: r for r in leaderboard.collect(zoo.ZOO_DIR / zoo.REGISTRY_FILE)}
    released = _released()
    assert sorted(rows) == sorted(e["name"] for e, _ in released)
    for entry, meta in released:
        report, row = meta["evaluation"], rows[entry["name"]]
        assert row["best_stage"] == report["summary"]["best_stage"]
        assert row["best_probe"] == report["summary"]["best_stage_probe"]
        assert row["floor_best"] == report["summary"]["random_init_best_probe"]
        assert row["knn"] == report["knn"]["trained"] and row["knn_floor"] == report["knn"]["random_init"]
        # The registry's rounded copy agrees with the report the row was read from.
        assert round(row["best_probe"], 4) == entry["probe"]["accuracy"]


def test_committed_leaderboard_and_readme_block_are_what_the_command_writes(tmp_path):
    """Releasing an entry without regenerating the leaderboard fails here."""
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    (tmp_path / "model_cards").mkdir()
    result = leaderboard.write(tmp_path / "model_cards", readme=tmp_path / "README.md",
                               registry=zoo.ZOO_DIR / zoo.REGISTRY_FILE, plots=False, cards_dir=REPO / "model_cards")
    assert (REPO / "model_cards" / "LEADERBOARD.md").read_text() == Path(result["leaderboard"]).read_text(), \
        "model_cards/LEADERBOARD.md is stale: run `ssl-zoo leaderboard`"
    assert (REPO / "README.md").read_text() == (tmp_path / "README.md").read_text(), \
        "README.md's leaderboard block is stale: run `ssl-zoo leaderboard`"
    for pid in leaderboard.groups(result["rows"]):
        assert (REPO / "model_cards" / leaderboard.plot_name(pid)).is_file()


def test_protocol_id_separates_changed_protocols_and_only_them():
    _, meta = _released()[0]
    report = meta["evaluation"]
    same = copy.deepcopy(report)
    same["linear_probe"]["stem"]["trained"] = 0.0  # a result, not the protocol
    same["model"] = "another"
    assert protocol_id(same) == protocol_id(report)
    for change in (("image_size", 96), ("seed", 1), ("num_train", 5000), ("test_split", "val")):
        other = copy.deepcopy(report)
        other["protocol"][change[0]] = change[1]
        assert protocol_id(other) != protocol_id(report), change
    assert protocol_id({**report, "dataset": "folder:imagenette"}) != protocol_id(report)


def test_entries_under_another_protocol_get_their_own_table(tmp_path):
    rows = leaderboard.collect(zoo.ZOO_DIR / zoo.REGISTRY_FILE)
    moved = copy.deepcopy(rows[0])
    moved["protocol"] = {**moved["protocol"], "image_size": 96}
    moved["protocol_id"] = protocol_id({"dataset": moved["dataset"], "protocol": moved["protocol"]})
    text = leaderboard.render(rows[1:] + [moved])
    assert text.count("\n## ") == len(leaderboard.groups(rows[1:])) + 1 and f"protocol `{moved['protocol_id']}`" in text
    section = text.split(f"protocol `{moved['protocol_id']}`", 1)[1]
    assert moved["name"] in section and rows[1]["name"] not in section.split("\n## ")[0]


def test_metadata_that_does_not_match_the_registry_is_refused(tmp_path):
    registry = tmp_path / "entries.json"
    entries = json.loads((zoo.ZOO_DIR / zoo.REGISTRY_FILE).read_text())
    first = entries["entries"][0]
    preset = tmp_path / "presets" / first["name"]
    shutil.copytree(zoo.preset_dir(first), preset)
    first["preset"] = f"presets/{first['name']}"
    entries["entries"] = [first]
    registry.write_text(json.dumps(entries))
    assert [r["name"] for r in leaderboard.collect(registry)] == [first["name"]]
    meta = preset / "metadata.json"
    meta.write_text(meta.read_text().replace('"best_stage_probe": 0.', '"best_stage_probe": 0.9', 1))
    with pytest.raises(leaderboard.LeaderboardError, match="does not match the sha256"):
        leaderboard.collect(registry)


def test_readme_without_the_block_is_one_sentence(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# a readme\n")
    with pytest.raises(leaderboard.LeaderboardError, match="no leaderboard block"):
        leaderboard.write(tmp_path / "cards", readme=readme, registry=zoo.ZOO_DIR / zoo.REGISTRY_FILE, plots=False)


def test_cli_writes_board_plot_and_readme_without_importing_tensorflow(tmp_path):
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    code = ("import sys; from ssl_zoo.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "leaderboard", "--out", str(tmp_path / "cards"),
                           "--readme", str(tmp_path / "README.md")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rotnet_resnet18w025_cifar10" in proc.stdout and "leaderboard:" in proc.stdout
    assert (tmp_path / "cards" / "LEADERBOARD.md").is_file()
    assert list((tmp_path / "cards").glob("LEADERBOARD_*.png"))


def test_supervised_reference_is_listed_last_and_each_stage_shown_as_its_fraction(tmp_path):
    rows = [r for r in leaderboard.collect(zoo.ZOO_DIR / zoo.REGISTRY_FILE) if not leaderboard.is_reference(r)]
    entry = next(r for r in rows if r["name"] == "rotnet_resnet18w025_cifar10")
    reference = copy.deepcopy(entry)
    reference.update(name="supervised_ref", method="supervised", best_probe=0.99)
    for stage in reference["stages"].values():
        stage["trained"] = 2 * stage["trained"]  # twice the entry's probe: 50 % at every stage
    text = leaderboard.render(rows + [reference])
    summary = [line for line in text.splitlines() if line.startswith("| [")]
    assert summary[-1].startswith("| [supervised_ref]") and "reference (labels)" in summary[-1]
    fraction = entry["stages"][entry["best_stage"]]["trained"] / reference["stages"][entry["best_stage"]]["trained"]
    rotnet_line = next(line for line in summary if line.startswith("| [rotnet_resnet18w025_cifar10]"))
    assert f"| {100 * fraction:.0f} % |" in rotnet_line
    table = text.split("(Asano et al. 2020, Table 1", 1)[1]
    assert "| rotnet_resnet18w025_cifar10 | 50 % |" in table and "| supervised_ref (reference) |" in table
    # Another backbone's entry is not measured against this reference.
    other = next(r for r in rows if r["backbone"] != entry["backbone"]) if any(
        r["backbone"] != entry["backbone"] for r in rows) else None
    if other is not None:
        assert leaderboard.reference_for(other, rows + [reference]) is None
    # Without a reference: no fraction table, a dash in the column.
    assert "(Asano et al. 2020, Table 1" not in leaderboard.render(rows)
    leaderboard.plot_group(rows + [reference], tmp_path / "board.png")


def _rows_with(entry_name: str, **changes):
    rows = leaderboard.collect(zoo.ZOO_DIR / zoo.REGISTRY_FILE)
    row = copy.deepcopy(next(r for r in rows if r["name"] == entry_name))
    row.update(changes)
    return rows, row


def test_one_photo_entries_are_set_against_their_methods_full_data_entry(tmp_path):
    rows, single = _rows_with("rotnet_resnet18w025_cifar10", name="rotnet_one_photo",
                              trained_on="single:african_elephants.jpg", epochs=3)
    rows = [r for r in rows if not leaderboard.is_single_image(r)]  # the released ones aside
    full = next(r for r in rows if r["name"] == "rotnet_resnet18w025_cifar10")
    for stage in single["stages"].values():
        stage["trained"] = stage["trained"] / 2  # half the full-data probe at every stage
    [comparison] = leaderboard.single_image_comparisons(rows + [single])
    assert comparison["full"]["name"] == full["name"]
    assert comparison["reference"] is None or comparison["reference"]["method"] == "supervised"
    text = leaderboard.render(rows + [single])
    section = text.split("### Trained on one photo", 1)[1]
    assert "**rotnet_one_photo** (single:african_elephants.jpg, 3 epochs) vs **rotnet_resnet18w025_cifar10**" in section
    assert "| one photo, of full data | 50 % | 50 % |" in section
    assert leaderboard.single_image_plot_name(full["protocol_id"]) in section
    # Another method's full-data entry is never the comparison.
    assert leaderboard.single_image_comparisons(rows + [{**single, "method": "jigsaw_x"}])[0]["full"] is None
    assert leaderboard.plot_single_image([comparison], tmp_path / "single.png").stat().st_size > 0
    assert "### Trained on one photo" not in leaderboard.render(rows)


def test_released_one_photo_entries_each_have_their_full_data_entry():
    rows = leaderboard.collect(zoo.ZOO_DIR / zoo.REGISTRY_FILE)
    comparisons = leaderboard.single_image_comparisons(rows)
    assert comparisons, "the one-photo entries of issue 19 are released"
    for c in comparisons:
        assert c["full"] is not None and c["full"]["method"] == c["single"]["method"], c["single"]["name"]


def test_label_efficiency_reports_get_a_table_and_a_curve_per_protocol(tmp_path):
    rows = leaderboard.collect(zoo.ZOO_DIR / zoo.REGISTRY_FILE)
    names = [rows[0]["name"], rows[1]["name"]]

    def report(name, pid, gain):
        def run(acc):
            return {"frozen": {"test_accuracy": acc - 0.1}, "unfrozen": {"test_accuracy": acc},
                    "robustness": {"accuracy": {"clean": acc, "pgd10_eps2": acc / 5}}}
        return {"model": name, "dataset": "tfds:cifar10", "protocol_id": pid,
                "protocol": {"schedule": f"SCHEDULE {pid}", "robustness": "ATTACKS"},
                "fractions": {"0.1": {"num_labels": 5000, "trained": run(0.3 + gain), "random_init": run(0.3)},
                              "0.01": {"num_labels": 500, "trained": run(0.2 + gain), "random_init": run(0.2)}}}

    (tmp_path / f"{names[0]}.label_efficiency.json").write_text(json.dumps(report(names[0], "p1", 0.25)))
    (tmp_path / f"{names[1]}.label_efficiency.json").write_text(json.dumps(report(names[1], "p2", 0.125)))
    reports = leaderboard.label_efficiency_reports(rows, tmp_path)
    assert sorted(reports) == sorted(names)
    text = leaderboard.render(rows, reports)
    section = text.split("## Label efficiency", 1)[1]
    assert section.count("SCHEDULE p") == 2  # two protocols, two tables
    assert f"| [{names[0]}]({names[0]}.md) | 1 % | 500 | 20.00 | 45.00 |" not in section  # columns: ours, floor
    assert f"| [{names[0]}]({names[0]}.md) | 1 % | 500 | 45.00 | 20.00 | +25.00 | 9.00 / 4.00 |" in section
    assert "| gain | pgd10_eps2 % |" in section and "under attack: ATTACKS" in section
    assert f"| [{names[1]}]({names[1]}.md) | 10 % | 5,000 | 42.50 | 30.00 | +12.50 |" in section
    result = leaderboard.write(tmp_path / "out", registry=zoo.ZOO_DIR / zoo.REGISTRY_FILE, cards_dir=tmp_path)
    assert sorted(Path(p).name for p in result["plots"] if "LABEL" in p) == \
        ["LABEL_EFFICIENCY_p1.png", "LABEL_EFFICIENCY_p2.png"]
    # A report of another model beside an entry's card is refused, not shown under its name.
    (tmp_path / f"{names[0]}.label_efficiency.json").write_text(json.dumps(report(names[1], "p1", 0.25)))
    with pytest.raises(leaderboard.LeaderboardError, match=f"measured '{names[1]}'"):
        leaderboard.label_efficiency_reports(rows, tmp_path)


def _protocol_report(name: str, released: dict, le_report: dict | None = None) -> dict:
    """A zoo-protocol report of `name`: its CIFAR-10 part re-measured (other numbers, the released
    protocol), an Imagenette-32 part (another protocol) and, if given, a label-efficiency part."""
    again = copy.deepcopy(released)
    again["linear_probe"][again["summary"]["best_stage"]]["trained"] = 0.01  # never replaces the card's number
    imagenette = copy.deepcopy(released)
    imagenette.update(dataset="folder:imagenette-96px", model=name)
    imagenette["protocol"] = {**imagenette["protocol"], "test_split": "val", "num_train": 9469, "num_test": 3925}
    imagenette["linear_probe"][imagenette["summary"]["best_stage"]]["trained"] = 0.42
    parts = {"cifar10": {"settings": {"kind": "evaluate"}, "report": again, "seconds": 1.0},
             "imagenette_32": {"settings": {"kind": "evaluate"}, "report": imagenette, "seconds": 1.0}}
    if le_report:
        parts["label_efficiency"] = {"settings": {"kind": "label_efficiency"}, "report": le_report, "seconds": 1.0}
    return {"model": name, "protocol": "zoo", "version": 1, "natural_size": 32, "parts": parts}


def test_zoo_protocol_reports_beside_the_cards_add_their_other_datasets_as_tables(tmp_path):
    registry = zoo.ZOO_DIR / zoo.REGISTRY_FILE
    released = {r["name"]: r for r in leaderboard.collect(registry)}
    entry, meta = next((e, m) for e, m in _released() if e["name"] == "rotnet_resnet18w025_cifar10")
    le = {"model": entry["name"], "dataset": "tfds:cifar10", "protocol_id": "p1",
          "protocol": {"schedule": "SCHEDULE", "robustness": "ATTACKS"},
          "fractions": {"0.01": {"num_labels": 500, "trained": {"unfrozen": {"test_accuracy": 0.5}},
                                 "random_init": {"unfrozen": {"test_accuracy": 0.25}}}}}
    (tmp_path / f"{entry['name']}{leaderboard.ZOO_PROTOCOL_SUFFIX}").write_text(
        json.dumps(_protocol_report(entry["name"], meta["evaluation"], le)))
    rows = leaderboard.collect(registry, tmp_path)
    mine = [r for r in rows if r["name"] == entry["name"]]
    assert len(mine) == 2 and len(rows) == len(released) + 1  # the CIFAR-10 part is the card's protocol: no new row
    card_row = next(r for r in mine if r["source"] == "card")
    assert card_row["best_probe"] == released[entry["name"]]["best_probe"]  # not the re-measured 0.01
    other = next(r for r in mine if r["source"] != "card")
    assert other["dataset"] == "folder:imagenette-96px" and other["best_probe"] == 0.42
    text = leaderboard.render(rows)
    # One table per protocol: the released cards' own and the Imagenette-32 one this report adds to
    # (a released reference may already have a card under it).
    assert text.count("\n## ") == len({r["protocol_id"] for r in released.values()} | {other["protocol_id"]})
    assert text.index("## tfds:cifar10") < text.index("## folder:imagenette-96px")
    # The label-efficiency part is read like a report of its own.
    assert leaderboard.label_efficiency_reports(rows, tmp_path) == {entry["name"]: le}
    # A report that measured another model is refused by name.
    (tmp_path / f"{entry['name']}{leaderboard.ZOO_PROTOCOL_SUFFIX}").write_text(
        json.dumps({**_protocol_report(entry["name"], meta["evaluation"]), "model": "another"}))
    with pytest.raises(leaderboard.LeaderboardError, match="another"):
        leaderboard.collect(registry, tmp_path)


def test_a_reference_trained_on_another_dataset_is_called_a_transfer_not_a_ceiling():
    rows, moved = _rows_with("supervised_resnet18w025_cifar10", dataset="folder:imagenette-96px")
    group = [moved, {**moved, "name": "x", "method": "rotnet"}]
    assert "not this dataset's ceiling" in "".join(leaderboard.transfer_reference_lines(group))
    assert not leaderboard.transfer_reference_lines([r for r in rows if r["dataset"] == "tfds:cifar10"])
    own = {**moved, "name": "supervised_own", "trained_on": "folder:imagenette-96px"}
    [line] = leaderboard.transfer_reference_lines(group + [own])
    assert "transferred like the others" in line and "fractions are of supervised_own" in line
    # In the table, only the table's own reference is "the reference"; the transferred one is a
    # fraction of it like any entry.
    table = "\n".join(leaderboard.summary_table(group + [own]))
    assert table.count("reference (labels)") == 1
    transferred = next(line for line in table.splitlines() if line.startswith(f"| [{moved['name']}]"))
    assert f"| {100 * moved['best_probe'] / own['stages'][moved['best_stage']]['trained']:.0f} % |" in transferred


def test_the_reference_trained_on_the_protocols_own_data_is_preferred():
    rows, transferred = _rows_with("supervised_resnet18w025_cifar10", dataset="folder:imagenette-96px")
    own = {**transferred, "name": "supervised_own", "trained_on": "folder:imagenette-96px"}
    entry = {**transferred, "name": "x", "method": "rotnet"}
    assert leaderboard.reference_for(entry, [transferred, own, entry])["name"] == "supervised_own"
    assert leaderboard.reference_for(entry, [transferred, entry])["name"] == transferred["name"]


def test_the_cost_table_marks_a_report_whose_features_were_streamed_to_disk():
    rows, row = _rows_with("rotnet_resnet18w025_cifar10", features_held="disk")
    lines = leaderboard.cost_lines([row] + [r for r in rows if r["name"] != row["name"]])
    assert f"| {row['name']} | {row['eval_minutes']:g} (features on disk) |" in lines
    assert all("on disk" not in line for line in lines if line.startswith("| ") and row["name"] not in line)
