"""ssl_zoo.load_backbone from every kind of source, and every way a load must fail loudly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import release_fixtures as rf
import ssl_zoo
from ssl_zoo.loader import IntegrityError, LoadError, UnsafeModelError, load_backbone, load_raw_backbone


def _reference(tmp_path_factory, x):
    import keras

    ex = rf.exported(tmp_path_factory)
    backbone = keras.saving.load_model(ex["run"] / "backbone.keras", compile=False)
    return np.asarray(backbone(x.astype("float32"), training=False))


@pytest.fixture
def registry(tmp_path, tmp_path_factory, monkeypatch):
    """A temporary zoo registry holding the tiny entry (preset copied in, as --register does)."""
    from ssl_zoo.zoo import register_preset

    path = tmp_path / "zoo" / "entries.json"
    register_preset(rf.exported(tmp_path_factory)["preset"], registry=path)
    monkeypatch.setenv("SSL_ZOO_REGISTRY", str(path))
    return path


@pytest.mark.parametrize("kind", ["zoo_name", "preset", "export_dir", "keras", "run_dir", "pretext_keras"])
def test_keras_sources_give_the_same_features(kind, tmp_path_factory, registry):
    ex = rf.exported(tmp_path_factory)
    source = {
        "zoo_name": rf.NAME, "preset": ex["preset"], "export_dir": ex["out"], "keras": ex["keras"],
        "run_dir": ex["run"], "pretext_keras": ex["run"] / "pretext_model.keras",
    }[kind]
    x = rf.images(3, seed=1)
    model = load_backbone(source)
    assert model.trainable
    np.testing.assert_allclose(np.asarray(model(x.astype("float32"))), _reference(tmp_path_factory, x), atol=1e-5)
    # uint8 images are accepted as they are (the model casts and normalises itself)
    np.testing.assert_allclose(np.asarray(model(x)), _reference(tmp_path_factory, x), atol=1e-5)


def test_public_api_stages_and_trainable(tmp_path_factory, registry):
    x = rf.images(2, seed=2)
    model = ssl_zoo.load_backbone(rf.NAME, stages=["stage3", "pooled"], trainable=False)
    out = model(x)
    assert sorted(out) == ["pooled", "stage3"] and tuple(out["stage3"].shape) == (2, 4, 4, 32)
    assert not model.trainable and not model.trainable_weights
    single = ssl_zoo.load_backbone(rf.NAME, stages="stage2")
    assert tuple(single(x).shape) == (2, 8, 8, 16)
    with pytest.raises(ValueError, match="unknown stages"):
        ssl_zoo.load_backbone(rf.NAME, stages=["stage9"])
    assert [e["name"] for e in ssl_zoo.list_entries()] == [rf.NAME]


def test_saved_model_source_is_a_frozen_tfsm_layer(tmp_path_factory):
    ex = rf.exported(tmp_path_factory)
    x = rf.images(3, seed=4)
    model = load_backbone(ex["saved_model"])
    assert not model.trainable and not model.trainable_weights
    np.testing.assert_allclose(np.asarray(model(x.astype("float32"))), _reference(tmp_path_factory, x), atol=1e-4)
    staged = load_backbone(ex["saved_model"], stages=["stem", "pooled"])
    assert tuple(staged(x.astype("float32"))["stem"].shape) == (3, 16, 16, 8)
    with pytest.raises(LoadError, match="cannot be fine-tuned"):
        load_backbone(ex["saved_model"], trainable=True)
    with pytest.raises(LoadError, match="SavedModel"):
        load_raw_backbone(ex["saved_model"])


def _saved_model_that_touches_files(folder, target):
    """A SavedModel shaped like an export (serving_default: images -> pooled) whose call writes `target`
    from a nested tf.function (found only by following function calls) and reads it back."""
    import tensorflow as tf

    class Backdoor(tf.Module):
        @tf.function
        def _side_effect(self):
            tf.io.write_file(str(target), "pwned")
            return tf.io.read_file(str(target))

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="images")])
        def serve(self, images):
            self._side_effect()
            return {"pooled": tf.reduce_mean(images, axis=[1, 2])}

    module = Backdoor()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def test_saved_model_that_would_touch_files_is_refused_before_loading(tmp_path):
    from ssl_zoo.saved_model_ops import impure_ops

    target = tmp_path / "written_by_the_model.txt"
    folder = _saved_model_that_touches_files(tmp_path / "saved_model", target)
    assert {"WriteFile", "ReadFile"} <= set(impure_ops(folder))
    with pytest.raises(UnsafeModelError, match="refused.*ReadFile.*WriteFile"):
        load_backbone(folder)
    assert not target.exists()  # nothing ran


def test_exported_saved_models_are_pure_tensor_programs(tmp_path_factory):
    from ssl_zoo.saved_model_ops import CHECKPOINT_OPS, PURE_TENSOR_OPS, audit

    found = audit(rf.exported(tmp_path_factory)["saved_model"])
    assert found.safe and {"Conv2D", "Relu", "Mean"} <= set(found.ops) <= PURE_TENSOR_OPS | CHECKPOINT_OPS
    # every op in the file is counted: the saver's SaveV2 / RestoreV2 too, allowed in its two functions only
    assert {"SaveV2", "RestoreV2"} <= set(found.ops) and len(found.checkpoint_functions) == 2


def test_tampered_weights_are_refused(tmp_path, tmp_path_factory):
    ex = rf.copy_export(tmp_path, tmp_path_factory)
    weights = ex["preset"] / "model.weights.h5"
    expected = json.loads((ex["preset"] / "metadata.json").read_text())["weights"]["sha256"]
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        load_backbone(ex["preset"])
    message = str(err.value)
    assert str(weights) in message and expected in message
    from ssl_zoo.preset import sha256_file

    assert sha256_file(weights) in message


def test_registry_hash_is_checked_too(tmp_path, tmp_path_factory, monkeypatch):
    """A preset swapped together with its metadata.json is still refused by the registry's hash."""
    from ssl_zoo.zoo import load_registry, register_preset, save_registry

    path = tmp_path / "zoo" / "entries.json"
    register_preset(rf.exported(tmp_path_factory)["preset"], registry=path)
    entries = load_registry(path)
    entries[0]["sha256"]["model.weights.h5"] = "0" * 64
    save_registry(entries, path)
    monkeypatch.setenv("SSL_ZOO_REGISTRY", str(path))
    with pytest.raises(IntegrityError, match="zoo registry entry"):
        load_backbone(rf.NAME)


