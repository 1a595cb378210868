"""`hf://org/name[@revision]`: download and push presets with huggingface_hub.

Download goes through `snapshot_download`, so the Hub cache (`$HF_HUB_CACHE`), offline mode
(`$HF_HUB_OFFLINE=1`: only what the cache already holds) and revisions (branch, tag or commit)
behave as everywhere else in the Hugging Face ecosystem. `$HF_ENDPOINT`, `$HF_HUB_CACHE` and
`$HF_HUB_OFFLINE` are read when a call is made (huggingface_hub itself reads them once, at import).

A pushed repository is exactly the preset folder written by `ssl-zoo export` (config.json,
model.weights.h5, metadata.json, README.md card, probe plot; see `ssl_zoo.preset`): nothing is
converted on the way, and a folder that `ssl_zoo.preset.check_preset_folder` finds incomplete or
tampered with is refused before anything is uploaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ssl_zoo import preset
from ssl_zoo.errors import SslZooError

PREFIX = "hf://"
_HUB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")


class HubError(SslZooError, ValueError):
    pass


def is_hf(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse_hf(uri: str) -> tuple[str, str | None]:
    """`hf://org/name@rev` -> ("org/name", "rev"); revision None when absent."""
    if not is_hf(uri):
        raise HubError(f"{uri!r} is not an hf:// address (expected hf://org/name[@revision])")
    body = uri[len(PREFIX):]
    repo_id, _, revision = body.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise HubError(f"{uri!r}: expected hf://org/name[@revision]")
    # The Hub's own rule for ids (letters, digits, '-', '_', '.'; no '--' or '..'; not starting or
    # ending with '-' or '.'), checked here: a name such as '..' must never reach a path or a URL.
    for part in parts:
        if not _HUB_NAME.fullmatch(part) or "--" in part or ".." in part or part[-1] in "-.":
            raise HubError(f"{uri!r}: {part!r} is not a valid Hub name (letters, digits, '-', '_', '.')")
    return repo_id, (revision or None)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _endpoint(endpoint: str | None) -> str | None:
    return endpoint or os.environ.get("HF_ENDPOINT") or None


def download(uri: str, *, cache_dir: str | os.PathLike | None = None, endpoint: str | None = None,
             token: str | bool | None = None, offline: bool | None = None) -> Path:
    """Downloads (or finds in the cache) the repository at `uri`; returns its local folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = parse_hf(uri)
    if offline is None:
        offline = _truthy(os.environ.get("HF_HUB_OFFLINE"))
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    try:
        path = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, endpoint=_endpoint(endpoint), token=token,
            local_files_only=offline, library_name="ssl_zoo",
        )
    except LocalEntryNotFoundError as e:
        where = "offline mode (HF_HUB_OFFLINE=1) and the cache" if offline else "the Hub and the cache"
        raise HubError(f"{uri}: not found in {where} ({cache_dir or 'default HF cache'}): {e}") from e
    return Path(path)


def push(source: str | os.PathLike, uri: str, *, private: bool = False, token: str | None = None,
         endpoint: str | None = None, commit_message: str | None = None) -> str:
    """Uploads a preset folder (or the preset of a zoo entry) to `hf://org/name[@revision]`.

    Creates the repository if needed. Returns the commit URL.
    """
    from huggingface_hub import HfApi

    from ssl_zoo import zoo

    folder = Path(source)
    if not folder.is_dir() and zoo.is_entry(str(source)):
        folder = zoo.preset_dir(zoo.get_entry(str(source)))
        if folder is None or not folder.is_dir():
            raise HubError(f"zoo entry {source!r} has no local preset folder to push")
    try:
        meta = preset.check_preset_folder(folder)
    except preset.LoadError as e:
        raise HubError(str(e)) from e
    repo_id, revision = parse_hf(uri)
    api = HfApi(endpoint=_endpoint(endpoint), token=token, library_name="ssl_zoo")
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), revision=revision, repo_type="model",
        commit_message=commit_message or f"ssl_zoo: upload {meta['name']} (weights sha256 {meta['weights']['sha256'][:12]})",
        allow_patterns=["*.json", "*.h5", "*.md", "*.png"],
    )
    return str(getattr(info, "commit_url", info))
