"""Stand-in for the Hugging Face Hub, used only by the project's test lab: the HTTP server.

Serves synthetic repos built by ``fixture.py`` over the subset of the Hub protocol that an
unmodified ``huggingface_hub`` (``snapshot_download``, ``hf_hub_download``, ``HfApi``, the ``hf``
CLI) uses when pointed at it with ``HF_ENDPOINT=http://HOST:PORT``. Standard library only.

CLI::

    python server.py --repo REPO_ID=DIR [--repo ...] [--host 127.0.0.1] [--port 0]
                     [--token TOKEN] [--port-file PATH] [--page-size 50]

Hub endpoints (``rev`` is ``main``, ``refs/heads/main`` or the 40-hex commit sha)::

    GET       /api/models/{repo}                      model info (revision main)
    GET       /api/models/{repo}/revision/{rev}       model info (?blobs=true adds sizes and LFS)
    GET       /api/models/{repo}/tree/{rev}[/{path}]  ?recursive=&expand=&cursor=, Link rel="next"
    POST      /api/models/{repo}/paths-info/{rev}     form: paths=...&expand=...
    GET       /api/models/{repo}/refs                 branches (main)
    GET       /api/models/{repo}/commits/{rev}        one commit
    HEAD/GET  /{repo}/resolve/{rev}/{path}            file, with Range support

Errors carry the headers ``huggingface_hub`` maps to its exceptions: ``X-Error-Code: RepoNotFound``
(RepositoryNotFoundError), ``RevisionNotFound``, ``EntryNotFound`` (RemoteEntryNotFoundError),
``GatedRepo`` (a token is required and none was sent: GatedRepoError) and ``X-Error-Message:
Invalid credentials in Authorization header`` for a wrong token (HfHubHTTPError, HTTP 401).

Control API (never behind the token, never counted in the stats)::

    GET    /_standin/health   {"ok": true, "repos": {id: sha}}
    GET    /_standin/stats    {"bytes_served", "requests", "files": {path: bytes},
                               "repos": {id: {path: bytes}}, "downloads": [...]}
    POST   /_standin/reset    zero the stats
    GET    /_standin/faults   current fault switches
    POST   /_standin/faults   JSON object merged into the fault switches
    DELETE /_standin/faults   clear all fault switches

Fault switches (also settable at start from the env var ``HF_HUB_STANDIN_FAULTS``, a JSON object):

* ``drop_after_bytes`` (int): while sending a ``/resolve/`` GET body longer than this, close the
  connection abruptly after this many body bytes; ``drop_count`` (int, default -1 = unlimited)
  is how many responses to drop before behaving normally again (it counts down to 0).
* ``corrupt_once`` (file path, glob or ``"*"``): flip one byte in the middle of the next
  ``/resolve/`` GET body of a matching file, then clear the switch.
* ``rate_limit_bps`` (int): throttle each body to about that many bytes per second.
* ``status`` ({glob: int}): answer with that HTTP status; the glob is matched against the file
  path of ``/resolve/`` requests and against the URL path of every other Hub request.
* ``require_token`` (str): like ``--token``, set at run time (takes precedence over it).
* ``delay_s`` (float): sleep this long before answering each Hub request.

One line per request goes to stderr (client, method, path, status, body bytes); request headers
are never logged.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import hmac
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

CHUNK = 1 << 20
MAX_DOWNLOAD_LOG = 1000
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
FAULT_KEYS = {
    "drop_after_bytes": int,
    "drop_count": int,
    "corrupt_once": str,
    "rate_limit_bps": int,
    "status": dict,
    "require_token": str,
    "delay_s": float,
}
CONTENT_TYPES = {
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".jinja": "text/plain; charset=utf-8",
    ".py": "text/x-python; charset=utf-8",
}


@dataclass(frozen=True)
class RepoFile:
    """One file of a served repo, as described in repo.json."""

    path: str
    size: int
    sha256: str
    git_oid: str
    lfs: bool
    pointer_oid: str | None
    pointer_size: int | None

    @property
    def etag(self) -> str:
        """The Hub's ETag: the sha256 for LFS files, the git blob oid otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    @property
    def tree_oid(self) -> str:
        """The oid the tree API reports: the git oid of the LFS pointer for LFS files."""
        return self.pointer_oid if self.lfs and self.pointer_oid else self.git_oid


