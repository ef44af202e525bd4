"""Stand-in for the Hugging Face Hub, used only by the project's test lab: the HTTP server.

Serves synthetic repos built by ``fixture.py`` over the subset of the Hub protocol that an
unmodified ``huggingface_hub`` (``snapshot_download``, ``hf_hub_download``, ``HfApi``, the ``hf``
CLI) uses when pointed at it with ``HF_ENDPOINT=http://HOST:PORT``. Standard library only.

CLI::

    python server.py --repo REPO_ID=DIR [--repo ...] [--host 127.0.0.1] [--port 0]
                     [--token TOKEN] [--port-file PATH] [--page-size 50]
                     [--cdn-port 0 | --no-cdn]

Hub endpoints (``rev`` is ``main``, ``refs/heads/main`` or the 40-hex commit sha)::

    GET       /api/models/{repo}                      model info (revision main)
    GET       /api/models/{repo}/revision/{rev}       model info (?blobs=true adds sizes and LFS)
    GET       /api/models/{repo}/tree/{rev}[/{path}]  ?recursive=&expand=&cursor=, Link rel="next"
    POST      /api/models/{repo}/paths-info/{rev}     form: paths=...&expand=...
    GET       /api/models/{repo}/refs                 branches (main)
    GET       /api/models/{repo}/commits/{rev}        one commit
    GET       /api/models/{repo}/xet-read-token/{rev} Xet CAS URL and token (fault ``xet``)
    HEAD/GET  /{repo}/resolve/{rev}/{path}            file (LFS: 302 to the CDN), Range support

A stand-in is only worth what it refuses: at every point the module depends on, this server is
at least as strict as huggingface.co. Each point and its source (``hh:`` is huggingface_hub
2.4.0, as installed; the audit is ``reference/field/hf-fidelity.md`` of the shared notes):

* **LFS files are served by another origin.** ``/resolve/`` of an LFS file answers **302** to a
  signed URL on a second listener (``--cdn-port``, another port: another origin), with
  ``X-Linked-Etag``, ``X-Linked-Size``, ``X-Repo-Commit`` and ``ETag`` on the redirect, not on
  the CDN's answer (captures in huggingface/datasets#7685 and ngxson/wllama#248; hh
  file_download.py reads them from the 302). Small files are served 200 by the Hub. The CDN's
  ``ETag`` is its own, not the sha256 (nullata/llamaMan#70, datasets#7931). The CDN **refuses
  an ``Authorization`` header** (400 InvalidArgument "Only one auth mechanism allowed", as S3
  does for a presigned URL with a second credential; hh strips the header before the CDN GET,
  file_download.py), a bad signature (403) and an **expired URL** (403 "Request has expired";
  ``cdn_url_ttl_s``, default 3600 s like the bridge's X-Amz-Expires). ``--no-cdn`` serves LFS
  files directly.
* **Rate limits.** Fixed 5-minute windows per client (IP, or token) and bucket: ``api`` (every
  ``/api/`` call, the revision lookup included) and ``resolvers`` (``/resolve/``); anonymous
  500 / 3,000, with a token 1,000 / 5,000 (docs/hub/rate-limits, hub-docs#1958). Every Hub answer
  carries ``RateLimit: "BUCKET";r=LEFT;t=RESET`` and ``RateLimit-Policy: "fixed window";
  "BUCKET";q=QUOTA;w=300``; over quota: **429** with ``Retry-After`` = t (header format: hh
  utils/_http.py ``parse_ratelimit_headers``, huggingface_hub#3570/#3577).
* **Gated repos** (fault ``gated``: {repo: [tokens admitted]}) list anonymously (info, revision,
  tree: huggingface.js#945) and refuse ``/resolve/`` and the xet token: **401** ``X-Error-Code:
  GatedRepo`` "...Please log in." without a token, **403** GatedRepo "...not in the authorized
  list" with a valid token not admitted (diffusers#4447).
* **Tokens.** A token the Hub does not know is refused everywhere, public repos included: **401**
  ``X-Error-Message: Invalid credentials in Authorization header`` (sentence-transformers#3436;
  special-cased in hh utils/_http.py). Known tokens: ``--token``/``require_token``, ``tokens``,
  and those admitted to gated repos.
* **Unknown and private repos** answer **401** ``RepoNotFound`` to an anonymous caller and 404
  with a token (datasets#4472: "the hub now returns 401 instead of 404 for unauthenticated
  requests"). ``--token``/``require_token`` make every repo private to that token.
* **A moving ``main``.** ``POST /_standin/commit`` serves one more commit of a repo and moves
  ``main`` to it (``fixture.derive_commit`` makes one, e.g. a same-size change in place); older
  commits stay resolvable by sha, as on the Hub. ``--repo ID=DIR`` given twice serves both, the
  last as ``main``.
* **Ranges.** One range per request, 206 with ``Content-Range``, 416 past the end (RFC 9110).
  Switches for what CDNs do: ``range_ignore`` (glob: answer a Range with 200 and the whole file,
  as hh file_download.py expects from CloudFront) and ``range_416`` (N: answer the next N ranged
  requests 416, as the bridge did in Eventual-Inc/Daft#4780).
* **Xet** (fault ``xet``: true): LFS resolves add ``X-Xet-Hash`` and ``Link: <…/api/models/
  {repo}/xet-read-token/{sha}>; rel="xet-auth"`` (hh utils/_xet.py, huggingface_hub#2920), and
  the xet-read-token endpoint answers with ``X-Xet-Cas-Url``, ``X-Xet-Access-Token`` and
  ``X-Xet-Token-Expiration``. The CAS itself (reconstruction terms, xorbs of content-defined
  chunks, LZ4 / byte grouping, Merkle hashes) is **not served**: it answers 501, so a client
  taking the Xet path fails; the ``X-Xet-Hash`` value is not a real Xet Merkle hash. This is what
  the lab can say about Xet: how a client fails on it, not how fast it is.

Errors carry the headers ``huggingface_hub`` maps to its exceptions (hh utils/_http.py
``hf_raise_for_status``): ``X-Error-Code: RepoNotFound`` (RepositoryNotFoundError),
``RevisionNotFound``, ``EntryNotFound`` (RemoteEntryNotFoundError), ``GatedRepo``
(GatedRepoError) and ``X-Error-Message: Invalid credentials in Authorization header``.

Control API (never behind the token, never counted in the stats)::

    GET    /_standin/health   {"ok": true, "repos": {id: sha}}
    GET    /_standin/stats    {"bytes_served", "requests", "files": {path: bytes},
                               "repos": {id: {path: bytes}}, "clients": {ip: bytes},
                               "downloads": [...]}
    POST   /_standin/reset    zero the stats and the rate-limit windows
    POST   /_standin/commit   {"repo": id, "dir": fixture dir, "main": true}: serve a commit
    GET    /_standin/faults   current fault switches
    POST   /_standin/faults   JSON object merged into the fault switches
    DELETE /_standin/faults   clear all fault switches

Fault switches (also settable at start from the env var ``HF_HUB_STANDIN_FAULTS``, a JSON object):

* ``drop_after_bytes`` (int): while sending a file body longer than this, close the
  connection abruptly after this many body bytes; ``drop_count`` (int, default -1 = unlimited)
  is how many responses to drop before behaving normally again (it counts down to 0).
* ``corrupt_once`` (file path, glob or ``"*"``): flip one byte in the middle of the next
  file body of a matching file, then clear the switch.
* ``rate_limit_bps`` (int): throttle each body to about that many bytes per second.
* ``status`` ({glob: int}): answer with that HTTP status; the glob is matched against the file
  path of ``/resolve/`` requests and against the URL path of every other Hub request.
* ``require_token`` (str): like ``--token``, set at run time (takes precedence over it).
* ``delay_s`` (float): sleep this long before answering each Hub request.
* ``tokens`` (list), ``gated`` ({repo: [tokens]}), ``xet`` (bool), ``cdn_url_ttl_s`` (float),
  ``range_ignore`` (glob), ``range_416`` (int): above.
* ``quota`` ({"api": N, "resolvers": N}) and ``window_s`` (float): the rate-limit windows.
* ``throttle`` ({glob: {"count": N, "retry_after": S or [S, ...]}}): answer the next N matching
  Hub requests (glob as for ``status``) 429 with ``Retry-After: S`` and ``RateLimit … r=0;t=S``
  (a list gives one value per answer).

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
    "tokens": list,
    "gated": dict,
    "throttle": dict,
    "quota": dict,
    "window_s": float,
    "range_ignore": str,
    "range_416": int,
    "cdn_url_ttl_s": float,
    "xet": bool,
}
# Anonymous limits per 5-minute window (docs/hub/rate-limits): API 500, Resolvers 3,000; a free
# account's token: 1,000 and 5,000.
ANONYMOUS_QUOTA = {"api": 500, "resolvers": 3000}
TOKEN_QUOTA = {"api": 1000, "resolvers": 5000}
RATE_WINDOW_S = 300.0
CDN_URL_TTL_S = 3600.0
NOT_FOUND_MESSAGE = (
    "Repository Not Found for url: {url}. Please make sure you specified the correct `repo_id` "
    "and `repo_type`. If you are trying to access a private or gated repo, make sure you are "
    "authenticated."
)
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

    def info(self, blobs: bool, gated: bool = False) -> dict[str, Any]:
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
            "gated": "auto" if gated else False,
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
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"fault {key!r} must be of type bool")
            elif not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"fault {key!r} must be of type {kind.__name__}")
            if key == "status" and isinstance(value, dict):
                for glob, code in value.items():
                    if not isinstance(code, int) or not 100 <= code <= 599:
                        raise ValueError(f"status for {glob!r} must be an HTTP status code")
            if key == "throttle" and isinstance(value, dict):
                for glob, rule in value.items():
                    if not isinstance(rule, dict) or not isinstance(rule.get("count"), int):
                        raise ValueError(
                            f"throttle for {glob!r} must be {{'count': N, 'retry_after': S}}"
                        )
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

    def claim_throttle(self, *candidates: str) -> int | None:
        """Retry-After seconds of a throttle rule matching a candidate (counting it down)."""
        with self._lock:
            rules = self._faults.get("throttle") or {}
            for glob, rule in rules.items():
                if rule.get("count", 0) > 0 and any(
                    fnmatch.fnmatchcase(c, glob) for c in candidates if c
                ):
                    rule["count"] -= 1
                    asked = rule.get("retry_after", 1)
                    if isinstance(asked, list):  # one value per 429, the last one repeated
                        value = asked.pop(0) if len(asked) > 1 else asked[0]
                        return int(value)
                    return int(asked)
        return None

    def claim_416(self) -> bool:
        with self._lock:
            count = int(self._faults.get("range_416") or 0)
            if count <= 0:
                return False
            self._faults["range_416"] = count - 1
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
            self._clients: dict[str, int] = {}
            self._downloads: list[dict[str, Any]] = []

    def count_request(self) -> None:
        with self._lock:
            self._requests += 1

    def add_bytes(self, repo_id: str, path: str, n: int, client: str) -> None:
        with self._lock:
            self._bytes += n
            self._clients[client] = self._clients.get(client, 0) + n
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
                "clients": dict(self._clients),
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
        self.repos = repos  # repo id -> the commit `main` points at
        self.commits = {r: {repo.sha: repo} for r, repo in repos.items()}
        self.token = token
        self.page_size = page_size
        self.faults = faults
        self.stats = Stats()
        self.windows = RateWindows()
        self.secret = os.urandom(16)
        self.cdn: CdnServer | None = None
        super().__init__(address, Handler)

    def add_commit(self, repo_id: str, repo: Repo, main: bool = True) -> None:
        """Serve ``repo`` as one more commit of ``repo_id`` (by sha), `main` moved to it."""
        self.commits.setdefault(repo_id, {})[repo.sha] = repo
        if main or repo_id not in self.repos:
            self.repos[repo_id] = repo

    def revision(self, repo_id: str, revision: str) -> Repo | None:
        """The commit ``revision`` (main, refs/heads/main or a known sha) names, or None."""
        if revision in ("main", "refs/heads/main"):
            return self.repos.get(repo_id)
        return self.commits.get(repo_id, {}).get(revision)

    def valid_tokens(self) -> set[str]:
        tokens = {str(t) for t in self.faults.get("tokens") or []}
        required = self.faults.get("require_token") or self.token
        if required:
            tokens.add(str(required))
        for allowed in (self.faults.get("gated") or {}).values():
            tokens.update(str(t) for t in allowed or [])
        return tokens

    def sign(self, repo_id: str, sha256: str, expires: int) -> str:
        message = f"{repo_id}/{sha256}/{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


class RateWindows:
    """Fixed 5-minute windows per client and bucket, as the Hub counts them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}

    def hit(self, client: str, bucket: str, quota: int, window: float) -> tuple[int, int]:
        """Count one request; (remaining, seconds until reset). remaining < 0: over quota."""
        now = time.monotonic()
        with self._lock:
            start, used = self._windows.get((client, bucket), (now, 0))
            if now - start >= window:
                start, used = now, 0
            used += 1
            self._windows[(client, bucket)] = (start, used)
        reset = max(1, int(start + window - now + 0.999))
        return quota - used, reset

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


