"""Every released file is hashed and checked on load (issue 14 item 2): a preset's manifest in its
metadata.json, the registry's hashes of config.json, weights and metadata.json, `.keras` sidecars,
the export's release.json; file names that leave the preset folder are refused; whatever is loaded
without a hash says so."""

from __future__ import annotations

import json
import warnings

import pytest

import release_fixtures as rf
from ssl_zoo.loader import IntegrityError, UnhashedFileWarning, load_backbone


@pytest.fixture
def zoo_entry(tmp_path, tmp_path_factory, monkeypatch):
    """A private registry with the tiny entry, its preset copied in by register_preset."""
    from ssl_zoo import zoo

    path = tmp_path / "zoo" / "entries.json"
    zoo.register_preset(rf.exported(tmp_path_factory)["preset"], registry=path)
    monkeypatch.setenv("SSL_ZOO_REGISTRY", str(path))
    return zoo.preset_dir(zoo.get_entry(rf.NAME, path))


def _flip_config(folder):
    config = json.loads((folder / "config.json").read_text())
    norm = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "normalize")
    norm["config"]["mean"] = [0.0, 0.0, 0.0]  # an edited normalisation: builds and loads fine
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def test_export_writes_a_manifest_of_every_file(tmp_path_factory):
    from ssl_zoo.preset import sha256_file

    ex = rf.exported(tmp_path_factory)
    meta = json.loads((ex["preset"] / "metadata.json").read_text())
    assert meta["files"] == {n: sha256_file(ex["preset"] / n) for n in
                             ("config.json", "model.weights.h5", "README.md", "probe_per_stage.png")}
    release = json.loads((ex["out"] / "release.json").read_text())
    on_disk = sorted(p.relative_to(ex["out"]).as_posix() for p in ex["out"].rglob("*")
                     if p.is_file() and p.name != "release.json")
    assert sorted(release["files"]) == on_disk and f"{rf.NAME}.keras.sha256" in on_disk
    assert all(release["files"][k] == sha256_file(ex["out"] / k) for k in on_disk)
    sidecar = (ex["out"] / f"{rf.NAME}.keras.sha256").read_text()
    assert sidecar == f"{sha256_file(ex['keras'])}  {rf.NAME}.keras\n"


def test_registry_records_config_weights_and_metadata(zoo_entry):
    from ssl_zoo import zoo
    from ssl_zoo.preset import sha256_file

    entry = zoo.get_entry(rf.NAME)
    assert entry["sha256"] == {n: sha256_file(zoo_entry / n) for n in ("config.json", "model.weights.h5", "metadata.json")}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnhashedFileWarning)  # a zoo entry: nothing loaded unchecked
        load_backbone(rf.NAME)


def test_edited_config_is_refused(tmp_path, tmp_path_factory):
    ex = rf.copy_export(tmp_path, tmp_path_factory)
    _flip_config(ex["preset"])
    with pytest.raises(IntegrityError, match=r"config\.json: sha256 .* manifest of .*metadata\.json"):
        load_backbone(ex["preset"])


def test_edited_config_of_a_zoo_entry_is_refused_even_with_its_manifest_rewritten(zoo_entry):
    _flip_config(zoo_entry)
    with pytest.raises(IntegrityError, match="config.json"):
        load_backbone(rf.NAME)
    rf.rehash(zoo_entry)  # metadata.json rewritten to match: the registry's hash of it refuses that
    with pytest.raises(IntegrityError, match=r"metadata\.json: sha256 .* zoo registry entry"):
        load_backbone(rf.NAME)


