"""A minimal stand-in for the Hugging Face Hub's HTTP API, on 127.0.0.1, for tests without internet.

It implements exactly the routes that huggingface_hub 2.x's `create_repo`, `upload_folder` (with
`HF_HUB_DISABLE_XET=1`: the legacy LFS path) and `snapshot_download` call, read from the client's
source:

  POST /api/repos/create                                  create_repo
  POST /api/validate-yaml                                 README.md metadata check before a commit
  POST /api/models/{repo}/preupload/{rev}                 regular vs LFS per file (.h5/.png -> LFS)
  POST /{repo}.git/info/lfs/objects/batch, PUT /lfs/{oid} LFS "basic" transfer
  POST /api/models/{repo}/commit/{rev}                    ndjson commit (file / lfsFile)
  GET  /api/models/{repo}/revision/{rev}                  repo_info (commit sha of a branch/commit)
  GET  /api/models/{repo}/tree/{rev}                      file listing
  HEAD/GET /{repo}/resolve/{rev}/{path}                   file metadata (X-Repo-Commit, ETag) and bytes

Everything is kept in memory; `requests` records every (method, path) served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".h5", ".png", ".pb", ".keras")


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubState:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"refs": {branch: sha}, "commits": {sha: {path: bytes}}}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def files_at(self, repo_id: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        sha = repo["refs"].get(rev, rev)
        if sha not in repo["commits"]:
            return None
        return sha, repo["commits"][sha]


def _make_handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        # ---- helpers ----
        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, code: int, payload=None, headers=None, raw: bytes | None = None, head=False):
            data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _not_found(self, what: str, code="RepoNotFound", head=False):
            self._send(404, {"error": what}, headers={"X-Error-Code": code, "X-Error-Message": what}, head=head)

        def _record(self):
            with state.lock:
                state.requests.append((self.command, urlparse(self.path).path))

        # ---- routes ----
        def do_POST(self):
            self._record()
            path = unquote(urlparse(self.path).path)
            body = self._body()
            if path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                with state.lock:
                    if repo_id in state.repos:
                        return self._send(409, {"error": "You already created this model repo", "url": f"/{repo_id}"})
                    state.repos[repo_id] = {"refs": {"main": "0" * 40}, "commits": {"0" * 40: {}}}
                return self._send(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._send(200, {})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path)
            if m:
                files = json.loads(body)["files"]
                return self._send(200, {"files": [
                    {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                     "shouldIgnore": False} for f in files]})
            m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
            if m:
                req = json.loads(body)
                host = self.headers["Host"]
                objects = []
                for o in req["objects"]:
                    entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
                    if o["oid"] not in state.lfs:
                        entry["actions"] = {"upload": {"href": f"http://{host}/lfs/{o['oid']}", "header": {}}}
                    objects.append(entry)
                return self._send(200, {"transfer": "basic", "objects": objects})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
            if m:
                repo_id, rev = m.groups()
                with state.lock:
                    found = state.files_at(repo_id, rev)
                    if found is None:
                        return self._not_found(f"{repo_id}@{rev}")
                    _, files = found
                    files = dict(files)
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] == "lfsFile":
                            oid = item["value"]["oid"]
                            if oid not in state.lfs:
                                return self._send(400, {"error": f"LFS object {oid} was never uploaded"})
                            files[item["value"]["path"]] = state.lfs[oid]
                        elif item["key"] in ("deletedFile", "deletedFolder"):
                            files.pop(item["value"]["path"], None)
                    sha = hashlib.sha1(json.dumps(sorted((p, _git_blob_sha(d)) for p, d in files.items())).encode()
                                       + str(len(state.repos[repo_id]["commits"])).encode()).hexdigest()
                    state.repos[repo_id]["commits"][sha] = files
                    state.repos[repo_id]["refs"][rev] = sha
                host = self.headers["Host"]
                return self._send(200, {"commitUrl": f"http://{host}/{repo_id}/commit/{sha}", "commitOid": sha,
                                        "pullRequestUrl": None, "success": True})
            self._send(404, {"error": f"stand-in: no route POST {path}"})

        def do_PUT(self):
            self._record()
            path = unquote(urlparse(self.path).path)
            m = re.fullmatch(r"/lfs/([0-9a-f]{64})", path)
            if not m:
                return self._send(404, {"error": f"stand-in: no route PUT {path}"})
            data = self._body()
            if hashlib.sha256(data).hexdigest() != m.group(1):
                return self._send(400, {"error": "sha256 mismatch"})
            with state.lock:
                state.lfs[m.group(1)] = data
            self._send(200, {})

        def _get(self, head: bool):
            self._record()
            path = unquote(urlparse(self.path).path)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
            if m:
                found = state.files_at(*m.groups())
                if found is None:
                    return self._not_found(f"{m.group(1)}@{m.group(2)}", head=head)
                sha, files = found
                return self._send(200, {"id": m.group(1), "modelId": m.group(1), "sha": sha, "private": False,
                                        "siblings": [{"rfilename": p} for p in sorted(files)]}, head=head)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
            if m:
                found = state.files_at(m.group(1), m.group(2))
                if found is None:
                    return self._not_found(f"{m.group(1)}@{m.group(2)}", head=head)
                _, files = found
                listing = []
                for p, d in sorted(files.items()):
                    e = {"type": "file", "path": p, "size": len(d), "oid": _git_blob_sha(d)}
                    if p.endswith(LFS_SUFFIXES):
                        e["lfs"] = {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}
                    listing.append(e)
                return self._send(200, listing, head=head)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                repo_id, rev, fpath = m.groups()
                found = state.files_at(repo_id, rev)
                if found is None:
                    return self._not_found(f"{repo_id}@{rev}", head=head)
                sha, files = found
                if fpath not in files:
                    return self._not_found(fpath, code="EntryNotFound", head=head)
                d = files[fpath]
                etag = hashlib.sha256(d).hexdigest() if fpath.endswith(LFS_SUFFIXES) else _git_blob_sha(d)
                return self._send(200, raw=d, head=head, headers={"X-Repo-Commit": sha, "ETag": f'"{etag}"'})
            self._send(404, {"error": f"stand-in: no route GET {path}"}, head=head)

        def do_GET(self):
            self._get(head=False)

        def do_HEAD(self):
            self._get(head=True)

    return Handler


class HubStandIn:
    """Context manager: `with HubStandIn() as hub: hub.endpoint` -> "http://127.0.0.1:PORT"."""

    def __init__(self):
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self.state))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
