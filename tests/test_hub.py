"""hf:// push and download with the real huggingface_hub client against a local stand-in for the
Hub's HTTP API (tests/hub_standin.py); offline loads from the cache the client itself wrote."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import release_fixtures as rf
from hub_standin import HubStandIn
from ssl_zoo.hub import HubError, download, parse_hf
from ssl_zoo.loader import IntegrityError, load_backbone

REPO_ID = "ssl-zoo/tiny"


def _push_cli(folder, uri, endpoint, extra=()):
    """`ssl-zoo push` in a fresh process: huggingface_hub reads HF_HUB_DISABLE_XET at import."""
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_TOKEN="hf_standin_token", HF_HUB_DISABLE_XET="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "ssl_zoo.cli", "push", str(folder), uri, *extra],
                          env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A stand-in Hub holding the tiny preset, pushed through `ssl-zoo push`."""
    ex = rf.exported(tmp_path_factory)
    with HubStandIn() as server:
        proc = _push_cli(ex["preset"], f"hf://{REPO_ID}", server.endpoint)
        assert proc.returncode == 0, proc.stderr[-3000:]
        server.first_commit = proc.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
        yield server


@pytest.fixture
def hf_env(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for var in ("NO_PROXY", "no_proxy"):  # the stand-in is local even where a proxy is configured
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf_cache"


def test_parse_hf():
    assert parse_hf("hf://org/name") == ("org/name", None)
    assert parse_hf("hf://org/name@v1.0") == ("org/name", "v1.0")
    for bad in ("hf://name", "hf://a/b/c", "org/name", "hf://../x", "hf://org/..", "hf://org/.hidden",
                "hf://org/a..b", "hf://org/name-", "hf://o rg/name", "hf://org/na%2fme"):
        with pytest.raises(HubError):
            parse_hf(bad)


def test_push_uploads_the_preset_byte_for_byte(hub, tmp_path_factory):
    ex = rf.exported(tmp_path_factory)
    _, files = hub.state.files_at(REPO_ID, "main")
    local = {p.name: p.read_bytes() for p in ex["preset"].iterdir()}
    assert files == local
    routes = set(hub.state.requests)
    assert ("POST", "/api/repos/create") in routes
    weights_oid = hashlib.sha256(local["model.weights.h5"]).hexdigest()
    assert ("PUT", f"/lfs/{weights_oid}") in routes  # the weights went through the LFS path


def test_push_refuses_an_incomplete_or_tampered_folder(hub, tmp_path, tmp_path_factory):
    from ssl_zoo.hub import push

    ex = rf.copy_export(tmp_path, tmp_path_factory)
    weights = ex["preset"] / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(HubError, match="does not match"):
        push(ex["preset"], "hf://ssl-zoo/other", endpoint=hub.endpoint, token="hf_standin_token")
    (ex["preset"] / "README.md").unlink()
    with pytest.raises(HubError, match=r"missing \['README.md'\]"):
        push(ex["preset"], "hf://ssl-zoo/other", endpoint=hub.endpoint, token="hf_standin_token")
    assert hub.state.files_at("ssl-zoo/other", "main") is None  # nothing was created


def test_hf_download_loads_same_features(hf_env, tmp_path_factory):
    import keras

    ex = rf.exported(tmp_path_factory)
    x = rf.images(3, seed=5)
    model = load_backbone(f"hf://{REPO_ID}")
    ref = keras.saving.load_model(ex["run"] / "backbone.keras", compile=False)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(ref(x.astype("float32"))), atol=1e-5)
    snapshots = list((hf_env / "models--ssl-zoo--tiny" / "snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "model.weights.h5").exists()


def test_revision_and_offline_cache(hub, hf_env, tmp_path, tmp_path_factory, monkeypatch):
    ex = rf.copy_export(tmp_path, tmp_path_factory)
    readme = ex["preset"] / "README.md"
    readme.write_text(readme.read_text() + "\nSecond revision.\n")
    rf.rehash(ex["preset"])  # a new revision lists its card's new sha256 (push refuses a stale manifest)
    proc = _push_cli(ex["preset"], f"hf://{REPO_ID}", hub.endpoint)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = hub.first_commit
    latest = download(f"hf://{REPO_ID}")
    pinned = download(f"hf://{REPO_ID}@{first}")
    assert (latest / "README.md").read_text().endswith("Second revision.\n")
    assert not (pinned / "README.md").read_text().endswith("Second revision.\n")
    load_backbone(f"hf://{REPO_ID}@{first}")
    # Offline: served from the cache huggingface_hub wrote above; nothing else is reachable.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_requests = len(hub.state.requests)
    model = load_backbone(f"hf://{REPO_ID}")
    assert model.output.shape[-1] == 64
    assert len(hub.state.requests) == n_requests
    with pytest.raises(HubError, match="offline"):
        download("hf://ssl-zoo/never-downloaded")


def test_tampered_cache_is_refused(hf_env, tmp_path_factory):
    path = download(f"hf://{REPO_ID}")
    blob = (path / "model.weights.h5").resolve()  # the cache keeps content in blobs/, linked from snapshots/
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_backbone(f"hf://{REPO_ID}")


def test_zoo_entry_on_the_hub_only(hub, hf_env, tmp_path, tmp_path_factory, monkeypatch):
    """An entry whose preset is not in the package is fetched from its hf:// location (pinned to the
    revision registered: the registry holds the sha256 of that revision's metadata.json, and a later
    revision, test_revision_and_offline_cache's, would be refused)."""
    from ssl_zoo.zoo import entry_from_preset, save_registry

    ex = rf.exported(tmp_path_factory)
    uri = f"hf://{REPO_ID}@{hub.first_commit}"
    entry = entry_from_preset(ex["preset"], location=None, hf=uri)
    entry["preset"] = None
    registry = tmp_path / "entries.json"
    save_registry([entry], registry)
    monkeypatch.setenv("SSL_ZOO_REGISTRY", str(registry))
    model = load_backbone(rf.NAME)
    assert model.output.shape[-1] == 64
    assert json.loads(registry.read_text())["entries"][0]["hf"] == uri
    shutil.rmtree(hf_env, ignore_errors=True)
