"""The supervised reference: the only method handed labels, trained by the same loop."""

import numpy as np
import pytest

from helpers import TINY_BACKBONE
from method_contract import MethodContract

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
LABELS = np.arange(12) % 3

CONTRACT = MethodContract(
    method={"name": "supervised", "image_size": 16},
    image_size=16,
    images=IMAGES,
    labels=LABELS,
    backbone=dict(TINY_BACKBONE),
)


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas(tmp_path):
    CONTRACT.run_slow(tmp_path)


def test_targets_are_the_sources_labels_and_only_it_reads_them():
    from ssl_zoo.data.pipeline import build_pretext_dataset
    from ssl_zoo.data.sources import ArraySource
    from ssl_zoo.methods import METHODS, build_method

    method = build_method("supervised", backbone=dict(TINY_BACKBONE), image_size=16)
    source = ArraySource(IMAGES, LABELS)
    method.prepare(source, "train", 16)
    assert method.num_classes == 3 and method.build_model().output.shape[-1] == 3
    batch = next(iter(build_pretext_dataset(source, "train", method, batch_size=12, image_size=16)))
    np.testing.assert_array_equal(batch["targets"].numpy(), LABELS[batch["index"].numpy()])
    assert [name for name, cls in METHODS.items() if cls.reads_labels] == ["supervised"]


def test_refuses_unlabelled_data_and_a_wrong_class_count():
    from ssl_zoo.data.sources import ArraySource
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.methods import build_method

    method = build_method("supervised", backbone=dict(TINY_BACKBONE), image_size=16)
    with pytest.raises(ConfigError, match="labelled"):
        method.prepare(ArraySource(IMAGES), "train", 16)
    with pytest.raises(ConfigError, match="3 classes"):
        build_method("supervised", backbone=dict(TINY_BACKBONE), image_size=16, num_classes=10).prepare(
            ArraySource(IMAGES, LABELS), "train", 16)
