"""Release artefacts from a trained model: a Keras preset (the Hugging Face checkpoint), a
TensorFlow SavedModel and a `.keras` file, each written atomically.

Layout of `ssl-zoo export RUN --name ENTRY --out DIR`:

    DIR/preset/          keras-hub style preset = the Hub repository's content
        config.json        `keras.saving.serialize_keras_object(backbone)` (+ "ssl_zoo": arch), with
                           plain batch norm (`synchronized: false`: loads on TF, JAX and PyTorch)
        model.weights.h5   the backbone's weights (pretext head dropped by name)
        metadata.json      versions, method, arch, input spec, stage shapes, sha256 of the
                           weights, recipe, training history, evaluation report, the
                           method's diagnostics (`ssl-zoo diagnose`)
        README.md          the generated model card (ssl_zoo.cards)
        probe_per_stage.png
    DIR/saved_model/     TF SavedModel; `serving_default` takes float32 [N, H, W, 3] RGB images
                         in [0, 255] ("images"), `serving_uint8` the same as uint8; both return
                         {"pooled", "stem", "stage1" … "stage4"}. Loads with plain
                         `tf.saved_model.load`, no ssl_zoo needed.
    DIR/ENTRY.keras      the functional backbone (stock Keras layers, loads with safe_mode=True;
                         plain batch norm, as in the preset)
    DIR/ENTRY.keras.sha256  its sha256 (`sha256sum -c` format), checked by `ssl_zoo.load_backbone`
    DIR/release.json     the release manifest: {path: sha256} of every file above, written last

An export is one transaction: every artefact is written into one temporary sibling of DIR
(`.DIR.partial-*`), the release manifest last, and that folder is swapped in for DIR as a whole
(`ssl_zoo.preset.atomic_dir`; a kill between its two renames is undone by the next export's
recovery). A kill at any point leaves DIR holding the previous release or the new one, whole, and
the next export removes what the killed one left. DIR must be an export folder (or absent or
empty): it is replaced as a whole, so a release written with fewer formats has only those.
The preset format itself (file names, metadata hashing, atomic writers, reading and checking)
belongs to `ssl_zoo.preset`, and the card to `ssl_zoo.cards`, which this module calls.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from ssl_zoo.errors import SslZooError
from ssl_zoo.preset import (FORMAT_VERSION, METADATA_FILE, RELEASE_MANIFEST, SAVED_MODEL_METADATA, SHA256_SUFFIX,
                            WEIGHTS_FILE, atomic_dir, atomic_file, read_json, stall_point,
                            write_keras_with_plain_batch_norm, write_preset, write_release_manifest,
                            write_sha256_sidecar)

log = logging.getLogger(__name__)


class ExportError(SslZooError, ValueError):
    pass


# ---- reading a trained run -----------------------------------------------------------------
def read_run(source: str | os.PathLike):
    """(backbone, run.json or None, history.json or None) from a run folder or a `.keras` file.

    A run folder is what `ssl-zoo train --out` wrote; its `backbone.keras` is preferred, else the
    backbone is taken by name out of `pretext_model.keras` (the pretext head is dropped).
    """
    from ssl_zoo.loader import load_raw_backbone

    path = Path(source)
    run = history = None
    if path.is_dir():
        run_dir = path
        for candidate in ("backbone.keras", "pretext_model.keras"):
            if (path / candidate).exists():
                path = path / candidate
                break
        else:
            raise ExportError(f"{source} holds neither backbone.keras nor pretext_model.keras")
    else:
        run_dir = path.parent
    if (run_dir / "run.json").exists():
        run = json.loads((run_dir / "run.json").read_text())
    if (run_dir / "history.json").exists():
        history = json.loads((run_dir / "history.json").read_text())
    if run is not None:
        reports = {n: json.loads((run_dir / n).read_text()) for n in _run_report_files(run) if (run_dir / n).is_file()}
        if reports:
            run = {**run, "run_reports": reports}
    return load_raw_backbone(str(path)), run, history


def _run_report_files(run: dict) -> tuple[str, ...]:
    """The JSON files the run's method writes for its card (`PretextMethod.run_reports`)."""
    from ssl_zoo.methods import METHODS

    cls = METHODS.get(((run.get("method") or {}).get("name")))
    return tuple(getattr(cls, "run_reports", ()))


# ---- metadata --------------------------------------------------------------------------------
def stage_shapes(backbone) -> dict[str, list]:
    from ssl_zoo.backbones import STAGES

    return {s: [d for d in backbone.get_layer(s).output.shape[1:]] for s in STAGES}


