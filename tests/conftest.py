"""Test setup shared by the whole suite.

The host CPU is split into two logical devices before TensorFlow initialises, so that
multi-replica behaviour (MirroredStrategy over 2 replicas) is tested for real on one CPU.
"""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ssl_zoo  # noqa: E402,F401  (sets oneDNN before TensorFlow loads)
import pytest  # noqa: E402

from ssl_zoo.train.strategy import split_cpu  # noqa: E402

split_cpu(2)

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    value = os.environ.get("SSL_ZOO_DATA_DIR")
    candidate = Path(value) if value else REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _own_random_init_cache(tmp_path, monkeypatch):
    """Each test its own random-init cache: none reuses another's floor or writes to the home folder."""
    from ssl_zoo.finetune import RANDOM_INIT_CACHE_ENV

    monkeypatch.setenv(RANDOM_INIT_CACHE_ENV, str(tmp_path / "random_init_cache"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline data root. Skips locally when absent; under CI a missing directory fails."""
    found = shared_data_dir()
    if found is None:
        message = "shared data directory not found: set SSL_ZOO_DATA_DIR or place it at ../shared/data"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def tiny_backbone_config():
    return {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": 16}