class CdnServer(ThreadingHTTPServer):
    """The second origin LFS files are redirected to (huggingface.co's CDN / Xet bridge)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hub: StandinServer) -> None:
        self.hub = hub
        super().__init__(address, CdnHandler)


class HttpError(Exception):
    """An error response: status, message and optional Hub error headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def repo_not_found(repo_id: str, anonymous: bool = False) -> HttpError:
    """401 to an anonymous caller (the Hub does not say whether a repo exists), 404 otherwise."""
    message = NOT_FOUND_MESSAGE.format(url=repo_id)
    return HttpError(401 if anonymous else 404, message, {"X-Error-Code": "RepoNotFound"})


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
        self._extra: dict[str, str] = {}

    @property
    def standin(self) -> StandinServer:
        if isinstance(self.server, CdnServer):
            return self.server.hub
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
        for name, value in {**self._extra, **headers}.items():
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

    # The CDN (CdnHandler) answers its own routes and errors; the rest is the same.
    log_prefix = ""
    internal_error = "internal stand-in error"

    def _route(self, method: str) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        if url.path.startswith("/_standin/"):
            self._control(method, url.path, body)
        else:
            self._hub(method, url.path, parse_qs(url.query), body)

    def _send_failure(self, method: str, err: HttpError) -> None:
        self._send_error_response(method, err)

    def _handle(self, method: str) -> None:
        self._status = 0
        self._sent = 0
        self._extra = {}
        note = ""
        try:
            self._route(method)
        except HttpError as err:
            self._send_failure(method, err)
        except DropConnection:
            note = "dropped"
            self._abort()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            note = "client gone"
            self.close_connection = True
        except Exception as exc:  # keep serving; report as a 500
            note = f"error {type(exc).__name__}: {exc}"
            if self._status == 0:
                self._send_failure(method, HttpError(500, self.internal_error))
            else:
                self._abort()
        finally:
            self._log(method, f"{self.log_prefix} {note}".strip() if self.log_prefix else note)

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
            repos = {r: repo.sha for r, repo in server.repos.items()}
            self._send_json(method, 200, {"ok": True, "repos": repos})
        elif path == "/_standin/stats" and method in ("GET", "HEAD"):
            self._send_json(method, 200, server.stats.snapshot())
        elif path == "/_standin/reset" and method == "POST":
            server.stats.reset()
            server.windows.clear()
            self._send_json(method, 200, server.stats.snapshot())
        elif path == "/_standin/commit" and method == "POST":
            try:
                update = json.loads(body or b"{}")
                repo = Repo.load(str(update["repo"]), Path(str(update["dir"])))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise HttpError(400, f"bad commit: {exc}") from exc
            server.add_commit(repo.repo_id, repo, main=bool(update.get("main", True)))
            self._send_json(method, 200, {"repo": repo.repo_id, "sha": repo.sha})
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

    def _bearer(self) -> str | None:
        """The Bearer token sent, "" for a malformed Authorization header, None for none."""
        auth = self.headers.get("Authorization")
        if auth is None:
            return None
        scheme, _, given = auth.partition(" ")
        return given.strip() if scheme.lower() == "bearer" else ""

    def _check_token(self, repo_id: str | None, exists: bool = True) -> str | None:
        """Refuse an unknown token (401), a private or unknown repo (401 anonymous, else 404)."""
        server = self.standin
        token = self._bearer()
        if token is not None and not any(
            hmac.compare_digest(token.encode(), t.encode()) for t in server.valid_tokens()
        ):
            raise HttpError(401, INVALID_CREDENTIALS)
        required = server.faults.get("require_token") or server.token
        if required and (
            token is None or not hmac.compare_digest(token.encode(), str(required).encode())
        ):
            raise repo_not_found(repo_id or "this resource", anonymous=token is None)
        if not exists:
            raise repo_not_found(repo_id or "this resource", anonymous=token is None)
        return token

    def _check_gate(self, repo_id: str, token: str | None) -> None:
        """A gated repo lists anonymously but serves files only to tokens it admitted."""
        gated = self.standin.faults.get("gated") or {}
        if repo_id not in gated:
            return
        if token is None:
            raise HttpError(
                401,
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
                {"X-Error-Code": "GatedRepo"},
            )
        if token not in (gated[repo_id] or []):
            raise HttpError(
                403,
                f"Access to model {repo_id} is restricted and you are not in the authorized "
                f"list. Visit https://huggingface.co/{repo_id} to ask for access.",
                {"X-Error-Code": "GatedRepo"},
            )

    def _limit(self, bucket: str, *candidates: str) -> None:
        """Count the request in its rate-limit window; 429 when over quota or throttled."""
        server = self.standin
        faults = server.faults
        token = self._bearer()
        quotas = dict(TOKEN_QUOTA if token else ANONYMOUS_QUOTA)
        quotas.update({k: int(v) for k, v in (faults.get("quota") or {}).items()})
        window = float(faults.get("window_s") or RATE_WINDOW_S)
        client = (
            f"token:{hashlib.sha256(token.encode()).hexdigest()[:16]}"
            if token
            else (f"ip:{self.client_address[0]}")
        )
        remaining, reset = server.windows.hit(client, bucket, quotas[bucket], window)
        throttled = faults.claim_throttle(*candidates)
        if throttled is not None:
            remaining, reset = -1, throttled
        self._extra = {
            "RateLimit": f'"{bucket}";r={max(0, remaining)};t={reset}',
            "RateLimit-Policy": f'"fixed window";"{bucket}";q={quotas[bucket]};w={int(window)}',
        }
        if remaining < 0:
            raise HttpError(
                429,
                f"You have been rate-limited; you can retry this action in {reset} seconds.",
                {"Retry-After": str(reset)},
            )

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
        if "resolve" in segments[1:]:
            index = segments.index("resolve", 1)
            self._limit("resolvers", path, "/".join(segments[index + 2 :]))
        else:
            self._limit("api", path)
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
        repo_id = "/".join(rest[:2]) if repo is None else repo.repo_id
        token = self._check_token(repo_id, exists=repo is not None)
        self._fault_status(False, path)
        assert repo is not None
        gated = repo.repo_id in (self.standin.faults.get("gated") or {})
        if not tail and method in ("GET", "HEAD"):
            self._send_json(method, 200, repo.info(_flag(query, "blobs"), gated))
        elif len(tail) == 2 and tail[0] == "revision" and method in ("GET", "HEAD"):
            commit = self._require_revision(repo, tail[1])
            self._send_json(method, 200, commit.info(_flag(query, "blobs"), gated))
        elif len(tail) >= 2 and tail[0] == "tree" and method in ("GET", "HEAD"):
            self._tree(method, repo, tail[1], "/".join(tail[2:]), query)
        elif len(tail) == 2 and tail[0] == "paths-info" and method == "POST":
            self._paths_info(method, repo, tail[1], body)
        elif len(tail) == 2 and tail[0] == "xet-read-token" and method == "GET":
            self._check_gate(repo.repo_id, token)
            self._xet_token(method, repo, tail[1])
        elif tail == ["refs"] and method in ("GET", "HEAD"):
            branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.sha}
            self._send_json(method, 200, {"branches": [branch], "converts": [], "tags": []})
        elif len(tail) == 2 and tail[0] == "commits" and method in ("GET", "HEAD"):
            found = self._require_revision(repo, tail[1])
            record = {
                "id": found.sha,
                "title": "Upload folder using huggingface_hub",
                "message": "",
                "authors": [{"user": repo.repo_id.split("/")[0], "avatar": None}],
                "date": found.last_modified,
            }
            self._send_json(method, 200, [record])
        else:
            raise HttpError(404, f"Not found: {method} {path}")

    def _require_revision(self, repo: Repo, revision: str) -> Repo:
        """The commit of ``repo`` that ``revision`` names (404 RevisionNotFound otherwise)."""
        commit = self.standin.revision(repo.repo_id, revision)
        if commit is None:
            raise HttpError(
                404,
                f"Invalid rev id: {revision}",
                {"X-Error-Code": "RevisionNotFound"},
            )
        return commit

    def _xet_token(self, method: str, repo: Repo, revision: str) -> None:
        """The xet-read-token answer: where the CAS is and a short-lived token for it."""
        self._require_revision(repo, revision)
        cdn = self.standin.cdn
        if cdn is None or not self.standin.faults.get("xet"):
            raise HttpError(404, f"{repo.repo_id} is not stored in Xet")
        expires = int(time.time()) + 3600
        token = self.standin.sign(repo.repo_id, "xet", expires)
        cas_url = f"http://{self._cdn_host()}:{cdn.server_address[1]}/cas"
        headers = {
            "X-Xet-Cas-Url": cas_url,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(expires),
        }
        body = {"casUrl": cas_url, "accessToken": token, "exp": expires}
        self._send_json(method, 200, body, headers)

    def _cdn_host(self) -> str:
        cdn = self.standin.cdn
        assert cdn is not None
        host = str(cdn.server_address[0])
        if host in ("0.0.0.0", "::", ""):
            host = (self.headers.get("Host") or "127.0.0.1").rsplit(":", 1)[0]
        return host

    def _tree(
        self, method: str, repo: Repo, revision: str, base: str, query: dict[str, list[str]]
    ) -> None:
        repo = self._require_revision(repo, revision)
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
        repo = self._require_revision(repo, revision)
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
        token = self._check_token(repo_id, exists=repo is not None)
        file_path = "/".join(rest[1:])
        self._fault_status(True, file_path, path)
        assert repo is not None
        if method not in ("GET", "HEAD"):
            raise HttpError(405, "method not allowed")
        if not rest:
            raise HttpError(404, "Revision missing", {"X-Error-Code": "RevisionNotFound"})
        commit = self._require_revision(repo, rest[0])
        sha = commit.sha
        self._check_gate(repo_id, token)
        repo_file = commit.files.get(file_path)
        if repo_file is None:
            raise HttpError(
                404,
                f"Entry not found: {file_path}",
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha},
            )
        headers = file_headers(repo_file)
        headers.update({"ETag": f'"{repo_file.etag}"', "X-Repo-Commit": sha})
        if repo_file.lfs:
            headers["X-Linked-Etag"] = f'"{repo_file.sha256}"'
            headers["X-Linked-Size"] = str(repo_file.size)
        cdn = self.standin.cdn
        if repo_file.lfs and cdn is not None:
            # huggingface.co answers 302 to a signed URL on another origin for LFS/Xet files;
            # the file's facts ride on the redirect, not on the CDN's answer.
            ttl = float(self.standin.faults.get("cdn_url_ttl_s") or CDN_URL_TTL_S)
            expires = int(time.time() + ttl)
            signature = self.standin.sign(repo_id, repo_file.sha256, expires)
            location = (
                f"http://{self._cdn_host()}:{cdn.server_address[1]}/repos/{quote(repo_id)}/"
                f"{repo_file.sha256}?Expires={expires}&Signature={signature}"
                f"&file={quote(file_path, safe='')}"
            )
            redirect = {k: v for k, v in headers.items() if k.startswith("X-") or k == "ETag"}
            redirect["Location"] = location
            if self.standin.faults.get("xet"):
                xet_hash = hashlib.sha256(f"xet:{repo_file.sha256}".encode()).hexdigest()
                refresh = (
                    f"http://{self.headers.get('Host')}/api/models/{repo_id}/xet-read-token/{sha}"
                )
                redirect["X-Xet-Hash"] = xet_hash
                redirect["Link"] = f'<{refresh}>; rel="xet-auth"'
            self._start(302, redirect, 0)
            return
        self._serve_file(method, commit, repo_file, headers)

    def _serve_file(
        self, method: str, repo: Repo, repo_file: RepoFile, headers: dict[str, str]
    ) -> None:
        """The file's bytes with Range support, and the Range faults (200 to a Range, 416)."""
        size = repo_file.size
        byte_range = None
        etag = headers.get("ETag", "")
        if_range = self.headers.get("If-Range")
        faults = self.standin.faults
        ranged = self.headers.get("Range") is not None
        ignore = faults.get("range_ignore")
        if ranged and ignore and fnmatch.fnmatchcase(repo_file.path, ignore):
            ranged = False  # a server that ignores Range sends the whole file with 200
        if ranged and faults.claim_416():
            raise HttpError(
                416, "Requested range not satisfiable", {"Content-Range": f"bytes */{size}"}
            )
        if ranged and (if_range is None or if_range.strip() == etag):
            try:
                byte_range = parse_range(self.headers.get("Range"), size)
            except HttpError as err:
                err.headers.update({k: v for k, v in headers.items() if k != "Content-Type"})
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
                    server.stats.add_bytes(
                        repo.repo_id, repo_file.path, len(data), self.client_address[0]
                    )
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


