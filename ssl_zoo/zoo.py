"""The zoo's registry of released entries.

An entry names a released backbone (method + backbone + data, e.g. `rotnet_resnet18w025_cifar10`),
says where its preset lives and carries the sha256 of its config.json, weight file and metadata.json
(which lists the sha256 of every other file of the preset, `ssl_zoo.preset`), which the loader checks
before a single weight is read. The registry is package data (`ssl_zoo/zoo/entries.json`) and the
presets shipped with the package live beside it in `ssl_zoo/zoo/presets/<entry>/`, so a
pip-installed `ssl_zoo` finds them without network access. `$SSL_ZOO_REGISTRY` points at another
registry file (a private zoo, or a test); its relative preset paths are read from its own folder.

Every number in an entry is copied from the preset's metadata and the evaluation report by
`register_preset` (used by `ssl-zoo export --register`); entries are never edited by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ssl_zoo.errors import SslZooError
from ssl_zoo.preset import (CONFIG_FILE, MANIFEST_KEY, METADATA_FILE, IntegrityError, atomic_dir,
                            check_preset_folder, copy_tree, read_metadata, round_accuracy, sha256_file, write_json)

REGISTRY_ENV = "SSL_ZOO_REGISTRY"
ZOO_DIR = Path(__file__).resolve().parent / "zoo"
REGISTRY_FILE = "entries.json"


class ZooError(SslZooError, KeyError):
    def __str__(self) -> str:  # KeyError repr()s its message; ours is a sentence
        return str(self.args[0]) if self.args else ""


def registry_path(path: str | os.PathLike | None = None) -> Path:
    """The registry file in use: `path`, else `$SSL_ZOO_REGISTRY`, else the packaged one."""
    if path:
        return Path(path)
    env = os.environ.get(REGISTRY_ENV)
    return Path(env) if env else ZOO_DIR / REGISTRY_FILE


def load_registry(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    p = registry_path(path)
    if not p.exists():
        return []
    data = json.loads(p.read_text())
    entries = data.get("entries", [])
    for e in entries:
        e.setdefault("_registry_dir", str(p.parent))
    return entries


def list_entries(path=None) -> list[dict[str, Any]]:
    return sorted(load_registry(path), key=lambda e: e["name"])


def get_entry(name: str, path=None) -> dict[str, Any]:
    entries = load_registry(path)
    for e in entries:
        if e["name"] == name:
            return e
    known = sorted(e["name"] for e in entries)
    raise ZooError(f"no zoo entry named {name!r} in {registry_path(path)}; known entries: {known}")


def is_entry(name: str, path=None) -> bool:
    return any(e["name"] == name for e in load_registry(path))


def preset_dir(entry: dict[str, Any]) -> Path | None:
    """The local preset folder of an entry, or None when it is only on the Hub."""
    rel = entry.get("preset")
    if not rel:
        return None
    p = Path(rel)
    return p if p.is_absolute() else Path(entry.get("_registry_dir", ZOO_DIR)) / p


def save_registry(entries: list[dict[str, Any]], path=None) -> Path:
    clean = [{k: v for k, v in e.items() if not k.startswith("_")} for e in sorted(entries, key=lambda e: e["name"])]
    return write_json({"entries": clean}, registry_path(path), sort_keys=True)


def entry_from_preset(preset: str | os.PathLike, *, location: str | None = None, hf: str | None = None) -> dict[str, Any]:
    """A registry entry whose every value is read from the preset's metadata.json, and the sha256 of
    its config.json, weight file and metadata.json (the files the loader reads; metadata.json's
    manifest covers the card and plot)."""
    preset = Path(preset)
    meta = read_metadata(preset)
    ev = meta.get("evaluation") or {}
    summary = ev.get("summary") or {}
    entry = {
        "name": meta["name"],
        "method": meta["method"]["name"],
        "backbone": meta["backbone_label"],
        "arch": meta["arch"],
        "params": meta["parameters"],
        "data": meta.get("data", {}).get("source"),
        "image_size": meta["input"]["image_size"],
        "preset": location if location is not None else str(preset),
        "hf": hf,
        "sha256": {meta["weights"]["file"]: meta["weights"]["sha256"],
                   CONFIG_FILE: sha256_file(preset / CONFIG_FILE), METADATA_FILE: sha256_file(preset / METADATA_FILE)},
        "probe": None,
    }
    if summary:
        # Rounded (preset.round_accuracy): evaluation reports hold float32 noise (0.7315000295639038).
        entry["probe"] = {
            "dataset": ev.get("dataset"),
            "best_stage": summary["best_stage"],
            "accuracy": round_accuracy(summary["best_stage_probe"]),
            "random_init_best": round_accuracy(summary["random_init_best_probe"]),
            "knn": round_accuracy(summary["knn"]),
        }
    return entry


def register_preset(preset: str | os.PathLike, *, registry=None, copy_into_zoo: bool = True, hf: str | None = None) -> dict[str, Any]:
    """Adds (or replaces) the entry for an exported preset folder.

    With `copy_into_zoo` the preset is copied next to the registry under `presets/<name>/`
    (atomically, see `ssl_zoo.preset.atomic_dir`) and the entry points there by a relative path,
    which is what makes a released entry loadable from a pip install. The preset must pass every
    check a load makes (`ssl_zoo.preset.check_preset_folder`) and hold a file manifest: the entry
    records the sha256 of what was checked.
    """
    preset = Path(preset)
    reg = registry_path(registry)
    meta = check_preset_folder(preset)
    if not isinstance(meta.get(MANIFEST_KEY), dict):
        raise IntegrityError(f"{preset / METADATA_FILE} has no file manifest ({MANIFEST_KEY!r}): a preset written "
                             f"before ssl_zoo recorded one gets it from `ssl_zoo.preset.write_manifest(folder)`; "
                             f"refusing to register it without")
    name = meta["name"]
    location = None
    if copy_into_zoo:
        dest = reg.parent / "presets" / name
        if dest.resolve() != preset.resolve():
            with atomic_dir(dest) as tmp:
                copy_tree(preset, tmp)
        location = f"presets/{name}"
    entry = entry_from_preset(preset, location=location, hf=hf)
    if location is None:
        entry["preset"] = str(preset.resolve())
    entries = [e for e in load_registry(reg) if e["name"] != name] + [entry]
    save_registry(entries, reg)
    return entry


def format_table(entries: list[dict[str, Any]]) -> str:
    """The `ssl-zoo list` table: name, method, backbone, params, pretraining data, probe accuracy.

    The probe names its own dataset: entries pretrained on different data are compared on one
    evaluation set, and a bare percentage next to the pretraining data would read as if measured there.
    """
    header = ("name", "method", "backbone", "params", "pretrained on", "probe acc (best stage, eval data)",
              "random-init floor", "location")
    rows = [header]
    for e in entries:
        probe = e.get("probe") or {}
        eval_data = str(probe.get("dataset") or "?").removeprefix("tfds:")
        acc = f"{100 * probe['accuracy']:.2f} % ({probe['best_stage']}, {eval_data})" if probe else "not evaluated"
        floor = f"{100 * probe['random_init_best']:.2f} %" if probe else "-"
        local = ("package" if not Path(e["preset"]).is_absolute() else e["preset"]) if e.get("preset") else None
        where = " + ".join(x for x in (local, e.get("hf")) if x) or "-"
        params = f"{e['params'] / 1e6:.2f} M" if e.get("params") else "-"
        rows.append((e["name"], e["method"], e["backbone"], params, e.get("data") or "-", acc, floor, where))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(rows) == 1:
        lines.append(f"(no entries in {registry_path()})")
    return "\n".join(lines)
