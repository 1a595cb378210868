"""Loading backbones from zoo names, preset folders, SavedModels, .keras files and hf:// repos.

    backbone = ssl_zoo.load_backbone("rotnet_resnet18w025_cifar10")   # zoo name
    backbone = ssl_zoo.load_backbone("export/x/preset")                # preset folder
    backbone = ssl_zoo.load_backbone("hf://org/name@v1")               # Hub (cache, offline, revision)
    backbone = ssl_zoo.load_backbone("x.keras", stages=["stage3", "pooled"])
    frozen = ssl_zoo.load_backbone("export/x/saved_model")             # TFSMLayer, inference only

What is checked, so that a load never half-succeeds:
- Keras safe mode stays on: a model that would run arbitrary Python (a `Lambda` layer) is refused
  with `UnsafeModelError`.
- Batch norm is plain in what is loaded: a preset or `.keras` file that still says
  `synchronized: true` (released before that, or a training run's) is read with `false`, on every
  backend, so that it loads under JAX and PyTorch too (`ssl_zoo.preset.plain_batch_norm`).
- Every file must match its sha256 (`IntegrityError`, naming the file and both hashes): a preset's
  config.json, weights, card and plot the manifest in its metadata.json, the weights also the
  metadata's weights record, and, for a zoo entry, config.json, weights and metadata.json the
  registry's; a `.keras` file its `NAME.keras.sha256` sidecar and the export's release.json; a
  SavedModel's files that release.json. A file named by a path that leaves its preset folder
  (`"file": "../x.h5"`) is refused. Whatever is loaded without a recorded hash (an older preset's
  config.json, a preset's metadata.json loaded by path rather than zoo name, a `.keras` file with
  no sidecar, such as a training run's) is loaded with an `UnhashedFileWarning` naming it.
- The weight file must hold exactly as many arrays as the architecture has variables, each of the
  right shape (Keras raises on shape mismatches; we add the count check), and every stage must
  have the shape metadata.json records.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from ssl_zoo.preset import (  # noqa: F401  (the load errors users catch are re-exported here)
    SAVED_MODEL_METADATA, IntegrityError, LoadError, UnhashedFileWarning, UnsafeModelError, check_keras_file_weights,
    check_stages, is_preset_folder, keras_file_for_any_backend, load_preset, read_json, read_metadata, unsafe_error,
    verify_keras_file, verify_saved_model, verify_weights)


@dataclasses.dataclass
class ResolvedSource:
    kind: str  # "preset" | "saved_model" | "keras"
    path: Path
    origin: str  # what the user asked for
    metadata: dict[str, Any] | None = None
    expected_sha256: dict[str, str] | None = None  # from the zoo registry


def _from_path(path: Path, origin: str) -> ResolvedSource:
    if not path.exists():
        # An export swaps its whole folder: the previous one may be aside as a sibling of a parent.
        aside = next((found for p in (path, *path.parents[:2]) if (found := sorted(p.parent.glob(f".{p.name}.old-*")))), [])
        hint = (f"; an interrupted export left the previous version in {aside[-1]} (the next export to this "
                f"destination restores it, or rename it back)") if aside else ""
        raise LoadError(f"{path} does not exist{hint}")
    if path.is_dir():
        if is_preset_folder(path):
            return ResolvedSource("preset", path, origin, read_metadata(path))
        if (path / "saved_model.pb").is_file():
            meta = path / SAVED_MODEL_METADATA
            return ResolvedSource("saved_model", path, origin, read_json(meta) if meta.is_file() else None)
        if is_preset_folder(path / "preset"):  # an `ssl-zoo export --out` folder
            return _from_path(path / "preset", origin)
        for name in ("backbone.keras", "pretext_model.keras"):  # an `ssl-zoo train --out` folder
            if (path / name).is_file():
                return ResolvedSource("keras", path / name, origin)
        raise LoadError(f"{path} is neither a preset folder (config.json + metadata.json), a SavedModel "
                        f"(saved_model.pb), an export folder nor a training run folder")
    if path.is_file() and path.suffix == ".keras":
        return ResolvedSource("keras", path, origin)
    raise LoadError(f"cannot load a backbone from {path}: expected a .keras file or a folder")


def resolve_source(source: str | os.PathLike) -> ResolvedSource:
    """Where `source` points: zoo name, hf:// repo, preset / SavedModel / export / run folder, .keras."""
    from ssl_zoo import hub, zoo

    src = str(source)
    if hub.is_hf(src):
        return _from_path(hub.download(src), src)
    path = Path(src).expanduser()
    if path.exists() or path.suffix == ".keras" or os.sep in src:
        return _from_path(path, src)
    if zoo.is_entry(src):
        entry = zoo.get_entry(src)
        local = zoo.preset_dir(entry)
        if local is not None and (local.exists() or not entry.get("hf")):
            resolved = _from_path(local, src)
        elif entry.get("hf"):
            resolved = _from_path(hub.download(entry["hf"]), src)
        else:
            raise LoadError(f"zoo entry {src!r} has neither a local preset nor an hf:// location")
        resolved.expected_sha256 = entry.get("sha256")
        return resolved
    known = [e["name"] for e in zoo.list_entries()]
    raise LoadError(f"{src!r} is not a file or folder, not an hf:// address and not a zoo entry "
                    f"(known entries: {known}; see `ssl-zoo list`)")