@dataclass(frozen=True)
class Repo:
    """A served repo: its id, files directory and metadata."""

    repo_id: str
    files_dir: Path
    sha: str
    created_at: str
    last_modified: str
    files: dict[str, RepoFile]

    @classmethod
    def load(cls, repo_id: str, directory: Path) -> Repo:
        meta = json.loads((directory / "repo.json").read_text())
        files: dict[str, RepoFile] = {}
        for entry in sorted(meta["files"], key=lambda e: str(e["path"])):
            repo_file = RepoFile(
                path=str(entry["path"]),
                size=int(entry["size"]),
                sha256=str(entry["sha256"]),
                git_oid=str(entry["git_oid"]),
                lfs=bool(entry["lfs"]),
                pointer_oid=entry.get("pointer_oid"),
                pointer_size=entry.get("pointer_size"),
            )
            on_disk = directory / "files" / repo_file.path
            if not on_disk.is_file() or on_disk.stat().st_size != repo_file.size:
                raise ValueError(f"{on_disk}: missing or not {repo_file.size} bytes")
            files[repo_file.path] = repo_file
        return cls(
            repo_id=repo_id,
            files_dir=directory / "files",
            sha=str(meta["sha"]),
            created_at=str(meta.get("created_at", "2026-01-01T00:00:00.000Z")),
            last_modified=str(meta.get("last_modified", "2026-01-01T00:00:00.000Z")),
            files=files,
        )

    def resolve(self, revision: str) -> str | None:
        """Commit sha of ``revision``, or None when the revision is unknown."""
        if revision in ("main", "refs/heads/main", self.sha):
            return self.sha
        return None

    def directories(self) -> set[str]:
        """All directory paths of the repo (without the root)."""
        dirs: set[str] = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def tree_oid(self, directory: str) -> str:
        return hashlib.sha1(f"tree {self.sha} {directory}".encode()).hexdigest()

    def file_entry(self, repo_file: RepoFile, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "oid": repo_file.tree_oid,
            "size": repo_file.size,
            "path": repo_file.path,
        }
        if repo_file.lfs:
            entry["lfs"] = {
                "oid": repo_file.sha256,
                "size": repo_file.size,
                "pointerSize": repo_file.pointer_size or 0,
            }
        if expand:
            entry["lastCommit"] = self.last_commit()
        return entry

    def dir_entry(self, directory: str, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "directory",
            "oid": self.tree_oid(directory),
            "size": 0,
            "path": directory,
        }
        if expand:
            entry["lastCommit"] = self.last_commit()
        return entry

    def last_commit(self) -> dict[str, str]:
        return {
            "id": self.sha,
            "title": "Upload folder using huggingface_hub",
            "date": self.last_modified,
        }

    def info(self, blobs: bool) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for repo_file in self.files.values():
            sibling: dict[str, Any] = {"rfilename": repo_file.path}
            if blobs:
                sibling["size"] = repo_file.size
                sibling["blobId"] = repo_file.tree_oid
                if repo_file.lfs:
                    sibling["lfs"] = {
                        "size": repo_file.size,
                        "sha256": repo_file.sha256,
                        "pointerSize": repo_file.pointer_size or 0,
                    }
            siblings.append(sibling)
        config: dict[str, Any] = {}
        config_file = self.files_dir / "config.json"
        if "config.json" in self.files:
            try:
                raw = json.loads(config_file.read_text())
                config = {k: raw[k] for k in ("architectures", "model_type") if k in raw}
            except (OSError, ValueError):
                config = {}
        return {
            "_id": self.sha[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0] if "/" in self.repo_id else None,
            "sha": self.sha,
            "lastModified": self.last_modified,
            "createdAt": self.created_at,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "tags": ["transformers", "safetensors", "text-generation"],
            "config": config,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(f.size for f in self.files.values()),
        }