def test_edited_metadata_of_a_zoo_entry_is_refused(zoo_entry):
    meta = json.loads((zoo_entry / "metadata.json").read_text())
    meta["input"]["mean"] = [0.0, 0.0, 0.0]
    (zoo_entry / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    with pytest.raises(IntegrityError, match=r"metadata\.json: sha256"):
        load_backbone(rf.NAME)


@pytest.mark.parametrize("kind, rel, old, new", [
    ("preset", "README.md", "sha256", "sha1"),  # the card, in the preset's manifest
    ("saved_model", "ssl_zoo_metadata.json", '"RGB"', '"BGR"'),  # a SavedModel file, in release.json
])
def test_edited_card_or_saved_model_file_is_refused(kind, rel, old, new, tmp_path, tmp_path_factory):
    ex = rf.copy_export(tmp_path, tmp_path_factory)
    edited = ex[kind] / rel
    edited.write_text(edited.read_text().replace(old, new))
    with pytest.raises(IntegrityError, match=rel):
        load_backbone(ex[kind])


def test_card_rerender_updates_the_manifest(tmp_path, tmp_path_factory):
    """`ssl-zoo card --in-preset` rewrites a preset's card: the manifest follows (the load passes)."""
    from ssl_zoo.cards import write_card_files
    from ssl_zoo.preset import read_metadata

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    (ex["preset"] / "README.md").write_text("stale\n")
    write_card_files(read_metadata(ex["preset"]), ex["preset"])
    load_backbone(ex["preset"])


@pytest.mark.parametrize("name", ["../x.h5", "/tmp/x.h5", "sub/../../x.h5"])
def test_weights_path_outside_the_preset_is_refused(name, tmp_path, tmp_path_factory):
    import shutil

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    shutil.copy(ex["preset"] / "model.weights.h5", tmp_path / "export" / "x.h5")
    meta = json.loads((ex["preset"] / "metadata.json").read_text())
    meta["weights"]["file"] = name
    (ex["preset"] / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match=r"metadata\.json: the file name .* not a plain name"):
        load_backbone(ex["preset"])


def test_tampered_keras_file_is_refused(tmp_path, tmp_path_factory):
    ex = rf.copy_export(tmp_path, tmp_path_factory)
    keras_file = ex["keras"]
    rf.legacy_keras_file(keras_file, tmp_path / "edited.keras")  # the same model, its config edited
    (tmp_path / "edited.keras").replace(keras_file)
    with pytest.raises(IntegrityError, match=rf"{rf.NAME}\.keras: sha256 .*{rf.NAME}\.keras\.sha256"):
        load_backbone(keras_file)
    (ex["out"] / f"{rf.NAME}.keras.sha256").unlink()  # without the sidecar, release.json still has it
    with pytest.raises(IntegrityError, match=r"release\.json"):
        load_backbone(keras_file)


def test_unhashed_files_are_loaded_with_a_warning_naming_them(tmp_path, tmp_path_factory):
    import shutil

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    lone = tmp_path / "lone.keras"
    shutil.copy(ex["keras"], lone)
    with pytest.warns(UnhashedFileWarning, match=r"lone\.keras: loaded without an integrity check"):
        load_backbone(lone)
    meta = json.loads((ex["preset"] / "metadata.json").read_text())
    del meta["files"]  # a preset written before the manifest existed
    (ex["preset"] / "metadata.json").write_text(json.dumps(meta))
    with pytest.warns(UnhashedFileWarning, match=r"config\.json: loaded without an integrity check"):
        load_backbone(ex["preset"])


def test_register_refuses_a_tampered_preset(tmp_path, tmp_path_factory):
    from ssl_zoo import zoo

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    _flip_config(ex["preset"])
    with pytest.raises(IntegrityError, match="config.json"):
        zoo.register_preset(ex["preset"], registry=tmp_path / "zoo" / "entries.json")
    assert not (tmp_path / "zoo" / "entries.json").exists()


def test_released_entries_carry_every_hash():
    """The packaged entries were re-registered through register_preset: each holds the sha256 of its
    config.json, weights and metadata.json, and its metadata's manifest matches every file."""
    from ssl_zoo import zoo
    from ssl_zoo.preset import check_preset_folder, sha256_file

    entries = zoo.list_entries(zoo.ZOO_DIR / zoo.REGISTRY_FILE)
    assert len(entries) >= 4
    for e in entries:
        folder = zoo.preset_dir(e)
        meta = check_preset_folder(folder)
        # Every file of the folder but metadata.json itself (a method's training plot where it drew one).
        listed = {p.name for p in folder.iterdir() if p.is_file()} - {"metadata.json"}
        assert set(meta["files"]) == listed and {"config.json", "model.weights.h5", "README.md",
                                                 "probe_per_stage.png"} <= listed
        assert e["sha256"] == {n: sha256_file(folder / n) for n in ("config.json", "model.weights.h5", "metadata.json")}


def test_released_files_name_no_path_of_the_machine_that_made_them():
    """A release says where it came from by entry name and recipe, never by the training machine's
    folders (an evaluation report records the path it was given; the export replaces it)."""
    import re

    from ssl_zoo import zoo

    absolute = re.compile(r'"(/(?:home|work|tmp|Users|root|mnt|data)/[^"]*)"')
    for e in zoo.list_entries(zoo.ZOO_DIR / zoo.REGISTRY_FILE):
        folder = zoo.preset_dir(e)
        for f in ("metadata.json", "config.json", "README.md"):
            found = absolute.findall((folder / f).read_text())
            assert not found, f"{e['name']}/{f} names {found[:3]}"
        assert json.loads((folder / "metadata.json").read_text())["evaluation"]["model"] == e["name"]


@pytest.mark.parametrize("case, message", [
    ("metadata_list", r"metadata\.json must hold a JSON object, not list"),
    ("metadata_deep", r"metadata\.json is nested deeper than 64 levels"),
    ("config_10000_deep", r"cannot read .*config\.json: maximum recursion depth"),
    ("config_not_json", r"cannot read .*config\.json"),
])
def test_malformed_preset_json_is_one_load_error(case, message, tmp_path, tmp_path_factory):
    """A preset file that is valid JSON of the wrong shape, absurdly nested or not JSON at all: a
    LoadError naming the file, before anything walks or builds it (no RecursionError, no
    AttributeError on a list)."""
    from ssl_zoo.loader import LoadError

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    preset = ex["preset"]
    if case == "metadata_list":
        (preset / "metadata.json").write_text("[1, 2, 3]")
    elif case == "metadata_deep":
        meta = json.loads((preset / "metadata.json").read_text())
        deep = {}
        for _ in range(80):
            deep = {"x": deep}
        meta["deep"] = deep
        (preset / "metadata.json").write_text(json.dumps(meta))
    elif case == "config_10000_deep":
        (preset / "config.json").write_text("[" * 10_000 + "]" * 10_000)
    else:
        (preset / "config.json").write_bytes(b"\x89HDF\r\n\x1a\n binary")
    with pytest.raises(LoadError, match=message):
        load_backbone(preset, verify=False)


def test_a_config_naming_a_non_keras_module_is_refused_and_runs_nothing(tmp_path, tmp_path_factory):
    """A layer entry rewritten to {"module": "os", "class_name": "system", "config": {...}}: Keras'
    safe-mode deserialisation refuses it (LoadError naming config.json) and no command runs."""
    from ssl_zoo.loader import LoadError

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    config = json.loads((ex["preset"] / "config.json").read_text())
    planted = tmp_path / "planted"
    config["config"]["layers"][1].update(module="os", class_name="system", config={"command": f"touch {planted}"})
    (ex["preset"] / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=r"config\.json: cannot build the model"):
        load_backbone(ex["preset"], verify=False)
    assert not planted.exists()


def test_weights_that_are_not_hdf5_or_hold_links_are_refused(tmp_path, tmp_path_factory):
    """Bytes that are not HDF5: a LoadError saying so (not h5py's OSError). An HDF5 external link
    (an array read from another file, anywhere, at load time) or a soft link: refused by name, in a
    preset and inside a .keras archive."""
    import shutil
    import zipfile

    import h5py

    from ssl_zoo.loader import LoadError

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    weights = ex["preset"] / "model.weights.h5"
    good = weights.read_bytes()
    weights.write_bytes(b"not HDF5 " * 100)
    with pytest.raises(LoadError, match=r"model\.weights\.h5 is not an HDF5 weights file"):
        load_backbone(ex["preset"], verify=False)
    (tmp_path / "elsewhere.h5").write_bytes(good)
    for kind in ("ExternalLink", "SoftLink"):
        weights.write_bytes(good)
        with h5py.File(weights, "a") as f:
            arrays = []
            f.visititems(lambda n, o: arrays.append(n) if isinstance(o, h5py.Dataset) else None)
            del f[arrays[0]]
            f[arrays[0]] = (h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "/" + arrays[0]) if kind == "ExternalLink"
                            else h5py.SoftLink("/" + arrays[1]))
        with pytest.raises(LoadError, match=rf"holds HDF5 links .*\({kind}\)"):
            load_backbone(ex["preset"], verify=False)
    # The same weights inside a .keras archive.
    archive = tmp_path / "linked.keras"
    with zipfile.ZipFile(ex["keras"]) as src, zipfile.ZipFile(archive, "w") as dst:
        for item in src.infolist():
            data = weights.read_bytes() if item.filename.endswith(".weights.h5") else src.read(item)
            dst.writestr(item, data)
    with pytest.raises(LoadError, match=r"linked\.keras \(model\.weights\.h5\) holds HDF5 links"):
        load_backbone(archive, verify=False)
    shutil.rmtree(ex["out"])
