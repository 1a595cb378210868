"""RotNet through the method contract (its transform and loss are tested in test_pretext.py and
test_train.py)."""

import numpy as np
import pytest

from helpers import TINY_BACKBONE
from method_contract import MethodContract

CONTRACT = MethodContract(
    method={"name": "rotnet", "head_hidden_units": [16], "image_size": 16},
    image_size=16,
    images=np.random.default_rng(0).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8),
    backbone=dict(TINY_BACKBONE),
)


def test_method_contract(tmp_path):
    CONTRACT.run_fast(tmp_path)


@pytest.mark.slow
def test_method_contract_two_replicas_and_sigkill_resume(tmp_path):
    CONTRACT.run_slow(tmp_path)