class FaultState:
    """The fault switches, shared by all request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Any] = {}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._faults))  # type: ignore[no-any-return]

    def merge(self, update: Any) -> dict[str, Any]:
        if not isinstance(update, dict):
            raise ValueError("faults must be a JSON object")
        checked: dict[str, Any] = {}
        for key, value in update.items():
            if key not in FAULT_KEYS:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(FAULT_KEYS))}")
            if value is None:
                checked[key] = None
                continue
            kind = FAULT_KEYS[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"fault {key!r} must be of type {kind.__name__}")
            if key == "status" and isinstance(value, dict):
                for glob, code in value.items():
                    if not isinstance(code, int) or not 100 <= code <= 599:
                        raise ValueError(f"status for {glob!r} must be an HTTP status code")
            checked[key] = value
        with self._lock:
            for key, value in checked.items():
                if value is None:
                    self._faults.pop(key, None)
                else:
                    self._faults[key] = value
            if "drop_after_bytes" in checked and "drop_count" not in checked:
                self._faults.setdefault("drop_count", -1)
            return json.loads(json.dumps(self._faults))  # type: ignore[no-any-return]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def get(self, key: str) -> Any:
        with self._lock:
            return self._faults.get(key)

    def claim_drop(self, body_length: int) -> int | None:
        """Byte count after which this response must be dropped, or None."""
        with self._lock:
            after = self._faults.get("drop_after_bytes")
            count = int(self._faults.get("drop_count", -1))
            if after is None or count == 0 or body_length <= after:
                return None
            if count > 0:
                self._faults["drop_count"] = count - 1
            return int(after)

    def claim_corrupt(self, path: str) -> bool:
        with self._lock:
            pattern = self._faults.get("corrupt_once")
            if pattern is None or not (pattern == path or fnmatch.fnmatchcase(path, pattern)):
                return False
            del self._faults["corrupt_once"]
            return True

    def status_for(self, *candidates: str) -> int | None:
        with self._lock:
            rules = dict(self._faults.get("status") or {})
        for glob, code in rules.items():
            if any(fnmatch.fnmatchcase(c, glob) for c in candidates if c):
                return int(code)
        return None


class Stats:
    """Counters of what the server did, for the control API."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._bytes = 0
            self._requests = 0
            self._repos: dict[str, dict[str, int]] = {}
            self._downloads: list[dict[str, Any]] = []

    def count_request(self) -> None:
        with self._lock:
            self._requests += 1

    def add_bytes(self, repo_id: str, path: str, n: int) -> None:
        with self._lock:
            self._bytes += n
            per_repo = self._repos.setdefault(repo_id, {})
            per_repo[path] = per_repo.get(path, 0) + n

    def log_download(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._downloads.append(record)
            del self._downloads[:-MAX_DOWNLOAD_LOG]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            files: dict[str, int] = {}
            for per_repo in self._repos.values():
                for path, n in per_repo.items():
                    files[path] = files.get(path, 0) + n
            return {
                "bytes_served": self._bytes,
                "requests": self._requests,
                "files": files,
                "repos": {r: dict(p) for r, p in self._repos.items()},
                "downloads": [dict(d) for d in self._downloads],
            }


class StandinServer(ThreadingHTTPServer):
    """The HTTP server with the served repos, fault switches and stats."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        repos: dict[str, Repo],
        token: str | None,
        page_size: int,
        faults: FaultState,
    ) -> None:
        self.repos = repos
        self.token = token
        self.page_size = page_size
        self.faults = faults
        self.stats = Stats()
        super().__init__(address, Handler)


class HttpError(Exception):
    """An error response: status, message and optional Hub error headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def repo_not_found(repo_id: str) -> HttpError:
    return HttpError(404, f"Repository {repo_id} not found", {"X-Error-Code": "RepoNotFound"})


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single-range ``Range`` header into (start, end-inclusive).

    Returns None when the header is absent, malformed or has several ranges (the whole file is
    then served, as RFC 9110 allows), and raises HttpError(416) when it cannot be satisfied.
    """
    if header is None:
        return None
    spec = header.strip()
    if not spec.lower().startswith("bytes=") or "," in spec:
        return None
    first, sep, last = spec[6:].strip().partition("-")
    first, last = first.strip(), last.strip()
    if not sep or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    unsatisfiable = HttpError(
        416, "Requested range not satisfiable", {"Content-Range": f"bytes */{size}"}
    )
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise unsatisfiable
    return start, min(end, size - 1)


class DropConnection(Exception):
    """Raised to abort a response by closing the connection."""


class Handler(BaseHTTPRequestHandler):
    """Request handler: routes Hub and control requests."""

    protocol_version = "HTTP/1.1"
    server_version = "hf-hub-standin/1"
    timeout = 300

    def setup(self) -> None:
        super().setup()
        self._status = 0
        self._sent = 0

    @property
    def standin(self) -> StandinServer:
        assert isinstance(self.server, StandinServer)
        return self.server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log (one line per request is written by _log)."""

    def _log(self, method: str, note: str = "") -> None:
        line = f"{self.client_address[0]} {method} {self.path} {self._status} {self._sent}"
        sys.stderr.write(line + (f" {note}" if note else "") + "\n")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    # -- plumbing -------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            return b""
        return self.rfile.read(n) if n > 0 else b""

    def _start(self, status: int, headers: dict[str, str], length: int) -> None:
        self._status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send_bytes(
        self,
        method: str,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        all_headers = {"Content-Type": content_type, **(headers or {})}
        self._start(status, all_headers, len(body))
        if method != "HEAD" and body:
            self.wfile.write(body)
            self._sent = len(body)

    def _send_json(
        self, method: str, status: int, obj: Any, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(obj).encode()
        self._send_bytes(method, status, body, "application/json; charset=utf-8", headers)

    def _send_error_response(self, method: str, err: HttpError) -> None:
        headers = dict(err.headers)
        headers.setdefault("X-Error-Message", err.message)
        self._send_json(method, err.status, {"error": err.message}, headers)

    def _handle(self, method: str) -> None:
        self._status = 0
        self._sent = 0
        note = ""
        try:
            body = self._read_body()
            url = urlsplit(self.path)
            if url.path.startswith("/_standin/"):
                self._control(method, url.path, body)
            else:
                self._hub(method, url.path, parse_qs(url.query), body)
        except HttpError as err:
            self._send_error_response(method, err)
        except DropConnection:
            note = "dropped"
            self._abort()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            note = "client gone"
            self.close_connection = True
        except Exception as exc:  # keep serving; report as a 500
            note = f"error {type(exc).__name__}: {exc}"
            if self._status == 0:
                self._send_error_response(method, HttpError(500, "internal stand-in error"))
            else:
                self._abort()
        finally:
            self._log(method, note)

    def _abort(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- control API ----------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> None:
        server = self.standin
        if path == "/_standin/health" and method in ("GET", "HEAD"):
            repos = {r.repo_id: r.sha for r in server.repos.values()}
            self._send_json(method, 200, {"ok": True, "repos": repos})
        elif path == "/_standin/stats" and method in ("GET", "HEAD"):
            self._send_json(method, 200, server.stats.snapshot())
        elif path == "/_standin/reset" and method == "POST":
            server.stats.reset()
            self._send_json(method, 200, server.stats.snapshot())
        elif path == "/_standin/faults":
            if method in ("GET", "HEAD"):
                self._send_json(method, 200, server.faults.snapshot())
            elif method == "POST":
                try:
                    update = json.loads(body or b"{}")
                    self._send_json(method, 200, server.faults.merge(update))
                except ValueError as exc:
                    raise HttpError(400, f"bad faults: {exc}") from exc
            elif method == "DELETE":
                server.faults.clear()
                self._send_json(method, 200, server.faults.snapshot())
            else:
                raise HttpError(405, "method not allowed")
        else:
            raise HttpError(404, f"no control endpoint {method} {path}")

    # -- Hub API --------------------------------------------------------------------------

    def _check_token(self, repo_id: str | None) -> None:
        server = self.standin
        expected = server.faults.get("require_token") or server.token
        if not expected:
            return
        auth = self.headers.get("Authorization")
        if auth is None:
            what = f"model {repo_id}" if repo_id else "this resource"
            raise HttpError(
                401,
                f"Access to {what} is restricted. You must have access to it and be authenticated"
                " to access it. Please log in.",
                {"X-Error-Code": "GatedRepo"},
            )
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), str(expected).encode()
        ):
            raise HttpError(401, INVALID_CREDENTIALS)

    def _fault_status(self, is_resolve: bool, *candidates: str) -> None:
        code = self.standin.faults.status_for(*candidates)
        if code is None:
            return
        message = f"stand-in fault: HTTP {code}"
        headers: dict[str, str] = {}
        if code == 401:
            message = INVALID_CREDENTIALS
        elif code == 404:
            headers["X-Error-Code"] = "EntryNotFound" if is_resolve else "RepoNotFound"
        elif code in (429, 503):
            headers["Retry-After"] = "1"
        raise HttpError(code, message, headers)

    def _find_repo(self, segments: list[str]) -> tuple[Repo | None, list[str]]:
        """Longest known repo id that prefixes ``segments``; returns it and the rest."""
        best: Repo | None = None
        for repo in self.standin.repos.values():
            parts = repo.repo_id.split("/")
            if segments[: len(parts)] == parts and (
                best is None or len(parts) > len(best.repo_id.split("/"))
            ):
                best = repo
        if best is None:
            return None, segments
        return best, segments[len(best.repo_id.split("/")) :]

    def _hub(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        server = self.standin
        server.stats.count_request()
        delay = server.faults.get("delay_s")
        if delay:
            time.sleep(float(delay))
        segments = [unquote(s) for s in path.split("/")[1:]]
        if segments and segments[-1] == "":
            segments = segments[:-1]
        if (
            len(segments) >= 2
            and segments[0] == "api"
            and segments[1] in ("models", "datasets", "spaces")
        ):
            self._api(method, path, segments[1], segments[2:], query, body)
            return
        if "resolve" in segments[1:]:
            index = segments.index("resolve", 1)
            self._resolve(method, path, segments[:index], segments[index + 1 :])
            return
        self._check_token(None)
        self._fault_status(False, path)
        raise HttpError(404, f"Not found: {path}")

    def _api(
        self,
        method: str,
        path: str,
        repo_type: str,
        rest: list[str],
        query: dict[str, list[str]],
        body: bytes,
    ) -> None:
        repo, tail = self._find_repo(rest) if repo_type == "models" else (None, rest)
        self._check_token("/".join(rest[:2]) if repo is None else repo.repo_id)
        self._fault_status(False, path)
        if repo is None:
            raise repo_not_found("/".join(rest[:2]))
        if not tail and method in ("GET", "HEAD"):
            self._send_json(method, 200, repo.info(_flag(query, "blobs")))
        elif len(tail) == 2 and tail[0] == "revision" and method in ("GET", "HEAD"):
            self._require_revision(repo, tail[1])
            self._send_json(method, 200, repo.info(_flag(query, "blobs")))
        elif len(tail) >= 2 and tail[0] == "tree" and method in ("GET", "HEAD"):
            self._tree(method, repo, tail[1], "/".join(tail[2:]), query)
        elif len(tail) == 2 and tail[0] == "paths-info" and method == "POST":
            self._paths_info(method, repo, tail[1], body)
        elif tail == ["refs"] and method in ("GET", "HEAD"):
            branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.sha}
            self._send_json(method, 200, {"branches": [branch], "converts": [], "tags": []})
        elif len(tail) == 2 and tail[0] == "commits" and method in ("GET", "HEAD"):
            self._require_revision(repo, tail[1])
            commit = {
                "id": repo.sha,
                "title": "Upload folder using huggingface_hub",
                "message": "",
                "authors": [{"user": repo.repo_id.split("/")[0], "avatar": None}],
                "date": repo.last_modified,
            }
            self._send_json(method, 200, [commit])
        else:
            raise HttpError(404, f"Not found: {method} {path}")

    def _require_revision(self, repo: Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise HttpError(
                404,
                f"Invalid rev id: {revision}",
                {"X-Error-Code": "RevisionNotFound"},
            )
        return sha

    def _tree(
        self, method: str, repo: Repo, revision: str, base: str, query: dict[str, list[str]]
    ) -> None:
        self._require_revision(repo, revision)
        recursive = _flag(query, "recursive")
        expand = _flag(query, "expand")
        dirs = repo.directories()
        if base and base not in dirs:
            raise HttpError(
                404,
                f"{base} does not exist on revision {revision}",
                {"X-Error-Code": "EntryNotFound"},
            )
        prefix = f"{base}/" if base else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        entries: list[tuple[str, dict[str, Any] | None]] = [
            (d, None) for d in sorted(dirs) if wanted(d)
        ]
        entries += [(p, repo.file_entry(f, expand)) for p, f in repo.files.items() if wanted(p)]
        entries.sort(key=lambda e: e[0])
        try:
            start = int((query.get("cursor") or ["0"])[0])
            limit = int((query.get("limit") or [str(self.standin.page_size)])[0])
        except ValueError as exc:
            raise HttpError(400, "bad cursor or limit") from exc
        limit = max(1, min(limit, 1000))
        page = entries[start : start + limit]
        result = [e if e is not None else repo.dir_entry(p, expand) for p, e in page]
        headers: dict[str, str] = {}
        if start + limit < len(entries):
            local = self.connection.getsockname()
            host = self.headers.get("Host") or f"{local[0]}:{local[1]}"
            params = f"recursive={str(recursive).lower()}&expand={str(expand).lower()}"
            params += f"&limit={limit}&cursor={start + limit}"
            quoted_base = "/" + quote(base, safe="") if base else ""
            next_url = (
                f"http://{host}/api/models/{repo.repo_id}/tree/{quote(revision, safe='')}"
                f"{quoted_base}?{params}"
            )
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._send_json(method, 200, result, headers)

    def _paths_info(self, method: str, repo: Repo, revision: str, body: bytes) -> None:
        self._require_revision(repo, revision)
        content_type = self.headers.get("Content-Type", "")
        paths: list[str]
        expand = False
        if "json" in content_type:
            data = json.loads(body or b"{}")
            paths = [str(p) for p in data.get("paths", [])]
            expand = bool(data.get("expand", False))
        else:
            form = parse_qs(body.decode("utf-8", "replace"))
            paths = form.get("paths", []) + form.get("paths[]", [])
            expand = (form.get("expand") or ["false"])[0].lower() in ("1", "true")
        dirs = repo.directories()
        result: list[dict[str, Any]] = []
        for p in paths:
            p = p.strip("/")
            if p in repo.files:
                result.append(repo.file_entry(repo.files[p], expand))
            elif p in dirs:
                result.append(repo.dir_entry(p, expand))
        self._send_json(method, 200, result)

    def _resolve(self, method: str, path: str, repo_parts: list[str], rest: list[str]) -> None:
        repo_id = "/".join(repo_parts)
        repo = self.standin.repos.get(repo_id)
        self._check_token(repo_id)
        file_path = "/".join(rest[1:])
        self._fault_status(True, file_path, path)
        if repo is None:
            raise repo_not_found(repo_id)
        if method not in ("GET", "HEAD"):
            raise HttpError(405, "method not allowed")
        if not rest:
            raise HttpError(404, "Revision missing", {"X-Error-Code": "RevisionNotFound"})
        sha = self._require_revision(repo, rest[0])
        repo_file = repo.files.get(file_path)
        if repo_file is None:
            raise HttpError(
                404,
                f"Entry not found: {file_path}",
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha},
            )
        basename = file_path.split("/")[-1]
        ascii_name = basename.encode("ascii", "replace").decode().replace('"', "_")
        headers = {
            "Content-Type": CONTENT_TYPES.get(
                os.path.splitext(file_path)[1], "application/octet-stream"
            ),
            "Accept-Ranges": "bytes",
            "ETag": f'"{repo_file.etag}"',
            "X-Repo-Commit": sha,
            "Content-Disposition": (
                f"inline; filename*=UTF-8''{quote(basename)}; filename=\"{ascii_name}\";"
            ),
        }
        if repo_file.lfs:
            headers["X-Linked-Etag"] = f'"{repo_file.sha256}"'
            headers["X-Linked-Size"] = str(repo_file.size)
        size = repo_file.size
        byte_range = None
        if_range = self.headers.get("If-Range")
        if if_range is None or if_range.strip() == f'"{repo_file.etag}"':
            try:
                byte_range = parse_range(self.headers.get("Range"), size)
            except HttpError as err:
                err.headers.update({"X-Repo-Commit": sha, "ETag": f'"{repo_file.etag}"'})
                raise
        if byte_range is None:
            status, start, length = 200, 0, size
        else:
            status, start, length = 206, byte_range[0], byte_range[1] - byte_range[0] + 1
            headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{size}"
        self._start(status, headers, length)
        if method == "HEAD":
            return
        self._stream(repo, repo_file, start, length)

    def _stream(self, repo: Repo, repo_file: RepoFile, start: int, length: int) -> None:
        server = self.standin
        faults = server.faults
        drop_at = faults.claim_drop(length)
        corrupt_at = length // 2 if length > 0 and faults.claim_corrupt(repo_file.path) else None
        record: dict[str, Any] = {
            "repo": repo.repo_id,
            "path": repo_file.path,
            "range": self.headers.get("Range"),
            "status": self._status,
            "start": start,
            "length": length,
            "sent": 0,
            "dropped": drop_at is not None,
            "corrupted": corrupt_at is not None,
        }
        next_time = time.monotonic()
        try:
            with open(repo.files_dir / repo_file.path, "rb") as fh:
                fh.seek(start)
                while self._sent < length:
                    limit = length - self._sent
                    if drop_at is not None:
                        limit = min(limit, drop_at - self._sent)
                        if limit <= 0:
                            raise DropConnection()
                    rate = faults.get("rate_limit_bps")
                    chunk = CHUNK if not rate else max(1, min(CHUNK, int(rate) // 20))
                    data = fh.read(min(chunk, limit))
                    if not data:
                        raise OSError(f"{repo_file.path} shrank while being served")
                    if corrupt_at is not None and self._sent <= corrupt_at < self._sent + len(data):
                        flipped = bytearray(data)
                        flipped[corrupt_at - self._sent] ^= 0xFF
                        data = bytes(flipped)
                    self.wfile.write(data)
                    self._sent += len(data)
                    server.stats.add_bytes(repo.repo_id, repo_file.path, len(data))
                    if rate:
                        now = time.monotonic()
                        next_time = max(next_time, now - 1.0) + len(data) / int(rate)
                        if next_time > now:
                            time.sleep(next_time - now)
            if drop_at is not None:
                raise DropConnection()
        finally:
            record["sent"] = self._sent
            server.stats.log_download(record)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name) or query.get(f"{name}[]") or []
    return bool(values) and values[0].lower() in ("1", "true", "yes")


def parse_repo_arg(value: str) -> tuple[str, Path]:
    repo_id, sep, directory = value.partition("=")
    if not sep or not repo_id or not directory:
        raise argparse.ArgumentTypeError("expected REPO_ID=DIR")
    return repo_id.strip("/"), Path(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Stand-in Hugging Face Hub server for the test lab."
    )
    parser.add_argument(
        "--repo",
        action="append",
        type=parse_repo_arg,
        required=True,
        metavar="REPO_ID=DIR",
        help="serve the fixture in DIR (made by fixture.py) as REPO_ID; repeatable",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on Hub requests")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--page-size", type=int, default=50, help="tree API page size")
    args = parser.parse_args(argv)

    repos: dict[str, Repo] = {}
    for repo_id, directory in args.repo:
        try:
            repos[repo_id] = Repo.load(repo_id, directory)
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"cannot load {repo_id} from {directory}: {exc}")

    faults = FaultState()
    initial = os.environ.get("HF_HUB_STANDIN_FAULTS")
    if initial:
        try:
            faults.merge(json.loads(initial))
        except ValueError as exc:
            parser.error(f"HF_HUB_STANDIN_FAULTS: {exc}")

    server = StandinServer(
        (args.host, args.port), repos, args.token, max(1, args.page_size), faults
    )
    port = server.server_address[1]

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.port_file is not None:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    served = ", ".join(f"{r.repo_id}@{r.sha[:12]}" for r in repos.values())
    sys.stderr.write(f"hf-hub-standin listening on http://{args.host}:{port} serving {served}\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