def test_lambda_keras_file_is_refused_under_safe_mode(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(UnsafeModelError, match="safe_mode"):
        load_backbone(path)


def test_lambda_in_preset_config_is_refused(tmp_path, tmp_path_factory):
    import keras

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    inputs = keras.Input((8, 8, 3))
    evil = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    (ex["preset"] / "config.json").write_text(json.dumps(keras.saving.serialize_keras_object(evil)))
    with pytest.raises(IntegrityError, match="config.json"):
        load_backbone(ex["preset"])
    rf.rehash(ex["preset"])  # manifest rewritten too: safe mode still refuses it
    with pytest.raises(UnsafeModelError):
        load_backbone(ex["preset"])


def test_architecture_mismatch_is_never_a_partial_load(tmp_path, tmp_path_factory):
    """config.json of a deeper network with the weights of the tiny one: refused, not half-loaded."""
    import keras

    from ssl_zoo.backbones import resnet

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    other = resnet(34, 0.125, "cifar", rf.IMAGE_SIZE)
    (ex["preset"] / "config.json").write_text(json.dumps(keras.saving.serialize_keras_object(other)))
    rf.rehash(ex["preset"])  # past the hashes (test_integrity.py), to the architecture checks
    with pytest.raises(LoadError, match="refusing a partial load"):
        load_backbone(ex["preset"])
    wider = resnet(18, 0.25, "cifar", rf.IMAGE_SIZE)
    (ex["preset"] / "config.json").write_text(json.dumps(keras.saving.serialize_keras_object(wider)))
    rf.rehash(ex["preset"])
    with pytest.raises(LoadError, match="does not match the architecture"):
        load_backbone(ex["preset"])


def test_missing_stage_layers_are_an_error(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(LoadError, match="no stage layers"):
        load_backbone(tmp_path / "plain.keras")


def test_unknown_source_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_ZOO_REGISTRY", str(tmp_path / "none.json"))
    with pytest.raises(LoadError, match="not a zoo entry"):
        load_backbone("no_such_entry")
    with pytest.raises(LoadError, match="does not exist"):
        load_backbone(str(tmp_path / "missing" / "preset"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoadError, match="neither a preset"):
        load_backbone(empty)


def test_evaluate_still_gets_the_raw_backbone(tmp_path_factory):
    """evaluation.run calls load_raw_backbone: stages intact, config re-buildable (random init)."""
    import keras

    ex = rf.exported(tmp_path_factory)
    for source in (ex["preset"], ex["run"] / "backbone.keras", ex["run"] / "pretext_model.keras"):
        raw = load_raw_backbone(str(source))
        assert raw.get_layer("stage4") is not None
        keras.Model.from_config(raw.get_config())
    shutil.rmtree(tmp_path_factory.mktemp("unused"))


def test_synchronized_batch_norm_files_load_with_plain_batch_norm(tmp_path, tmp_path_factory):
    """A preset or .keras file released before batch norm was plain (config says synchronized: true,
    which JAX and PyTorch refuse) loads on every backend as plain batch norm, same features; the file
    itself is not modified. Other backends: tests/test_backends.py."""
    import zipfile

    import keras

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    rf.legacy_preset(ex["preset"])
    legacy_keras = tmp_path / "legacy.keras"
    rf.legacy_keras_file(ex["keras"], legacy_keras)
    x = rf.images(3, seed=4)
    reference = _reference(tmp_path_factory, x)
    before = {p: p.read_bytes() for p in (ex["preset"] / "config.json", legacy_keras)}
    for source in (ex["preset"], legacy_keras, ex["run"] / "pretext_model.keras"):
        model = load_backbone(source)
        batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(batch_norms) == 20 and not any(layer.synchronized for layer in batch_norms), source
        np.testing.assert_allclose(np.asarray(model(x.astype("float32"))), reference, atol=1e-5)
    assert {p: p.read_bytes() for p in before} == before
    assert rf.synchronized_layers(json.loads(zipfile.ZipFile(legacy_keras).read("config.json"))) == 20