def _load_preset(res: ResolvedSource, verify: bool = True):
    return load_preset(res.path, res.metadata or {}, verify=verify, expected_sha256=res.expected_sha256,
                       origin=res.origin)


def _load_keras_file(path: Path, verify: bool = True):
    import keras

    from ssl_zoo.methods.base import BACKBONE

    if verify:
        verify_keras_file(path)
    check_keras_file_weights(path)
    try:
        # A file with synchronised batch norm (written before releases used plain batch norm, or a
        # training run's) is read through a copy with plain batch norm: see preset.plain_batch_norm.
        with keras_file_for_any_backend(path) as readable:
            model = keras.saving.load_model(readable, safe_mode=True, compile=False)
    except LoadError:
        raise
    except Exception as e:
        raise (unsafe_error(e, path) or LoadError(f"{path}: cannot load: {e}")) from e
    try:
        backbone = model.get_layer(BACKBONE)  # a pretext model: the head is dropped by name
    except ValueError:
        backbone = model
    check_stages(backbone, {}, path)
    return backbone


def load_raw_backbone(source: str | os.PathLike):
    """The functional backbone (named stages intact) from any Keras source. Safe mode stays on.

    Accepts a .keras backbone or pretext model, a preset folder, an export or run folder, a zoo
    name or hf:// (not a SavedModel: that is an inference graph, not a Keras architecture).
    """
    res = resolve_source(source)
    if res.kind == "preset":
        return _load_preset(res)
    if res.kind == "keras":
        return _load_keras_file(res.path)
    raise LoadError(f"{source} is a SavedModel: it holds an inference graph, not a Keras architecture; "
                    f"load the preset or .keras export to evaluate or re-initialise it")


def input_size_for(backbone, image_size: int | None, name: str) -> int:
    """The image size to feed `backbone`: `image_size`, or its fixed input size when None. A
    ConfigError naming `name` when the two disagree (a backbone exported with a fixed input layer
    cannot take other sizes) or when neither says one."""
    from ssl_zoo.errors import ConfigError

    fixed_size = backbone.input.shape[1]
    if image_size is None:
        if not fixed_size:
            raise ConfigError(f"{name}: backbone takes images of any size; say which with image_size "
                              f"(--image-size), e.g. 32 for CIFAR-10")
        return int(fixed_size)
    if fixed_size and int(image_size) != int(fixed_size):
        raise ConfigError(f"{name}: backbone takes {fixed_size} px images, not image_size={image_size}")
    return int(image_size)


def load_metadata(source: str | os.PathLike) -> dict | None:
    """The metadata.json of a preset / SavedModel export / zoo entry (None for a bare .keras file)."""
    return resolve_source(source).metadata


def _select(model, stages, name: str):
    import keras

    from ssl_zoo.backbones import stage_model

    if stages is None:
        return model
    if isinstance(stages, str):
        selected = keras.Model(model.input, model.get_layer(stages).output, name=f"{name}_{stages}")
    else:
        selected = stage_model(model, tuple(stages))
    selected.trainable = model.trainable  # the wrapper shares the layers; its flag is what fit reads
    return selected


