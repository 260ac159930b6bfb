"""A Hugging Face Hub stand-in on 127.0.0.1 for tests: the few endpoints ``huggingface_hub``
calls to download model files, served by ``http.server`` in a thread.

`FakeHub` holds model repositories as commits of in-memory files (`publish` adds a commit and
moves ``main`` to it) and answers, with the headers the real client reads:

- ``GET /api/models/{repo}/revision/{rev}`` — repo info (``HfApi.repo_info``/``model_info``,
  ``resolve_revision``): ``{"id", "sha", "siblings"}``; with ``?blobs=true`` each sibling
  carries ``size``, ``blobId`` and, for LFS files, ``lfs: {sha256, size, pointerSize}``.
- ``POST /api/models/{repo}/paths-info/{rev}`` — ``HfApi.get_paths_info``: per path
  ``{type, path, size, oid, lfs: {oid, size, pointerSize}}``.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` — ``hf_hub_download``: ``X-Repo-Commit``,
  ``ETag`` (the git blob id, or the sha256 for LFS files), ``X-Linked-Etag`` and
  ``X-Linked-Size`` for LFS files, ``Content-Length``, and ``Range: bytes=N-`` on ``GET``.

Files whose name does not end in ``.json`` are LFS files, as on the Hub. Errors carry the
Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so the client
raises its usual exceptions. Faults for tests: `serve_instead` serves other bytes than the
metadata advertises (a corrupted transfer); `cut_once` drops a transfer halfway; `forbid` makes a repository answer 403 with an
error message that echoes the request's ``Authorization`` header (a careless server, to prove
the token never reaches the user's terminal). Every request is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field


def git_blob_id(data: bytes) -> str:
    """The git object id of `data` as a blob (what the Hub reports for a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(filename: str) -> bool:
    """Whether the Hub would store `filename` with LFS (here: everything but JSON)."""
    return not filename.endswith(".json")


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    authorization: str | None
    range: str | None = None


@dataclass
class Repo:
    """A model repository: commits by sha, branches by name."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """The commit `revision` (a branch or a commit sha) names, or None."""
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """Model repositories served over HTTP on 127.0.0.1 (see the module docstring)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.served_instead: dict[tuple[str, str], bytes] = {}
        self.forbidden: set[str] = set()
        self.cut: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # -- content --------------------------------------------------------------------------
    def publish(self, repo_id: str, files: Mapping[str, bytes], commit: str | None = None) -> str:
        """Add a commit holding exactly `files` to `repo_id` and move ``main`` to it; returns
        its sha (`commit`, or one derived from the content and the commit count)."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            seed = json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())})
            sha = commit or hashlib.sha1(f"{repo_id} {len(repo.commits)} {seed}".encode()).hexdigest()
            repo.commits[sha] = dict(files)
            repo.branches["main"] = sha
            return sha

    def serve_instead(self, repo_id: str, filename: str, data: bytes) -> None:
        """Serve `data` as the body of `filename` (every commit) while the metadata still
        describes the published file."""
        with self._lock:
            self.served_instead[(repo_id, filename)] = data

    def cut_once(self, repo_id: str, filename: str) -> None:
        """The next body of `filename` stops after half its bytes and the connection drops (a
        network failure the client should resume from with ``Range``)."""
        with self._lock:
            self.cut.add((repo_id, filename))

    def forbid(self, repo_id: str) -> None:
        """Answer every request about `repo_id` with 403, echoing the credentials sent."""
        with self._lock:
            self.forbidden.add(repo_id)

    def downloads(self) -> list[str]:
        """Paths of the file bodies sent (``GET .../resolve/...``), in order."""
        return [r.path for r in self.requests if r.method == "GET" and "/resolve/" in r.path]

    # -- serving --------------------------------------------------------------------------
    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve on 127.0.0.1 on a free port; yields the endpoint (for ``HF_ENDPOINT``)."""
        hub = self

        class Handler(_HubHandler):
            state = hub

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Routes the Hub endpoints to the `FakeHub` in `state`."""

    state: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the real Hub; every reply has a Content-Length

    # -- plumbing -------------------------------------------------------------------------
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _record(self) -> None:
        with self.state._lock:
            sent = Request(self.command, self.path, self.headers.get("Authorization"), self.headers.get("Range"))
            self.state.requests.append(sent)

    def _reply(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = 200) -> None:
        self._reply(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._reply(status, json.dumps({"error": message}).encode(), headers)

    def _repo(self, repo_id: str) -> Repo | None:
        if repo_id in self.state.forbidden:
            sent = self.headers.get("Authorization") or "no credentials"
            self._error(403, "Forbidden", f"access denied for {sent}")
            return None
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _commit(self, repo: Repo, revision: str) -> str | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- endpoints ------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._record()
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
            query = urllib.parse.parse_qs(url.query)
            self._repo_info(f"{parts[2]}/{parts[3]}", parts[5], blobs=query.get("blobs", [""])[0].lower() == "true")
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body=True)
        else:
            self._error(404, "NotFound", f"no route for GET {url.path}")

    def do_HEAD(self) -> None:
        self._record()
        parts = [urllib.parse.unquote(p) for p in urllib.parse.urlsplit(self.path).path.split("/")[1:]]
        if len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body=False)
        else:
            self._error(404, "NotFound", "no route")

    def do_POST(self) -> None:
        self._record()
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        parts = [urllib.parse.unquote(p) for p in urllib.parse.urlsplit(self.path).path.split("/")[1:]]
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "paths-info":
            self._paths_info(f"{parts[2]}/{parts[3]}", parts[5], form.get("paths", []))
        else:
            self._error(404, "NotFound", "no route")

    def _repo_info(self, repo_id: str, revision: str, *, blobs: bool) -> None:
        repo = self._repo(repo_id)
        commit = repo and self._commit(repo, revision)
        if not commit:
            return
        siblings = []
        for name, data in sorted(repo.commits[commit].items()):
            sibling = {"rfilename": name}
            if blobs:
                sibling.update(size=len(data), blobId=git_blob_id(data))
                if is_lfs(name):
                    sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(sibling)
        self._json({"id": repo_id, "sha": commit, "siblings": siblings, "private": False})

    def _paths_info(self, repo_id: str, revision: str, paths: list[str]) -> None:
        repo = self._repo(repo_id)
        commit = repo and self._commit(repo, revision)
        if not commit:
            return
        entries = []
        for path in paths:
            data = repo.commits[commit].get(path)
            if data is None:
                continue  # the Hub ignores paths that do not exist
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if is_lfs(path):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self._json(entries)

    def _resolve(self, repo_id: str, revision: str, filename: str, *, body: bool) -> None:
        repo = self._repo(repo_id)
        commit = repo and self._commit(repo, revision)
        if not commit:
            return
        data = repo.commits[commit].get(filename)
        if data is None:
            self._reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            return
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if is_lfs(filename):
            digest = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{digest}"', "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_id(data)}"'
        if body:
            data = self.state.served_instead.get((repo_id, filename), data)
        start, status = 0, 200
        ranged = self.headers.get("Range", "")
        if body and ranged.startswith("bytes=") and ranged[6:].rstrip("-").isdigit():
            start, status = int(ranged[6:].rstrip("-")), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(data) - start)
        with self.state._lock:
            cut = body and (repo_id, filename) in self.state.cut
            if cut:
                self.state.cut.discard((repo_id, filename))
        if cut:  # promise the whole body, send half of it, hang up
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data[start:][: (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._reply(status, data[start:], headers)