def backbone_label(arch: dict) -> str:
    depth, width, stem = arch.get("depth", "?"), arch.get("width", 1), arch.get("stem", "imagenet")
    if arch.get("arch", "resnet") == "resnet":
        return f"ResNet-{depth} w{width:g} ({stem} stem)"
    if arch.get("arch") == "split_resnet":
        return f"split ResNet-{depth} w{width:g} (two w{width / 2:g} halves on grey and on colour, {stem} stem)"
    return str(arch.get("arch"))


def _arch_from_model(backbone) -> dict:
    """Input statistics read from the model itself (they are layer constants, not guesses)."""
    import numpy as np

    import keras

    # The input normalisation: the layer named "normalize", or the first Normalization layer (the
    # split backbone's grey half, "l_normalize"; its colour half is only rescaled).
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization)]
    norm = next((layer for layer in norms if layer.name == "normalize"), norms[0] if norms else None)
    if norm is None:
        return {"mean": None, "std": None}
    # float32 constants: rounded to 6 digits so that 0.4914 reads as 0.4914, not 0.49140000343.
    mean = [round(float(v), 6) for v in np.ravel(norm.mean)] if norm.mean is not None else None
    var = norm.variance
    std = [round(float(np.sqrt(v)), 6) for v in np.ravel(var)] if var is not None else None
    return {"mean": mean, "std": std}


def history_summary(history: list[dict] | None) -> dict | None:
    if not history:
        return None
    evals = [h for h in history if "eval_accuracy" in h]
    return {
        "epochs": history[-1]["epoch"],
        "steps": history[-1]["step"],
        "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
        "images_per_second_mean": round(sum(h.get("images_per_second", 0.0) for h in history) / len(history), 1),
        "final_train_loss": history[-1].get("train_loss"),
        "final_train_accuracy": history[-1].get("train_accuracy"),
        "pretext_eval_accuracy": evals[-1]["eval_accuracy"] if evals else None,
        "pretext_eval_loss": evals[-1].get("eval_loss") if evals else None,
        "pretext_eval_epoch": evals[-1]["epoch"] if evals else None,
    }


def build_metadata(backbone, name: str, run: dict | None = None, history: list | None = None,
                   report: dict | None = None, hardware: str | None = None,
                   diagnostics: dict | None = None) -> dict[str, Any]:
    """metadata.json of a preset. `diagnostics`: {name: report} from `ssl-zoo diagnose` (the
    method's own checks of its run, e.g. relative patch's "context_check"); each report's "run"
    (a local path) is left out."""
    import keras
    import tensorflow as tf

    import ssl_zoo

    recipe = (run or {}).get("recipe") or {}
    method = dict((run or {}).get("method") or {"name": "unknown"})
    arch = dict(recipe.get("backbone") or method.get("backbone") or {})
    stats = _arch_from_model(backbone)
    # None for a fully convolutional backbone trained on crops (tiles, patches) of the data's images:
    # the data's image size is not what it takes, so it must not be written as if it were.
    image_size = backbone.input.shape[1] or arch.get("image_size")
    run_hw = (run or {}).get("hardware")
    return {
        "format": "ssl_zoo.preset",
        "format_version": FORMAT_VERSION,
        "name": name,
        "ssl_zoo_version": ssl_zoo.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "method": method,
        "arch": arch,
        "backbone_label": backbone_label(arch) if arch else backbone.name,
        "parameters": int(backbone.count_params()),
        "input": {
            "image_size": image_size,
            "channels": 3,
            "color": "RGB",
            "value_range": [0, 255],
            "dtype": "float32 (uint8 accepted by ssl_zoo.load_backbone and the SavedModel's serving_uint8)",
            "mean": stats["mean"],
            "std": stats["std"],
            "normalization": "inside the model: x / 255, then (x - mean) / std per channel",
        },
        "stages": stage_shapes(backbone),
        "weights": {"file": WEIGHTS_FILE, "sha256": None},
        "data": {"source": (recipe.get("data") or {}).get("source")},
        "recipe": recipe or None,
        "run": {k: v for k, v in (run or {}).items() if k in ("steps", "replicas")} or None,
        "history": history,
        "run_reports": (run or {}).get("run_reports"),
        "training": history_summary(history),
        "hardware": run_hw or hardware,
        "hardware_source": "run.json" if run_hw else ("export --hardware" if hardware else None),
        "evaluation": report,
        "diagnostics": ({name: {k: v for k, v in d.items() if k != "run"} for name, d in diagnostics.items()}
                        if diagnostics else None),
        "exported": {"platform": platform.platform(), "python": platform.python_version()},
    }