def file_headers(repo_file: RepoFile) -> dict[str, str]:
    basename = repo_file.path.split("/")[-1]
    ascii_name = basename.encode("ascii", "replace").decode().replace('"', "_")
    return {
        "Content-Type": CONTENT_TYPES.get(
            os.path.splitext(repo_file.path)[1], "application/octet-stream"
        ),
        "Accept-Ranges": "bytes",
        "Content-Disposition": (
            f"inline; filename*=UTF-8''{quote(basename)}; filename=\"{ascii_name}\";"
        ),
    }


class CdnHandler(Handler):
    """The CDN: serves signed URLs only, refuses a second credential, knows no Hub API."""

    server_version = "hf-cdn-standin/1"

    log_prefix = "cdn"
    internal_error = "InternalError"

    def _route(self, method: str) -> None:
        self._read_body()
        url = urlsplit(self.path)
        self._cdn(method, url.path, parse_qs(url.query))

    def _send_failure(self, method: str, err: HttpError) -> None:
        self._send_cdn_error(method, err)

    def _send_cdn_error(self, method: str, err: HttpError) -> None:
        code = err.headers.pop("X-Code", "Error")
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{err.message}</Message></Error>"
        ).encode()
        self._send_bytes(method, err.status, body, "application/xml", err.headers)

    def _cdn(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        hub = self.standin
        hub.stats.count_request()
        if path.startswith("/cas/"):
            # hf_xet's CAS (reconstruction terms, xorbs): not served by this stand-in
            raise HttpError(
                501,
                "the stand-in serves no Xet CAS: Xet reconstruction is not implemented",
                {"X-Code": "NotImplemented"},
            )
        if self.headers.get("Authorization") is not None:
            # S3 and the Xet bridge refuse a request with two credentials (signed URL + header)
            raise HttpError(
                400,
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
                {"X-Code": "InvalidArgument"},
            )
        parts = [unquote(p) for p in path.split("/")[1:]]
        if method not in ("GET", "HEAD") or len(parts) < 3 or parts[0] != "repos":
            raise HttpError(403, "Access Denied", {"X-Code": "AccessDenied"})
        repo_id, sha256 = "/".join(parts[1:-1]), parts[-1]
        try:
            expires = int((query.get("Expires") or ["0"])[0])
        except ValueError:
            expires = 0
        signature = (query.get("Signature") or [""])[0]
        if not hmac.compare_digest(signature, hub.sign(repo_id, sha256, expires)):
            raise HttpError(403, "Access Denied", {"X-Code": "AccessDenied"})
        if time.time() > expires:
            raise HttpError(403, "Request has expired", {"X-Code": "AccessDenied"})
        file_path = (query.get("file") or [""])[0]
        found: tuple[Repo, RepoFile] | None = None
        for commit in hub.commits.get(repo_id, {}).values():
            candidate = commit.files.get(file_path)
            if candidate is not None and candidate.sha256 == sha256:
                found = (commit, candidate)
                break
        if found is None:
            raise HttpError(404, "The specified key does not exist.", {"X-Code": "NoSuchKey"})
        commit, repo_file = found
        headers = file_headers(repo_file)
        # the CDN's ETag is its own (an S3-style md5), never the sha256 the Hub announced
        headers["ETag"] = f'"{hashlib.md5(sha256.encode()).hexdigest()}"'
        self._serve_file(method, commit, repo_file, headers)


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
    parser.add_argument(
        "--cdn-port", type=int, default=0, help="port of the CDN origin LFS files redirect to"
    )
    parser.add_argument(
        "--no-cdn", action="store_true", help="serve LFS files directly (no 302 to a CDN)"
    )
    args = parser.parse_args(argv)

    loaded: list[tuple[str, Repo]] = []
    for repo_id, directory in args.repo:
        try:
            loaded.append((repo_id, Repo.load(repo_id, directory)))
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"cannot load {repo_id} from {directory}: {exc}")
    repos = {repo_id: repo for repo_id, repo in loaded}  # the last one given is `main`

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
    for repo_id, repo in loaded:
        server.add_commit(repo_id, repo, main=repos[repo_id] is repo)
    port = server.server_address[1]
    if not args.no_cdn:
        server.cdn = CdnServer((args.host, args.cdn_port), server)
        threading.Thread(
            target=server.cdn.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        ).start()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.port_file is not None:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    served = ", ".join(f"{r.repo_id}@{r.sha[:12]}" for r in repos.values())
    cdn = f", CDN on port {server.cdn.server_address[1]}" if server.cdn else ""
    sys.stderr.write(
        f"hf-hub-standin listening on http://{args.host}:{port}{cdn} serving {served}\n"
    )
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        if server.cdn is not None:
            server.cdn.shutdown()
            server.cdn.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
