"""The preset format, in one place: file names, metadata, hashing, atomic writes, save and load.

As keras-hub's `src/utils/preset_utils.py` does for its models, this module owns everything a
preset folder is; `ssl_zoo.export`, `ssl_zoo.loader`, `ssl_zoo.hub`, `ssl_zoo.zoo` and
`ssl_zoo.cards` call into it and it imports none of them back. A preset folder (= the Hugging
Face Hub repository of an entry):

    config.json          `keras.saving.serialize_keras_object(backbone)` (+ "ssl_zoo": arch, format)
    model.weights.h5     the backbone's weights
    metadata.json        versions, method, arch, input spec, stage shapes, sha256 of the weights,
                         recipe, training history, evaluation report, the method's "diagnostics"
    README.md            the model card (written by the caller's card writer, ssl_zoo.cards)
    probe_per_stage.png  its per-stage probe plot

Atomicity: every artefact is written into a temporary sibling (`.NAME.partial-*`) and renamed
into place; the previous artefact is moved aside first and deleted only after the new one is in
place. A write killed at any point leaves either the old or the new artefact at the destination,
never a half-written one. (Directories cannot be swapped in one rename on POSIX; if a kill lands
in the microseconds between the two renames, the next write or load restores the previous
artefact from its `.NAME.old-*` sibling.)

Reading (`load_preset`) refuses anything but a complete, untampered, fully matching preset;
`ssl_zoo.loader`'s docstring lists the checks for users.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from ssl_zoo.errors import SslZooError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"
PLOT_FILE = "probe_per_stage.png"
# The files a complete preset folder holds (the plot only when there is an evaluation report).
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, CARD_FILE)
# metadata.json's copy inside a SavedModel export.
SAVED_MODEL_METADATA = "ssl_zoo_metadata.json"
FORMAT_VERSION = 1
# Fault injection for the interrupted-export test: when set to an artefact kind ("preset",
# "saved_model", "keras"), the writer touches $SSL_ZOO_EXPORT_STALL_MARKER halfway through that
# artefact and sleeps, so that the test can SIGKILL a real export mid-write.
_STALL_ENV = "SSL_ZOO_EXPORT_STALL_AT"
_STALL_MARKER_ENV = "SSL_ZOO_EXPORT_STALL_MARKER"
_PARTIAL_LOAD_WARNINGS = ("Skipping", "freshly-initialized", "could not be loaded", "did not load")


class LoadError(SslZooError, ValueError):
    """A backbone could not be loaded; the message says which file and why."""


class UnsafeModelError(LoadError):
    """The file would run code on load or call: a Keras `Lambda` layer, or SavedModel ops beyond pure
    tensor computations (file access, Python callbacks)."""


class IntegrityError(LoadError):
    pass


# ---- files -------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LoadError(f"cannot read {path}: {e}") from e


def read_metadata(folder: str | os.PathLike) -> dict:
    """A preset folder's metadata.json."""
    return read_json(Path(folder) / METADATA_FILE)


def diagnostics(meta: dict) -> dict:
    """The method's diagnostics recorded in `meta` ({name: report}). Metadata written before the
    generic section existed kept relative patch's context check at the top level."""
    if meta.get("diagnostics"):
        return dict(meta["diagnostics"])
    return {"context_check": meta["context_check"]} if meta.get("context_check") else {}


def _siblings(dest: Path, kind: str) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.{kind}-*"))


