"""The preset format, in one place: file names, metadata, hashing, atomic writes, save and load.

As keras-hub's `src/utils/preset_utils.py` does for its models, this module owns everything a
preset folder is; `ssl_zoo.export`, `ssl_zoo.loader`, `ssl_zoo.hub`, `ssl_zoo.zoo` and
`ssl_zoo.cards` call into it and it imports none of them back. A preset folder (= the Hugging
Face Hub repository of an entry):

    config.json          `keras.saving.serialize_keras_object(backbone)` (+ "ssl_zoo": arch, format),
                         batch norm plain (`synchronized: false`) so that it loads on every backend
    model.weights.h5     the backbone's weights
    metadata.json        versions, method, arch, input spec, stage shapes, sha256 of the weights,
                         recipe, training history, evaluation report, the method's "diagnostics",
                         "batch_norm" (what the config holds and what training used), and "files":
                         the manifest, {file name: sha256} of every other file of the folder
                         (config, weights, card, plot). It is written last, after every file it
                         lists; metadata.json's own sha256 is in the zoo registry entry.
    README.md            the model card (written by the caller's card writer, ssl_zoo.cards)
    probe_per_stage.png  its per-stage probe plot

Atomicity: every artefact is written into a temporary sibling (`.NAME.partial-*`) and renamed
into place; the previous artefact is moved aside first and deleted only after the new one is in
place. A write killed at any point leaves either the old or the new artefact at the destination,
never a half-written one. (Directories cannot be swapped in one rename on POSIX; if a kill lands
in the microseconds between the two renames, the next write or load restores the previous
artefact from its `.NAME.old-*` sibling.)

Integrity (`verify_preset`, run by `load_preset` and `check_preset_folder`): every file the
manifest lists must be in the folder, by a plain name (no path may leave the folder: a weights
"file" of `../x.h5` is refused), with that sha256; the weight file must also match metadata's
"weights" record and, for a zoo entry, the registry's hashes of config.json, model.weights.h5 and
metadata.json (`ssl_zoo.zoo.register_preset` writes them). A file that is loaded without any
recorded hash (a preset written before the manifest existed, a preset's metadata.json loaded by
path, a `.keras` file without its `NAME.keras.sha256` sidecar) is loaded with an
`UnhashedFileWarning` naming it. A `.keras` export carries its sha256 in that sidecar
(`sha256sum` format) and in the export's `release.json` (`ssl_zoo.export`).

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
# A method's own plot of its training (DeepCluster's NMI and cluster sizes), when it draws one.
TRAINING_PLOT_FILE = "training.png"
# The files a complete preset folder holds (the plot only when there is an evaluation report).
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, CARD_FILE)
# metadata.json's copy inside a SavedModel export.
SAVED_MODEL_METADATA = "ssl_zoo_metadata.json"
FORMAT_VERSION = 1
# Fault injection for the interrupted-export tests: when set to a point ("preset", "saved_model",
# "keras": halfway through that artefact; "release": every artefact written, not the release
# manifest; "release_swap": the previous export moved aside, the new one not yet in place), the
# writer writes the temporary path to $SSL_ZOO_EXPORT_STALL_MARKER and sleeps, so that the test can
# SIGKILL a real export there.
_STALL_ENV = "SSL_ZOO_EXPORT_STALL_AT"
_STALL_MARKER_ENV = "SSL_ZOO_EXPORT_STALL_MARKER"
_PARTIAL_LOAD_WARNINGS = ("Skipping", "freshly-initialized", "could not be loaded", "did not load")


# Accuracies that release files state as numbers (the registry's probe, the card's model-index) are
# fractions rounded to 4 decimals, the 2 decimals of the percentages printed beside them: evaluation
# reports hold float32 values such as 0.7315000295639038, which would be written 0.7315.
ACCURACY_DECIMALS = 4


def round_accuracy(value: float | None) -> float | None:
    return None if value is None else round(float(value), ACCURACY_DECIMALS)


class LoadError(SslZooError, ValueError):
    """A backbone could not be loaded; the message says which file and why."""


class UnsafeModelError(LoadError):
    """The file would run code on load or call: a Keras `Lambda` layer, or SavedModel ops beyond pure
    tensor computations (file access, Python callbacks)."""


class IntegrityError(LoadError):
    """A file does not match the sha256 recorded for it, is missing from its manifest's folder, or is
    named by a path that leaves its folder; the message names the file."""


class UnhashedFileWarning(UserWarning):
    """A file was loaded although no sha256 was recorded to check it against."""


MANIFEST_KEY = "files"  # metadata.json's manifest: {file name: sha256}
SHA256_SUFFIX = ".sha256"  # the sidecar of a `.keras` export: NAME.keras.sha256


# ---- files -------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# A preset's JSON files are small (config.json of a ResNet-50: ~100 KB) and shallow (nesting ~12);
# a file far beyond either is refused before it is parsed or walked.
MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64


def json_depth(value) -> int:
    """Nesting depth of parsed JSON, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from a preset or release file, read defensively: size and nesting limits, and
    an object (not a list or a number) at the top; anything else is a LoadError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise LoadError(f"{path} is {path.stat().st_size:,} bytes, over the {MAX_JSON_BYTES:,} a preset file may be")
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise LoadError(f"cannot read {path}: {str(e)[:200]}") from e
    if not isinstance(data, dict):
        raise LoadError(f"{path} must hold a JSON object, not {type(data).__name__}")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise LoadError(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels: not a file this zoo writes")
    return data


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
def atomic_dir(dest: str | os.PathLike, stall: str | None = None):
    """Yields an empty temporary sibling of `dest`; on success it replaces `dest`. `stall`: the
    fault-injection point (`stall_point`) between the two renames of the swap."""
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
            if stall:
                stall_point(stall, old)
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



# ---- integrity: manifests, sidecars, contained paths ------------------------------------------
def unhashed(path: str | os.PathLike, why: str) -> None:
    """Says plainly that `path` is being loaded without a hash to check it against."""
    warnings.warn(f"{path}: loaded without an integrity check: {why}", UnhashedFileWarning, stacklevel=3)


def contained(folder: str | os.PathLike, name, where) -> Path:
    """`folder / name`, refused (IntegrityError naming `where`) unless `name` is a plain relative path
    inside `folder` (no `..`, not absolute). Symbolic links are not refused: the Hugging Face cache
    links every file of a snapshot to its blob, and what a file holds is checked by its sha256."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        raise IntegrityError(f"{where}: the file name {name!r} is not a plain name inside {folder}; refusing it "
                             f"(a preset's files must stay inside its folder)")
    return folder / name


def verify_file(path: Path, expected: dict[str, str | None], what: str = "file") -> str:
    """Checks the file's sha256 against every expected value ({where: sha256}: metadata, registry)."""
    actual = sha256_file(path)
    for where, value in expected.items():
        if value and value != actual:
            raise IntegrityError(
                f"{path}: sha256 {actual} does not match the {value} that {where} expects. The {what} was "
                f"modified or corrupted after export; refusing it."
            )
    return actual


def verify_weights(path: Path, expected: dict[str, str | None]) -> str:
    return verify_file(path, expected, "weight file")


def preset_file_names(folder: str | os.PathLike, weights_file: str = WEIGHTS_FILE) -> list[str]:
    """The files a preset's manifest lists: every one of config, weights, card and plots present."""
    folder = Path(folder)
    return [n for n in (CONFIG_FILE, weights_file, CARD_FILE, PLOT_FILE, TRAINING_PLOT_FILE) if (folder / n).is_file()]


def manifest_of(folder: str | os.PathLike, names) -> dict[str, str]:
    folder = Path(folder)
    return {n: sha256_file(folder / n) for n in names}


def write_manifest(folder: str | os.PathLike) -> dict:
    """(Re)writes the manifest in a preset folder's metadata.json from the files as they are now, after
    checking the weight file against metadata's "weights" record; returns the metadata. Called by the
    writers after they change a file of a preset (the card, config.json), and once to give presets
    released before the manifest existed theirs. metadata.json changes, so a zoo entry must then be
    re-registered (`ssl_zoo.zoo.register_preset`)."""
    folder = Path(folder)
    meta = read_metadata(folder)
    weights = meta.get("weights") or {}
    name = weights.get("file", WEIGHTS_FILE)
    verify_weights(contained(folder, name, folder / METADATA_FILE), {str(folder / METADATA_FILE): weights.get("sha256")})
    meta[MANIFEST_KEY] = manifest_of(folder, preset_file_names(folder, name))
    write_json(meta, folder / METADATA_FILE)
    return meta


def refresh_manifest(folder: str | os.PathLike) -> None:
    """After a file of a preset was rewritten (its card): updates the manifest if the folder has one."""
    folder = Path(folder)
    if (folder / METADATA_FILE).is_file() and MANIFEST_KEY in read_metadata(folder):
        write_manifest(folder)


def verify_preset(folder: str | os.PathLike, meta: dict, registry: dict[str, str] | None = None,
                  origin: str | None = None) -> Path:
    """Checks every file of a preset folder against its manifest, the weights record and (for a zoo
    entry) the registry's hashes (module docstring); returns the weight file's path."""
    folder = Path(folder)
    meta_file = folder / METADATA_FILE
    registry = dict(registry or {})
    reg_where = f"the zoo registry entry {origin!r}"
    if registry.get(METADATA_FILE):
        verify_file(meta_file, {reg_where: registry[METADATA_FILE]}, "metadata file")
    elif registry:
        unhashed(meta_file, f"{reg_where} records no sha256 for it (registered before the registry did)")
    else:
        unhashed(meta_file, "only a zoo registry entry records its sha256, and this preset was not loaded "
                            "by a zoo name; the hashes it lists catch corruption, not a rewrite of it")
    weights = meta.get("weights") or {}
    if not isinstance(weights, dict):
        raise IntegrityError(f"{meta_file}: 'weights' must be {{file, sha256}}, not {weights!r}")
    weights_path = contained(folder, weights.get("file", WEIGHTS_FILE), meta_file)
    manifest = meta.get(MANIFEST_KEY)
    if manifest is not None and not isinstance(manifest, dict):
        raise IntegrityError(f"{meta_file}: its {MANIFEST_KEY!r} manifest must be {{file name: sha256}}")
    manifest = manifest or {}
    for name, digest in manifest.items():
        path = contained(folder, name, meta_file)
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in the manifest of {meta_file} but missing; refusing the preset")
        if name not in (weights_path.name, CONFIG_FILE):  # those two are checked below, with the registry
            verify_file(path, {str(meta_file): digest})
    if not weights_path.is_file():
        raise LoadError(f"preset {folder} has no weight file {weights_path.name}")
    expected = {str(meta_file): weights.get("sha256")}
    expected[f"the manifest of {meta_file}"] = manifest.get(weights_path.name)
    expected[reg_where] = registry.get(weights_path.name)
    if not any(expected.values()):
        raise IntegrityError(f"{weights_path}: no sha256 recorded in metadata.json or the registry to check it against")
    verify_weights(weights_path, expected)
    config = folder / CONFIG_FILE
    expected = {f"the manifest of {meta_file}": manifest.get(CONFIG_FILE), reg_where: registry.get(CONFIG_FILE)}
    if any(expected.values()):
        verify_file(config, expected, "config file")
    else:
        unhashed(config, f"{meta_file} has no file manifest (a preset written before ssl_zoo recorded one; "
                         f"`ssl_zoo.preset.write_manifest` adds it) and no registry entry records its sha256")
    return weights_path


RELEASE_MANIFEST = "release.json"  # an export folder's manifest, written last (ssl_zoo.export)


def write_release_manifest(folder: str | os.PathLike, name: str) -> Path:
    """`folder/release.json`: {relative path: sha256} of every file in the export folder `folder`."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != RELEASE_MANIFEST}
    path = folder / RELEASE_MANIFEST
    path.write_text(json.dumps({"format": "ssl_zoo.release", "format_version": FORMAT_VERSION, "name": name,
                                "files": files}, indent=2) + "\n")
    return path


def release_hashes(export_dir: Path) -> dict[str, str] | None:
    """{relative path: sha256} from `export_dir`'s release.json, or None if it has none."""
    path = export_dir / RELEASE_MANIFEST
    if not path.is_file():
        return None
    files = read_json(path).get("files") if isinstance(read_json(path), dict) else None
    if not isinstance(files, dict):
        raise IntegrityError(f"{path}: not an ssl_zoo release manifest (no 'files' mapping)")
    return files


def verify_keras_file(path: Path) -> None:
    """A `.keras` file against its sidecar `NAME.keras.sha256` and/or the release.json beside it; a
    file with neither is loaded with an `UnhashedFileWarning`."""
    expected = {}
    sidecar = read_sha256_sidecar(path)
    if sidecar:
        expected[str(path.with_name(path.name + SHA256_SUFFIX))] = sidecar
    release = release_hashes(path.parent)
    if release and path.name in release:
        expected[str(path.parent / RELEASE_MANIFEST)] = release[path.name]
    if expected:
        verify_file(path, expected, ".keras file")
    else:
        unhashed(path, f"no {path.name}{SHA256_SUFFIX} sidecar and no {RELEASE_MANIFEST} listing it")


def verify_saved_model(path: Path) -> None:
    """Every file of a SavedModel folder against the release.json of the export folder holding it
    (none unlisted, none missing); without one, an `UnhashedFileWarning`."""
    release = release_hashes(path.parent)
    prefix = f"{path.name}/"
    listed = {k[len(prefix):]: v for k, v in (release or {}).items() if k.startswith(prefix)}
    if not listed:
        unhashed(path, f"no {RELEASE_MANIFEST} beside it lists its files")
        return
    where = str(path.parent / RELEASE_MANIFEST)
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    for rel in sorted(present - set(listed)):
        raise IntegrityError(f"{path / rel}: not listed in {where}; refusing the SavedModel")
    for rel, digest in sorted(listed.items()):
        file = contained(path, rel, where)
        if not file.is_file():
            raise IntegrityError(f"{file}: listed in {where} but missing; refusing the SavedModel")
        verify_file(file, {where: digest}, "SavedModel file")


def read_sha256_sidecar(path: Path) -> str | None:
    """The sha256 in `path`'s sidecar `NAME.sha256` (`sha256sum` format), or None if there is none."""
    sidecar = path.with_name(path.name + SHA256_SUFFIX)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text(errors="replace").split()
    if not fields or len(fields[0]) != 64:
        raise IntegrityError(f"{sidecar}: not a sha256 sidecar (expected '<sha256>  {path.name}')")
    return fields[0].lower()


def write_sha256_sidecar(path: Path, dest_name: str | None = None) -> Path:
    """Writes `path`'s sidecar (`sha256sum -c` reads it); `dest_name`: the name the file will have."""
    name = dest_name or path.name
    sidecar = path.with_name(name + SHA256_SUFFIX)
    with atomic_file(sidecar) as tmp:
        tmp.write_text(f"{sha256_file(path)}  {name}\n")
    return sidecar


# ---- batch norm: plain in every released config ------------------------------------------------
# The trainer builds BatchNormalization(synchronized=True) so that batch statistics are the same
# whatever the replica count. That is a training-time choice, and one that only Keras' TensorFlow
# backend accepts: a config that says `synchronized: true` fails to load under KERAS_BACKEND=jax or
# torch ("Argument synchronized=True is only supported with the TensorFlow backend"). It changes
# nothing in inference mode or on one replica, and a plain and a synchronised layer hold the same
# four variables (gamma, beta, moving mean and variance), so released configs say `false` and the
# weights are the trained ones, byte for byte.
BATCH_NORM_CLASS = "BatchNormalization"


def plain_batch_norm(config) -> int:
    """Sets `synchronized: false` in every BatchNormalization of a serialized Keras config (nested
    models included), in place; returns how many layers said true."""
    changed = 0
    if isinstance(config, dict):
        inner = config.get("config")
        if config.get("class_name") == BATCH_NORM_CLASS and isinstance(inner, dict) and inner.get("synchronized"):
            inner["synchronized"] = False
            changed += 1
        for value in config.values():
            changed += plain_batch_norm(value)
    elif isinstance(config, list):
        for value in config:
            changed += plain_batch_norm(value)
    return changed


KERAS_CONFIG_MEMBER = "config.json"  # the architecture inside a `.keras` zip


def write_keras_with_plain_batch_norm(src: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Copies the `.keras` file `src` to `dest` with plain batch norm in its config.json (every other
    member byte for byte); returns how many layers said synchronized. `dest` may be `src`."""
    import zipfile

    src, dest = Path(src), Path(dest)
    with zipfile.ZipFile(src) as zin:
        members = [(info, zin.read(info)) for info in zin.infolist()]
    names = [info.filename for info, _ in members]
    if KERAS_CONFIG_MEMBER not in names:
        raise LoadError(f"{src}: not a Keras v3 file (no {KERAS_CONFIG_MEMBER} inside)")
    changed = 0
    with atomic_file(dest) as tmp, zipfile.ZipFile(tmp, "w") as zout:
        for info, data in members:
            if info.filename == KERAS_CONFIG_MEMBER:
                try:
                    config = json.loads(data)
                except json.JSONDecodeError as e:
                    raise LoadError(f"{src}: its {KERAS_CONFIG_MEMBER} is not JSON ({e})") from e
                changed = plain_batch_norm(config)
                data = json.dumps(config).encode() if changed else data
            zout.writestr(info, data)
    return changed


def keras_file_has_synchronized_batch_norm(path: str | os.PathLike) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read(KERAS_CONFIG_MEMBER))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return False  # not ours to diagnose here: Keras' own loader names the problem
    return plain_batch_norm(config) > 0


def batch_norm_record(config_rewritten: bool = False) -> dict:
    """metadata.json's "batch_norm": what the released config holds (always "plain");
    `config_rewritten` for an entry whose config.json was rewritten from synchronized to plain after
    its first release (weights untouched)."""
    record = {"config": "plain"}
    if config_rewritten:
        record["config_rewritten"] = True
    return record


def rewrite_preset_with_plain_batch_norm(folder: str | os.PathLike) -> int:
    """Re-releases a preset folder released with synchronised batch norm: config.json gets plain batch
    norm (the same JSON layout as `write_preset`'s, only those values change) and metadata.json a
    "batch_norm" record and the file manifest; the weight file is not touched (its sha256 is checked
    before and after).
    Returns how many layers were rewritten (0: already plain, nothing written). The card is the
    caller's to re-render (`ssl-zoo card NAME --in-preset`)."""
    folder = Path(folder)
    meta = check_preset_folder(folder)
    before = sha256_file(folder / meta["weights"]["file"])
    config = read_json(folder / CONFIG_FILE)
    changed = plain_batch_norm(config)
    if not changed:
        return 0  # already plain (rewritten before, or exported so)
    write_json(config, folder / CONFIG_FILE)
    meta["batch_norm"] = batch_norm_record(config_rewritten=True)
    write_json(meta, folder / METADATA_FILE)
    meta = write_manifest(folder)
    if sha256_file(folder / meta["weights"]["file"]) != before:
        raise IntegrityError(f"{folder}: the weight file changed while its config was rewritten")
    return changed


@contextlib.contextmanager
def keras_file_for_any_backend(path: str | os.PathLike):
    """Yields `path` itself, or, when its config has synchronised batch norm (a file written before
    releases used plain batch norm, or a training run's), a temporary copy with plain batch norm
    (module comment above). Always, not only off TensorFlow: a file then loads as the same model on
    every backend, old or new, and on TensorFlow the two differ only in training mode across several
    replicas, which no ssl_zoo command runs on a loaded backbone."""
    path = Path(path)
    if not keras_file_has_synchronized_batch_norm(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_keras_") as tmp:
        copy = Path(tmp) / path.name
        write_keras_with_plain_batch_norm(path, copy)
        yield copy


# ---- writing -----------------------------------------------------------------------------------
def write_preset(backbone, dest: str | os.PathLike, metadata: dict,
                 write_card: Callable[[dict, Path], Any] | None = None) -> Path:
    """The preset folder of `backbone`, atomically: config, weights, `write_card(metadata, folder)`
    (the card and its plot) when given, and last `metadata` with the weights' sha256 and the
    manifest of every file written before it."""
    import keras

    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        config = keras.saving.serialize_keras_object(backbone)
        plain_batch_norm(config)
        config["ssl_zoo"] = {"arch": metadata.get("arch"), "format_version": FORMAT_VERSION}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        backbone.save_weights(tmp / WEIGHTS_FILE)
        stall_point("preset", tmp)
        metadata = dict(metadata)
        metadata["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_file(tmp / WEIGHTS_FILE)}
        metadata["batch_norm"] = batch_norm_record()
        metadata.pop(MANIFEST_KEY, None)
        if write_card is not None:
            write_card(metadata, tmp)
        metadata[MANIFEST_KEY] = manifest_of(tmp, preset_file_names(tmp))
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return dest


# ---- reading -----------------------------------------------------------------------------------
def is_preset_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / METADATA_FILE).is_file()


def check_preset_folder(folder: str | os.PathLike) -> dict:
    """The preset's metadata, after checking that the folder is complete and every file is the one
    its metadata.json's manifest names (`verify_preset`; what is pushed to the Hub and registered)."""
    folder = Path(folder)
    missing = [f for f in PRESET_FILES if not (folder / f).is_file()]
    if missing:
        raise LoadError(f"{folder} is not a complete preset folder: missing {missing} (write one with `ssl-zoo export`)")
    meta = read_metadata(folder)
    with warnings.catch_warnings():
        # metadata.json itself has no hash outside a registry: that is what registering records.
        warnings.filterwarnings("ignore", category=UnhashedFileWarning, message=f".*{METADATA_FILE}")
        verify_preset(folder, meta)
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
    """The number of arrays in a weights file, after refusing a file that is not HDF5 and one with
    any link but a plain (hard) one: an external link reads another file (anywhere on the disk) when
    the weights load, and a soft link can alias one array under two names."""
    import h5py

    if not h5py.is_hdf5(path):
        raise LoadError(f"{path} is not an HDF5 weights file (no HDF5 signature)")
    with h5py.File(path, "r") as f:
        return _count_plain_h5_arrays(f, path)


def _count_plain_h5_arrays(f, where) -> int:
    import h5py

    arrays, links = [], []

    def visit(name, link):
        if not isinstance(link, h5py.HardLink):
            links.append(f"{name} ({type(link).__name__})")

    f.visititems_links(visit)
    if links:
        raise LoadError(f"{where} holds HDF5 links that are not plain arrays or groups: {', '.join(links[:3])}; "
                        f"refusing it (an external link reads another file at load time)")
    f.visititems(lambda name, obj: arrays.append(name) if isinstance(obj, h5py.Dataset) else None)
    return len(arrays)


def check_keras_file_weights(path: Path) -> None:
    """The same refusal for the weights inside a `.keras` archive (read in memory, never extracted)."""
    import io
    import zipfile

    import h5py

    try:
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith(".weights.h5")), None)
            data = z.read(member) if member else None
    except (zipfile.BadZipFile, OSError) as e:
        raise LoadError(f"{path} is not a .keras archive: {e}") from e
    if data is None:
        return
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            _count_plain_h5_arrays(f, f"{path} ({member})")
    except OSError as e:
        raise LoadError(f"{path}: {member} is not an HDF5 weights file: {e}") from e


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
    if verify:
        weights = verify_preset(folder, meta, expected_sha256, origin)
    else:
        weights = contained(folder, (meta.get("weights") or {}).get("file", WEIGHTS_FILE), folder / METADATA_FILE)
        unhashed(folder, "verify=False")
    if not weights.is_file():
        raise LoadError(f"preset {folder} has no weight file {weights.name}")
    config = read_json(folder / CONFIG_FILE)
    config.pop("ssl_zoo", None)
    # Presets released before batch norm was plain say synchronized: true. They are rewritten on every
    # backend, TensorFlow included, so that one preset is one model wherever it loads (the comment
    # above `plain_batch_norm`); safe mode stays on.
    plain_batch_norm(config)
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