# ---- writers ----------------------------------------------------------------------------------
def serving_module(backbone):
    """(tracked stage model, float32 fn, uint8 fn) for the SavedModel's signatures."""
    import tensorflow as tf

    from ssl_zoo.backbones import STAGES, stage_model

    staged = stage_model(backbone, STAGES)
    size = backbone.input.shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    def serve_float(images):
        return staged(images, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    def serve_uint8(images):
        return staged(tf.cast(images, tf.float32), training=False)

    return staged, serve_float, serve_uint8


def write_saved_model(backbone, dest: str | os.PathLike, metadata: dict | None = None) -> Path:
    """TF SavedModel with `serving_default` (float32) and `serving_uint8` signatures, atomically."""
    import keras

    dest = Path(dest)
    staged, serve_float, serve_uint8 = serving_module(backbone)
    archive = keras.export.ExportArchive()
    archive.track(staged)
    archive.add_endpoint("serving_default", serve_float)
    archive.add_endpoint("serving_uint8", serve_uint8)
    with atomic_dir(dest) as tmp:
        # write_out refuses an existing folder on some versions: give it a fresh one inside tmp.
        archive.write_out(str(tmp / "sm"), verbose=False)
        for p in (tmp / "sm").iterdir():
            os.replace(p, tmp / p.name)
        (tmp / "sm").rmdir()
        stall_point("saved_model", tmp)
        if metadata is not None:
            (tmp / SAVED_MODEL_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return dest


ONNX_OPSET = 17
FORMATS = ("preset", "saved_model", "keras", "onnx")


def write_onnx(backbone, dest: str | os.PathLike, name: str | None = None, opset: int = ONNX_OPSET) -> Path:
    """`NAME.onnx`: one input `images` (float32 RGB in [0, 255], NHWC, any batch; any size for an
    any-size backbone) and one output per stage (`stem` ... `pooled`), as the SavedModel's
    `serving_default`.

    The route is the stage model's graph with its variables frozen to constants, converted by
    tf2onnx. Keras's own `model.export(format="onnx")` (and tf2onnx on the live function) keep the
    Normalization layer's mean and variance as resource captures, which become two extra required
    graph inputs that onnxruntime refuses; frozen, they are constants like the weights."""
    try:
        import onnx
        import tf2onnx
    except ImportError as e:
        raise ExportError("ONNX export needs tf2onnx and onnx: pip install \"ssl_zoo[onnx]\"") from e
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from ssl_zoo.backbones import STAGES

    dest = Path(dest)
    _, serve_float, _ = serving_module(backbone)
    concrete = serve_float.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    # The function returns {stage: tensor}; its flat outputs come in sorted key order.
    stage_of = dict(zip((t.name for t in frozen.outputs), sorted(concrete.structured_outputs)))
    proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
                                              output_names=list(stage_of), opset=opset)
    # Plain names for users: "images" in, one output per stage.
    renames = {frozen.inputs[0].name: "images", **stage_of}
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames.get(value.name, value.name)
    assert sorted(o.name for o in proto.graph.output) == sorted(STAGES), [o.name for o in proto.graph.output]
    proto.producer_name = "ssl_zoo"
    if name:
        onnx.helper.set_model_props(proto, {"ssl_zoo_entry": name})
    onnx.checker.check_model(proto)
    with atomic_file(dest) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        stall_point("onnx", tmp)
    return dest


def write_keras(backbone, dest: str | os.PathLike) -> Path:
    """The `.keras` file, with plain batch norm in its config (ssl_zoo.preset.plain_batch_norm), and
    its sha256 sidecar `dest.sha256` (written after it: a kill between the two leaves a file that
    loads with a warning that it is unchecked, never a sidecar that refuses a good file)."""
    dest = Path(dest)
    with atomic_file(dest) as tmp:
        backbone.save(tmp)
        write_keras_with_plain_batch_norm(tmp, tmp)
        stall_point("keras", tmp)
    write_sha256_sidecar(dest)
    return dest


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_header_from_file(run: dict | None, recipe_file: str | os.PathLike) -> dict:
    """The run's recipe with the header comment of `recipe_file` as it stands at release.

    The header of a recipe says what its released entry measured, so the copy a run recorded when
    it started describes the previous release. The file's header is only taken when every value of
    the file equals the run's: then the file in the repository reproduces these weights, which a
    release must guarantee anyway. Any difference is an ExportError naming the keys.
    """
    from ssl_zoo.train.recipe import load_recipe, recipe_from_dict

    recorded = dict((run or {}).get("recipe") or {})
    if not recorded:
        raise ExportError(f"--recipe {recipe_file}: the run has no recorded recipe (run.json) to compare it with")
    current = json.loads(json.dumps(load_recipe(recipe_file).to_dict()))  # tuples -> lists, as in run.json
    # The run's recipe as today's code reads it: a setting added since the run started (an optimizer's
    # beta_1) takes its default, which is what the run trained with.
    as_read = json.loads(json.dumps(recipe_from_dict(dict(recorded), name=recorded.get("name", "run")).to_dict()))
    a = _flatten({k: v for k, v in current.items() if k != "description"})
    b = _flatten({k: v for k, v in as_read.items() if k != "description"})
    differ = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    if differ:
        detail = ", ".join(f"{k}: file {a.get(k, '<absent>')!r} vs run {b.get(k, '<absent>')!r}" for k in differ[:6])
        raise ExportError(f"recipe file {recipe_file} does not reproduce this run ({detail}); set the file to "
                          "the values the run used before releasing it")
    return {**recorded, "description": current.get("description", "")}


def read_diagnostics(diagnostics: str | os.PathLike | dict | None = None,
                     legacy: str | os.PathLike | dict | None = None) -> dict | None:
    """{name: report} from an `ssl-zoo diagnose` report or its file. `legacy`: the `--context-check`
    alias, which may also be a bare context-check report (`ssl-zoo context-check` before it
    became `diagnose`)."""
    if diagnostics is not None and legacy is not None:
        raise ExportError("give the diagnostics once (--diagnostics, or its former name --context-check)")
    value = diagnostics if diagnostics is not None else legacy
    if isinstance(value, (str, os.PathLike)):
        value = read_json(value)
    if value and legacy is not None and not all(isinstance(v, dict) for v in value.values()):
        # A bare report (its values are numbers and strings), not {name: report}.
        value = {"context_check": value}
    if value is not None and not all(isinstance(v, dict) for v in value.values()):
        raise ExportError("diagnostics must be {name: report}, as `ssl-zoo diagnose --out` writes them")
    return value


def export(source, name: str | None, out: str | os.PathLike, *, eval_report: str | os.PathLike | dict | None = None,
           formats=("preset", "saved_model", "keras"), hardware: str | None = None,
           recipe_file: str | os.PathLike | None = None,
           diagnostics: str | os.PathLike | dict | None = None,
           context_check: str | os.PathLike | dict | None = None) -> dict[str, str]:
    """Exports the backbone of a trained run (folder or .keras file) as release artefacts; or, given a
    released entry (zoo name, hf://, preset or export folder), writes other formats of it (ONNX, a
    SavedModel) with its metadata as released.

    `recipe_file`: the recipe in the repository; it must hold exactly the values the run used, and
    its header (expected and measured numbers) replaces the one recorded when the run started.
    `diagnostics`: an `ssl-zoo diagnose --out` report of this run (or its path), recorded in the
    metadata and shown in the card by the method. `context_check`: the former name, which also
    takes a bare context-check report (written before `ssl-zoo diagnose` existed).
    All artefacts are one transaction (module docstring): `out` ends up holding the previous release
    or this one, whole. Returns {"preset": path, "saved_model": path, "keras": path} for the formats
    written.
    """
    released = released_preset(source)
    if released is not None:
        return _export_released(released, name, out, formats=formats, eval_report=eval_report,
                                given=dict(hardware=hardware, recipe_file=recipe_file, diagnostics=diagnostics,
                                           context_check=context_check))
    if not name:
        raise ExportError("give --name for an export of a training run (method_backbone_data, e.g. "
                          "rotnet_resnet18w025_cifar10)")
    if isinstance(source, (str, os.PathLike)):
        backbone, run, history = read_run(source)
    else:
        backbone, run, history = source, None, None
    if recipe_file is not None:
        run = {**(run or {}), "recipe": recipe_header_from_file(run, recipe_file)}
    report = _released_report(eval_report, name)
    metadata = build_metadata(backbone, name, run, history, report, hardware,
                              read_diagnostics(diagnostics, legacy=context_check))
    return _write_release(backbone, metadata, name, out, formats)


def released_preset(source):
    """The checked preset a zoo name, an hf:// address, a preset folder or an export folder points to,
    as (backbone, metadata); None for a training run folder or a `.keras` file (read_run's sources)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    if path.is_file() or (path.is_dir() and any((path / n).exists() for n in ("run.json", "backbone.keras",
                                                                                "pretext_model.keras"))):
        return None
    from ssl_zoo.loader import load_raw_backbone, resolve_source

    resolved = resolve_source(source)
    if resolved.kind != "preset":
        return None
    return load_raw_backbone(source), dict(resolved.metadata or {})  # hashes checked as a load would


def _released_report(eval_report, name: str) -> dict | None:
    """The evaluation report as released: its "model" is the path the evaluation was given (a run
    folder on the machine that made it), which names nothing for a user, so it becomes the entry."""
    report = eval_report
    if isinstance(eval_report, (str, os.PathLike)):
        report = json.loads(Path(eval_report).read_text())
    if report is None:
        return None
    return {**report, "model": name}


def _export_released(released, name: str | None, out, *, formats, eval_report, given: dict) -> dict[str, str]:
    """Another set of artefacts (ONNX, a SavedModel) of a released entry: its checked backbone and its
    metadata as released (training record, evaluation, card), under `name` (default its own)."""
    extra = sorted(k for k, v in given.items() if v is not None)
    if extra:
        flags = {"recipe_file": "--recipe", "hardware": "--hardware", "diagnostics": "--diagnostics",
                 "context_check": "--context-check"}
        raise ExportError(f"re-exporting a released preset keeps its recorded training; "
                          f"{', '.join(flags[k] for k in extra)} only apply to a training run")
    backbone, metadata = released
    name = name or metadata.get("name")
    if not name:
        raise ExportError("give --name: the preset's metadata names no entry")
    metadata["name"] = name
    if eval_report is not None:
        metadata["evaluation"] = _released_report(eval_report, name)
    return _write_release(backbone, metadata, name, out, formats)


def _write_release(backbone, metadata: dict, name: str, out, formats) -> dict[str, str]:
    out = Path(out)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"unknown export formats {unknown or '(none given)'}; known: {', '.join(FORMATS)}")
    check_export_destination(out)
    written: dict[str, str] = {}
    with atomic_dir(out, stall="release_swap") as tmp:
        if "preset" in formats:
            from ssl_zoo.cards import write_card_files

            write_preset(backbone, tmp / "preset", metadata, write_card=write_card_files)
            metadata = read_json(tmp / "preset" / METADATA_FILE)  # now with the sha256 and the manifest
            written["preset"] = str(out / "preset")
        if "saved_model" in formats:
            write_saved_model(backbone, tmp / "saved_model", metadata)
            written["saved_model"] = str(out / "saved_model")
        if "keras" in formats:
            write_keras(backbone, tmp / f"{name}.keras")
            written["keras"] = str(out / f"{name}.keras")
        if "onnx" in formats:
            write_onnx(backbone, tmp / f"{name}.onnx", name)
            written["onnx"] = str(out / f"{name}.onnx")
        stall_point("release", tmp)
        write_release_manifest(tmp, name)
    return written


_EXPORT_NAMES = ("preset", "saved_model", RELEASE_MANIFEST)


def check_export_destination(out: Path) -> None:
    """`out` is replaced as a whole: refuse anything but an absent or empty folder or an earlier export
    (preset/, saved_model/, *.keras and its sidecar, release.json, and what the per-artefact writers
    of earlier versions left: `.preset.partial-*`, ...)."""
    if out.resolve() == Path.cwd().resolve() or out.name in ("", ".", ".."):
        raise ExportError(f"--out {out}: give the export its own folder (it is replaced as a whole)")
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"--out {out} is a file; an export writes a folder")

    def ours(name: str) -> bool:
        return (name in _EXPORT_NAMES or name.endswith(".keras") or name.endswith(".keras" + SHA256_SUFFIX)
                or name.endswith(".onnx")
                or (name.startswith(".") and (".partial-" in name or ".old-" in name)))

    foreign = sorted(p.name for p in out.iterdir() if not ours(p.name))
    if foreign:
        raise ExportError(f"--out {out} holds files that are not an ssl_zoo export ({', '.join(foreign[:5])}); an export "
                          f"replaces its folder as a whole, so give it an empty or earlier export folder")