def recover(dest: str | os.PathLike) -> None:
    """Restores `dest` from a `.old` sibling if an earlier swap was killed between its renames,
    and removes temporary folders that killed exports left behind."""
    dest = Path(dest)
    olds = _siblings(dest, "old")
    if not dest.exists() and olds:
        os.replace(olds[-1], dest)
        log.warning("restored %s from %s (an earlier export was interrupted)", dest, olds[-1].name)
        olds = olds[:-1]
    for p in olds + _siblings(dest, "partial"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def fsync_tree(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike):
    """Yields an empty temporary sibling of `dest`; on success it replaces `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old) if dest.is_dir() else (old.rmdir(), os.replace(dest, old))
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike):
    """Yields a temporary path beside `dest` (same suffix); on success it is renamed to `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for p in _siblings(dest, "partial"):
        p.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.partial-", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(obj, dest: str | os.PathLike, sort_keys: bool = False) -> Path:
    """`obj` as indented JSON at `dest`, atomically."""
    with atomic_file(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
    return Path(dest)


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies the files of `src` into the existing folder `dst`."""
    shutil.copytree(src, dst, dirs_exist_ok=True)


def stall_point(kind: str, tmp: Path) -> None:
    if os.environ.get(_STALL_ENV) == kind:
        marker = os.environ.get(_STALL_MARKER_ENV)
        if marker:
            Path(marker).write_text(str(tmp))
        time.sleep(600)


# ---- writing -----------------------------------------------------------------------------------
def write_preset(backbone, dest: str | os.PathLike, metadata: dict,
                 write_card: Callable[[dict, Path], Any] | None = None) -> Path:
    """The preset folder of `backbone`, atomically: config, weights, `metadata` with the weights'
    sha256, and `write_card(metadata, folder)` (the card and its plot) when given."""
    import keras

    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        config = keras.saving.serialize_keras_object(backbone)
        config["ssl_zoo"] = {"arch": metadata.get("arch"), "format_version": FORMAT_VERSION}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        backbone.save_weights(tmp / WEIGHTS_FILE)
        stall_point("preset", tmp)
        metadata = dict(metadata)
        metadata["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_file(tmp / WEIGHTS_FILE)}
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if write_card is not None:
            write_card(metadata, tmp)
    return dest


# ---- reading -----------------------------------------------------------------------------------
def is_preset_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / METADATA_FILE).is_file()


def verify_weights(path: Path, expected: dict[str, str | None]) -> str:
    """Checks the file's sha256 against every expected value ({where: sha256}: metadata, registry)."""
    actual = sha256_file(path)
    for where, value in expected.items():
        if value and value != actual:
            raise IntegrityError(
                f"{path}: sha256 {actual} does not match the {value} that {where} expects. The weight file was "
                f"modified or corrupted after export; refusing it."
            )
    return actual


def check_preset_folder(folder: str | os.PathLike) -> dict:
    """The preset's metadata, after checking that the folder is complete and its weights are the
    ones its metadata.json names (what is pushed to the Hub)."""
    folder = Path(folder)
    missing = [f for f in PRESET_FILES if not (folder / f).is_file()]
    if missing:
        raise LoadError(f"{folder} is not a complete preset folder: missing {missing} (write one with `ssl-zoo export`)")
    meta = read_metadata(folder)
    weights = meta.get("weights") or {}
    verify_weights(folder / weights.get("file", WEIGHTS_FILE), {str(folder / METADATA_FILE): weights.get("sha256")})
    return meta


def unsafe_error(e: Exception, what) -> UnsafeModelError | None:
    """The UnsafeModelError to raise for Keras' safe-mode refusal `e`, or None if it is another error."""
    text = str(e)
    if "safe_mode" in text or "Lambda" in text:
        return UnsafeModelError(
            f"{what} was refused: it contains code that Keras would have to execute to load it "
            f"(e.g. a Lambda layer), and ssl_zoo keeps Keras safe_mode on. ssl_zoo backbones are built "
            f"from stock layers only. Keras said: {text.splitlines()[0]}"
        )
    return None


def count_h5_arrays(path: Path) -> int:
    import h5py

    arrays = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.append(name) if isinstance(obj, h5py.Dataset) else None)
    return len(arrays)


def check_stages(model, meta: dict, where) -> None:
    """Every named stage is there, with the shape metadata.json records."""
    from ssl_zoo.backbones import STAGES

    names = {layer.name for layer in model.layers}
    missing = [s for s in STAGES if s not in names]
    if missing:
        raise LoadError(f"{where}: the model has no stage layers {missing}; an ssl_zoo backbone names "
                        f"its stages {list(STAGES)}")
    for stage, shape in (meta.get("stages") or {}).items():
        actual = [d for d in model.get_layer(stage).output.shape[1:]]
        if list(shape) != actual:
            raise LoadError(f"{where}: stage {stage} has shape {actual}, metadata.json says {shape}")


def load_preset(folder: str | os.PathLike, metadata: dict | None = None, *, verify: bool = True,
                expected_sha256: dict[str, str] | None = None, origin: str | None = None):
    """The backbone of a preset folder, checked (module docstring). `expected_sha256`: the zoo
    registry's {file: sha256} for the entry `origin`, checked besides metadata.json's."""
    import keras

    folder = Path(folder)
    meta = read_metadata(folder) if metadata is None else metadata
    weights = folder / (meta.get("weights") or {}).get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise LoadError(f"preset {folder} has no weight file {weights.name}")
    if verify:
        expected = {f"{folder / METADATA_FILE}": (meta.get("weights") or {}).get("sha256")}
        if expected_sha256:
            expected[f"the zoo registry entry {origin!r}"] = expected_sha256.get(weights.name)
        if not any(expected.values()):
            raise IntegrityError(f"{weights}: no sha256 recorded in metadata.json or the registry to check it against")
        verify_weights(weights, expected)
    config = read_json(folder / CONFIG_FILE)
    config.pop("ssl_zoo", None)
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as e:
        raise (unsafe_error(e, folder / CONFIG_FILE) or LoadError(f"{folder / CONFIG_FILE}: cannot build the model: {e}")) from e
    n_arrays, n_vars = count_h5_arrays(weights), len(model.weights)
    if n_arrays != n_vars:
        raise LoadError(f"{weights} holds {n_arrays} arrays but the architecture in config.json has {n_vars} "
                        f"variables: refusing a partial load")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(weights)
        except Exception as e:
            raise LoadError(f"{weights} does not match the architecture in config.json: {str(e).splitlines()[0]}") from e
    # Keras reports some skipped (left freshly initialised) variables only as warnings.
    skipped = [str(w.message) for w in caught if any(t in str(w.message) for t in _PARTIAL_LOAD_WARNINGS)]
    if skipped:
        raise LoadError(f"{weights}: Keras skipped part of the weights ({skipped[0]}): refusing a partial load")
    for w in caught:
        if not any(t in str(w.message) for t in _PARTIAL_LOAD_WARNINGS):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    check_stages(model, meta, folder)
    return model
