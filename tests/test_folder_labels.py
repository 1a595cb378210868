"""Image-folder labels: one class mapping for all splits of a folder, missing splits are errors,
and evaluate / finetune report on the split that exists (val for Imagenette-style folders)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from PIL import Image

from ssl_zoo.data.sources import DataError, ImageFolderSource

SIZE = 16


def _images(folder, n, value, seed=0):
    """`n` near-constant images of brightness `value` (dark and bright classes are separable)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        noise = rng.integers(-8, 9, (SIZE + 4, SIZE + 4, 3))
        Image.fromarray(np.clip(value + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


def _separable_folder(root, val_classes=("dark", "bright")):
    """train/{dark,bright}, val/ with the classes named (Imagenette's layout: no test/)."""
    values = {"dark": 20, "bright": 235}
    for c, cls in enumerate(values):
        _images(root / "train" / cls, 8, values[cls], seed=c)
    for c, cls in enumerate(val_classes):
        _images(root / "val" / cls, 4, values[cls], seed=10 + c)
    return root


def _labels(source, split):
    return sorted(int(e["label"]) for e in source.examples(split).as_numpy_iterator())


def test_one_label_mapping_for_all_splits(tmp_path):
    root = tmp_path / "data"
    for split, classes in (("train", "abc"), ("val", "ac"), ("test", "bd")):
        for cls in classes:
            _images(root / split / cls, 2, 100)
    source = ImageFolderSource(root)
    assert source.class_names() == ["a", "b", "c", "d"] and source.num_classes() == 4  # union, sorted
    assert _labels(source, "train") == [0, 0, 1, 1, 2, 2]
    assert _labels(source, "val") == [0, 0, 2, 2]  # c is 2 in val too, although val has no b
    assert _labels(source, "test") == [1, 1, 3, 3]
    assert source.splits() == ["test", "train", "val"] and source.held_out_split() == "test"


def test_missing_split_folder_is_an_error_naming_the_folder_and_its_splits(tmp_path):
    root = _separable_folder(tmp_path / "imagenette")
    source = ImageFolderSource(root)
    with pytest.raises(DataError) as err:
        source.num_examples("test")
    message = str(err.value)
    assert str(root) in message and "'test'" in message and "['train', 'val']" in message
    with pytest.raises(DataError, match="no split folder 'test'"):
        source.examples("test")
    assert source.held_out_split() == "val" and source.num_examples("val") == 8


def test_flat_folder_is_one_split_under_every_name(tmp_path):
    root = tmp_path / "flat"
    _images(root / "cats", 3, 40)
    _images(root / "dogs", 2, 200)
    source = ImageFolderSource(root)
    assert source.splits() is None and source.class_names() == ["cats", "dogs"]
    for split in ("train", "test", "anything"):
        assert source.num_examples(split) == 5 and _labels(source, split) == [0, 0, 0, 1, 1]
    assert source.held_out_split() == "test"


@pytest.mark.parametrize("val_classes, test_split", [(("dark", "bright"), None), (("dark",), "val")],
                         ids=["val_complete_split_picked", "val_lacks_bright_split_named"])
def test_probe_and_knn_on_a_separable_folder(val_classes, test_split, tmp_path):
    """Probe and kNN are 100 % whether or not val holds every class (they were 0 % on the val
    that lacks a class when labels were numbered per split); with no test split named, evaluate
    reports on val, the held-out split the folder has (it read the whole folder as "test")."""
    from ssl_zoo.backbones import resnet
    from ssl_zoo.evaluation.run import evaluate_model

    import keras

    root = _separable_folder(tmp_path / "data", val_classes)
    keras.utils.set_random_seed(0)  # a random network separates the two brightness classes; this one always
    backbone = resnet(18, 0.125, "cifar", SIZE)
    report = evaluate_model(backbone, source=f"folder:{root}", stages=["pooled"], knn_k=3, probe_epochs=60,
                            image_size=SIZE, test_split=test_split)
    assert report["protocol"]["test_split"] == "val"
    assert report["protocol"]["num_train"] == 16 and report["protocol"]["num_test"] == 4 * len(val_classes)
    assert report["knn"]["trained"] == 1.0
    assert report["linear_probe"]["pooled"]["trained"] == 1.0


def test_finetune_tests_on_val_with_the_folders_classes(tmp_path):
    """finetune on train/ + val/ (no test/) trains on train and tests on val, two classes; it
    read split "test" before, i.e. the whole folder labelled by split ("train", "val")."""
    from ssl_zoo.backbones import resnet
    from ssl_zoo.data import pipeline
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.finetune import finetune

    root = _separable_folder(tmp_path / "data", ("dark",))  # lacks "bright", label 0
    source = open_source(f"folder:{root}")
    with mock.patch.object(pipeline, "build_dataset", wraps=pipeline.build_dataset) as spy:
        report = finetune(resnet(18, 0.125, "cifar", SIZE), dataset=source, epochs_frozen=1, epochs_unfrozen=0,
                          batch_size=8, random_init=False, run_eagerly=True)
    assert [c.args[1] for c in spy.call_args_list] == ["train", "val"]
    assert report["protocol"]["test_split"] == "val" and source.num_classes() == 2
    with pytest.raises(DataError, match="no split folder 'test'.*\\['train', 'val'\\]"):
        finetune(resnet(18, 0.125, "cifar", SIZE), dataset=source, test_split="test", epochs_frozen=1,
                 epochs_unfrozen=0, batch_size=8, random_init=False, run_eagerly=True)