def _refuse_impure_saved_model(path: Path) -> None:
    """A SavedModel is a program: account for every op in it, and for every route by which loading
    runs any (ssl_zoo.saved_model_ops), before TensorFlow reads it."""
    from google.protobuf.message import DecodeError

    from ssl_zoo.saved_model_ops import audit

    try:
        found = audit(path)
    except DecodeError as e:
        raise LoadError(f"{path}/saved_model.pb is not a SavedModel protobuf ({e})") from e
    reasons = []
    if found.refused:
        ops = "; ".join(f"{op} (in {', '.join(sorted(where)[:2])})" for op, where in sorted(found.refused.items()))
        reasons.append(f"it holds ops that are not pure tensor computations: {ops}")
    reasons.extend(found.problems[:5] + ([f"and {len(found.problems) - 5} more"] if len(found.problems) > 5 else []))
    if reasons:
        raise UnsafeModelError(
            f"{path}: refused, nothing of it was run: {'; '.join(reasons)}. A backbone reads no files and runs "
            f"no Python; see ssl_zoo.saved_model_ops (PURE_TENSOR_OPS, and what else is checked)")


def _load_saved_model(res: ResolvedSource, stages, trainable: bool):
    import keras

    from ssl_zoo.backbones import STAGES

    if trainable:
        raise LoadError(f"{res.path} is a SavedModel: it loads as a frozen inference layer (keras TFSMLayer) "
                        f"and cannot be fine-tuned. Pass trainable=False, or load the preset or .keras export")
    verify_saved_model(res.path)
    _refuse_impure_saved_model(res.path)
    layer = keras.layers.TFSMLayer(str(res.path), call_endpoint="serving_default", trainable=False, name="saved_model")
    spec = layer._reloaded_obj.signatures["serving_default"].structured_input_signature[1]["images"]
    size = spec.shape[1]
    meta_size = ((res.metadata or {}).get("input") or {}).get("image_size")
    if meta_size and size and meta_size != size:
        raise LoadError(f"{res.path}: signature takes {size} px images, metadata says {meta_size}")
    inputs = keras.Input((size, size, 3), dtype="float32", name="images")
    outputs = layer(inputs)
    available = sorted(outputs) if isinstance(outputs, dict) else []
    wanted = ["pooled"] if stages is None else ([stages] if isinstance(stages, str) else list(stages))
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise LoadError(f"{res.path}: the serving signature has no outputs {unknown}; it has {available} "
                        f"(ssl_zoo stages: {list(STAGES)})")
    if stages is None or isinstance(stages, str):
        out = outputs[wanted[0]]
    else:
        out = {s: outputs[s] for s in wanted}
    model = keras.Model(inputs, out, name="saved_model_backbone")
    model.trainable = False
    return model


def load_backbone(source: str | os.PathLike, stages: str | Sequence[str] | None = None,
                  trainable: bool | None = None, verify: bool = True):
    """A `keras.Model` from RGB images in [0, 255] (uint8 or float, at the entry's image size) to features.

    Args:
      source: zoo name, `hf://org/name[@revision]`, preset folder, SavedModel folder, `.keras`
        file, or an `ssl-zoo export` / `ssl-zoo train` output folder.
      stages: None for the pooled features; a stage name for that stage's output; a list of names
        for a dict {stage: output}. Stages: stem, stage1 … stage4, pooled.
      trainable: whether the weights train under `fit`. None means True for Keras sources and
        False for a SavedModel, which is wrapped in a frozen `keras.layers.TFSMLayer` (an
        inference graph cannot be fine-tuned; `trainable=True` with a SavedModel is an error).
        A non-trainable Keras backbone also runs its batch norm in inference mode.
      verify: check every file's sha256 (on by default; turn off only to debug a file).

    The model normalises its inputs itself (the preprocessing recorded in metadata.json is part
    of the model), so callers pass raw pixels.
    """
    res = resolve_source(source)
    if res.kind == "saved_model":
        return _load_saved_model(res, stages, bool(trainable))
    model = _load_preset(res, verify) if res.kind == "preset" else _load_keras_file(res.path, verify)
    model.trainable = True if trainable is None else bool(trainable)
    from ssl_zoo.backbones import keep_fixed_layers_frozen

    keep_fixed_layers_frozen(model)
    return _select(model, stages, model.name)
