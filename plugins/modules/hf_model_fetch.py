#!/usr/bin/python
"""Ansible module: fetch a Hugging Face Hub repository into a directory, pinned, verified, resumable."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hf_model_fetch
short_description: Fetch a model repository from the Hugging Face Hub (or a peer) into a directory
version_added: 0.1.0
description:
  - Resolves I(revision) to a commit, lists the repository's files with their sizes and hashes
    (sha256 for LFS files, git blob id for the others) and fetches only the files that are missing
    or differ. A later run with the same commit and a complete directory changes nothing and costs
    one Hub call (none when I(revision) is a commit already recorded) plus one stat per file.
  - Downloads go through huggingface_hub's Python API (HfApi for metadata, hf_hub_url and its HTTP
    session for transfers) into partial files under C(.cache/sparkfleet/parts) in I(local_dir),
    hashed while they arrive. A run killed at any point (SIGKILL, lost SSH, lost network) leaves
    them there, and the next run continues them with HTTP Range requests.
  - Every fetched file is checked against the Hub's size and hash before it is moved into place;
    a file that fails is fetched once more, alone; a second failure fails the task.
  - Free space under I(local_dir) is checked against the bytes still to fetch plus
    I(disk_margin_gb) before anything is downloaded.
  - With I(source=peer) the files come from another host's rsync daemon (I(peer_url)) and are
    checked against I(manifest), the manifest of the host that fetched them from the Hub.
  - Progress (bytes done, total, rate) is written as JSON to I(progress_file) every second.
  - A manifest (repo, commit, files, sizes, hashes) is written to C(.sparkfleet-manifest.json).
  - Must run with a Python interpreter that has huggingface_hub installed (source=hub).
options:
  repo_id: {description: Repository id (owner/name)., type: str, required: true}
  revision: {description: "Branch, tag or commit.", type: str, default: main}
  local_dir: {description: Target directory., type: path, required: true}
  endpoint: {description: Hub endpoint or mirror., type: str, default: "https://huggingface.co"}
  token: {description: Access token (never logged); prefer I(token_file)., type: str, default: ""}
  token_file:
    description: File holding the access token (read when I(token) is empty; absent means none).
    type: path
  verify:
    description: Check made on files already present (size, or size and hash in parallel).
    type: str
    choices: [size, sha256]
    default: size
  source:
    description: Where missing files come from.
    type: str
    choices: [hub, peer]
    default: hub
  manifest: {description: "Manifest to fetch against (source=peer).", type: dict}
  peer_url: {description: "rsync URL of the seed's module, rsync://ADDR:PORT/NAME (source=peer).", type: str}
  transfer:
    description:
      - http, resumable Range downloads through huggingface_hub's HTTP session;
        xet, huggingface_hub's own hf_hub_download (Xet with HF_XET_HIGH_PERFORMANCE where the Hub
        stores the file in Xet, plain HTTP otherwise; partial files are not continued).
    type: str
    choices: [http, xet]
    default: http
  workers: {description: Files fetched at the same time (1-64)., type: int, default: 8}
  retries:
    description: Attempts per file in a row that move less than 1 MiB before giving up (1-100).
    type: int
    default: 10
  stall_timeout_s: {description: Seconds without data before a transfer is retried., type: int, default: 60}
  disk_margin_gb: {description: "Free space kept beyond the bytes to fetch, in GB.", type: float, default: 5}
  progress_file: {description: JSON progress file (empty for none)., type: path}
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Fetch the model
  sparkfleet.spark.hf_model_fetch:
    repo_id: saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10
    local_dir: /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4
    token_file: /etc/sparkfleet/hf_model.token
    progress_file: /run/sparkfleet/hf_model-progress.json
  vars:
    ansible_python_interpreter: /opt/sparkfleet/hf-venv/bin/python
"""

RETURN = r"""
commit: {description: Commit the revision resolved to., returned: success, type: str}
fetched: {description: Paths fetched by this run., returned: success, type: list, elements: str}
refetched: {description: Paths fetched a second time after a size or hash mismatch., returned: success, type: list, elements: str}
removed: {description: Files of the previous manifest that the new commit no longer has., returned: success, type: list, elements: str}
missing: {description: Paths missing or differing before the fetch., returned: always, type: list, elements: str}
up_to_date: {description: True when files and manifest already matched (nothing to do)., returned: success, type: bool}
files_total: {description: Number of files in the repository., returned: success, type: int}
bytes_total: {description: Total size of the repository's files., returned: success, type: int}
bytes_to_fetch: {description: Bytes still to fetch when the run started (partial files count as fetched)., returned: success, type: int}
bytes_fetched: {description: Bytes received by this run., returned: success, type: int}
seconds: {description: Duration of the fetch phase., returned: success, type: float}
manifest: {description: The manifest written to local_dir., returned: success, type: dict}
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

MANIFEST = ".sparkfleet-manifest.json"
STATE_DIR = os.path.join(".cache", "sparkfleet")
PARTS_DIR = os.path.join(STATE_DIR, "parts")
RSYNC_PARTIAL_DIR = os.path.join(STATE_DIR, "rsync-partial")
MANIFEST_FORMAT = 1
PROGRESS_SCHEMA = "sparkfleet/hf_model-progress/1"
READ_CHUNK = 8 * 1024 * 1024
GB = 1000 ** 3
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
MIN_PROGRESS = 1024 * 1024


class FetchError(Exception):
    """A failure with a message meant for the user (no traceback)."""


class Stopped(Exception):
    """Raised in a worker when another worker failed and the run is being abandoned."""


# -- hashes -----------------------------------------------------------------------------------


def new_hasher(entry):
    """Hash object matching the entry's recorded hash: sha256 (LFS) or git blob sha1."""
    if entry.get("sha256"):
        return hashlib.sha256()
    if entry.get("git_oid"):
        hasher = hashlib.sha1()  # noqa: S324 - git's object id, not a security hash
        hasher.update(b"blob %d\0" % entry["size"])
        return hasher
    return None


def digest_ok(hasher, entry):
    if hasher is None:
        return True
    return hasher.hexdigest() == (entry.get("sha256") or entry.get("git_oid"))


def hash_into(hasher, path, limit=None):
    """Feed the first `limit` bytes (all when None) of the file at `path` into `hasher`."""
    remaining = limit
    with open(path, "rb") as handle:
        while remaining is None or remaining > 0:
            want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
            block = handle.read(want)
            if not block:
                break
            hasher.update(block)
            if remaining is not None:
                remaining -= len(block)


def size_ok(path, entry):
    try:
        return os.path.getsize(path) == entry["size"]
    except OSError:
        return False


def content_ok(path, entry):
    hasher = new_hasher(entry)
    if hasher is None:
        return True
    try:
        hash_into(hasher, path)
    except OSError:
        return False
    return digest_ok(hasher, entry)


def hash_workers():
    return max(1, min(8, os.cpu_count() or 1))


def bad_content(local_dir, files, paths):
    """Paths among `paths` whose content does not match their hash, hashed in parallel."""
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=hash_workers()) as pool:
        oks = pool.map(lambda p: content_ok(os.path.join(local_dir, p), files[p]), paths)
        return sorted(p for p, ok in zip(paths, oks) if not ok)


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """Counters of the run, written as JSON to a file once a second by a background thread."""

    def __init__(self, path, repo_id, local_dir, source):
        self.path = path
        self.lock = threading.Lock()
        self.started = time.time()
        self.samples = deque(maxlen=64)
        self.state = {
            "schema": PROGRESS_SCHEMA,
            "hostname": os.uname()[1],
            "pid": os.getpid(),
            "repo_id": repo_id,
            "commit": None,
            "local_dir": local_dir,
            "source": source,
            "phase": "starting",
            "files_total": 0,
            "files_done": 0,
            "bytes_total": 0,
            "bytes_done": 0,
            "bytes_to_fetch": 0,
            "bytes_fetched": 0,
            "rate_bps": 0.0,
            "eta_s": None,
            "active": [],
            "started_at": self.started,
            "updated_at": self.started,
            "elapsed_s": 0.0,
            "message": None,
        }
        self._base_done = 0
        self.secrets = set()
        self._stop = threading.Event()
        self._thread = None

    def update(self, **fields):
        if fields.get("message"):
            fields["message"] = self.redact(fields["message"])
        with self.lock:
            self.state.update(fields)

    def redact(self, text):
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return text

    def set_totals(self, files_total, bytes_total, files_present, bytes_to_fetch):
        with self.lock:
            self.state.update(files_total=files_total, bytes_total=bytes_total,
                              files_done=files_present, bytes_to_fetch=bytes_to_fetch)
            self._base_done = bytes_total - bytes_to_fetch

    def add(self, nbytes):
        with self.lock:
            self.state["bytes_fetched"] += nbytes

    def set_fetched(self, nbytes):
        with self.lock:
            self.state["bytes_fetched"] = max(self.state["bytes_fetched"], nbytes)

    def file_started(self, path):
        with self.lock:
            self.state["active"] = sorted(set(self.state["active"]) | {path})

    def file_done(self, path, done=True):
        with self.lock:
            self.state["active"] = [p for p in self.state["active"] if p != path]
            if done:
                self.state["files_done"] += 1

    def snapshot(self):
        now = time.time()
        with self.lock:
            state = dict(self.state, active=list(self.state["active"]))
            fetched = state["bytes_fetched"]
            self.samples.append((now, fetched))
            window = [s for s in self.samples if now - s[0] <= 10.0] or [(now, fetched)]
            first_t, first_b = window[0]
            rate = (fetched - first_b) / (now - first_t) if now - first_t >= 0.5 else 0.0
            if rate == 0.0 and now - self.started > 0 and state["phase"] == "done":
                rate = fetched / max(1e-6, now - self.started)
        state["bytes_done"] = min(state["bytes_total"], self._base_done + fetched)
        state["rate_bps"] = round(rate, 1)
        left = state["bytes_total"] - state["bytes_done"]
        state["eta_s"] = round(left / rate, 1) if rate > 0 and left > 0 else (0.0 if left <= 0 else None)
        state["updated_at"] = now
        state["elapsed_s"] = round(now - self.started, 3)
        return state

    def write(self):
        if not self.path:
            return
        state = self.snapshot()
        try:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, mode=0o755, exist_ok=True)
            tmp = "%s.%d.tmp" % (self.path, os.getpid())
            with open(tmp, "w") as handle:
                json.dump(state, handle, sort_keys=True)
                handle.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is informative; never fail a fetch because of it

    def start(self):
        if not self.path:
            return
        self.write()

        def loop():
            while not self._stop.wait(1.0):
                self.write()

        self._thread = threading.Thread(target=loop, name="progress", daemon=True)
        self._thread.start()

    def stop(self, phase, message=None):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.update(phase=phase, active=[], message=message)
        self.write()


# -- local state --------------------------------------------------------------------------------


def read_manifest(local_dir):
    try:
        with open(os.path.join(local_dir, MANIFEST)) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(local_dir, manifest):
    path = os.path.join(local_dir, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    fsync_dir(local_dir)


def same_files(a, b):
    """True when two {path: entry} maps describe the same contents."""
    if not isinstance(a, dict) or not isinstance(b, dict) or set(a) != set(b):
        return False
    for path, entry in a.items():
        other = b[path]
        if not isinstance(other, dict):
            return False
        for key in ("size", "sha256", "git_oid"):
            if entry.get(key) != other.get(key):
                return False
    return True


def free_bytes(path):
    """Free bytes for unprivileged use on the filesystem of `path` (or its nearest parent)."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    stat = os.statvfs(probe)
    return stat.f_bavail * stat.f_frsize, probe


def part_path(local_dir, path):
    return os.path.join(local_dir, PARTS_DIR, path + ".part")


def part_size(local_dir, path, entry):
    """Bytes already on disk in a partial file that belongs to this entry (0 otherwise)."""
    part = part_path(local_dir, path)
    try:
        with open(part + ".json") as handle:
            meta = json.load(handle)
        size = os.path.getsize(part)
    except (OSError, ValueError):
        return 0
    if meta != part_meta(entry) or size > entry["size"]:
        return 0
    return size


def part_meta(entry):
    return {"size": entry["size"], "sha256": entry.get("sha256"), "git_oid": entry.get("git_oid")}


def remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def prune_empty_dirs(top):
    if not os.path.isdir(top):
        return
    for root, dirs, files in os.walk(top, topdown=False):
        if not dirs and not files and root != top:
            try:
                os.rmdir(root)
            except OSError:
                pass


def install_file(src, local_dir, path):
    """fsync `src` and move it to `path` under local_dir (0644)."""
    target = os.path.join(local_dir, path)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    with open(src, "rb+") as handle:
        os.fsync(handle.fileno())
    os.chmod(src, 0o644)
    os.replace(src, target)
    fsync_dir(os.path.dirname(target))


class DirLock:
    """An exclusive flock on local_dir/.cache/sparkfleet/lock: one fetch per directory at a time."""

    def __init__(self, local_dir):
        self.path = os.path.join(local_dir, STATE_DIR, "lock")
        self.handle = None

    def acquire(self, progress):
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        self.handle = open(self.path, "a+")
        waited = False
        while True:
            try:
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not waited:
                    waited = True
                    progress.update(message="waiting for another fetch into this directory")
                time.sleep(1.0)
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write("%d\n" % os.getpid())
        self.handle.flush()
        return waited


# -- errors -------------------------------------------------------------------------------------


def describe_error(exc, params, has_token, local_dir):
    """A message for an exception raised by the fetch, naming the likely cause."""
    try:
        import httpx2
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        return "%s: %s" % (type(exc).__name__, exc)

    repo, endpoint = params["repo_id"], params["endpoint"]
    status = http_status(exc)
    server_msg = getattr(exc, "server_message", None) or ""
    if isinstance(exc, GatedRepoError):
        if has_token:
            return ("hf_model_token has no access to the gated repo %s on %s (HTTP %s): accept the "
                    "repo's terms on the Hub with the token's account, or use a token with read "
                    "access to it" % (repo, endpoint, status))
        return ("repo %s on %s is gated or private (HTTP %s): set hf_model_token to a token with "
                "read access" % (repo, endpoint, status))
    if isinstance(exc, RevisionNotFoundError):
        return "hf_model_revision=%s not found in %s on %s" % (params["revision"], repo, endpoint)
    if isinstance(exc, RemoteEntryNotFoundError):
        return "a file listed by the Hub for %s is not downloadable from %s: %s" % (repo, endpoint, exc)
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        if not has_token:
            return ("hf_model_repo_id=%s not found on %s (HTTP %s; without a token the Hub says "
                    "this of a repo that does not exist and of a private one alike): check the "
                    "repo id, or set hf_model_token to a token with read access"
                    % (repo, endpoint, status))
        return ("hf_model_repo_id=%s not found on %s (HTTP %s): wrong repo id, or a private repo "
                "the token cannot see" % (repo, endpoint, status))
    if status == 401:
        if has_token:
            return ("the Hub at %s rejected hf_model_token (HTTP 401%s): the token is wrong, "
                    "expired or revoked" % (endpoint, ", " + server_msg if server_msg else ""))
        return "the Hub at %s requires a token for %s (HTTP 401): set hf_model_token" % (endpoint, repo)
    if status == 403:
        return ("the Hub at %s refused access to %s (HTTP 403): hf_model_token lacks read access "
                "(fine-grained token without this repo, or the repo's terms not accepted)"
                % (endpoint, repo))
    if isinstance(exc, HfHubHTTPError):
        return "the Hub at %s answered HTTP %s for %s: %s" % (endpoint, status, repo, server_msg or exc)
    if isinstance(exc, httpx2.TransportError):
        return "could not reach the Hub at %s: %s: %s" % (endpoint, type(exc).__name__, exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk under %s filled up while fetching: %s" % (local_dir, exc)
    return "%s: %s" % (type(exc).__name__, exc)


def http_status(exc):
    return getattr(getattr(exc, "response", None), "status_code", None)


# -- Hub listing --------------------------------------------------------------------------------


def hub_files(api, repo_id, commit):
    """{path: entry} for every file of the repo at `commit`."""
    from huggingface_hub.hf_api import RepoFile

    files = {}
    for item in api.list_repo_tree(repo_id, revision=commit, recursive=True):
        if isinstance(item, RepoFile):
            files[item.path] = {
                "size": int(item.size),
                "sha256": item.lfs.sha256 if item.lfs else None,
                "git_oid": None if item.lfs else item.blob_id,
            }
    return files


# -- HTTP transfer ------------------------------------------------------------------------------


class HttpFetcher:
    """Resumable, hashed downloads through huggingface_hub's HTTP session."""

    def __init__(self, params, commit, token, local_dir, progress, stop):
        import httpx2
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        self.httpx = httpx2
        self.hf_hub_url = hf_hub_url
        self.build_hf_headers = build_hf_headers
        self.get_session = get_session
        self.raise_for_status = hf_raise_for_status
        self.params = params
        self.commit = commit
        self.token = token
        self.local_dir = local_dir
        self.progress = progress
        self.stop = stop
        self.timeout = httpx2.Timeout(connect=30.0, read=float(params["stall_timeout_s"]),
                                      write=60.0, pool=60.0)

    def fetch(self, path, entry):
        """Fetch `path` into place, verified; True when a second full fetch was needed."""
        part = part_path(self.local_dir, path)
        os.makedirs(os.path.dirname(part), mode=0o755, exist_ok=True)
        if part_size(self.local_dir, path, entry) == 0:
            remove_quietly(part)
        with open(part + ".json", "w") as handle:
            json.dump(part_meta(entry), handle)
        for attempt in (1, 2):
            hasher = self._download(path, entry, part)
            if os.path.getsize(part) == entry["size"] and digest_ok(hasher, entry):
                install_file(part, self.local_dir, path)
                remove_quietly(part + ".json")
                return attempt > 1
            remove_quietly(part)
            self.progress.update(message="%s: size or hash mismatch, fetching it again" % path)
        raise FetchError("%s still differs from the Hub's size/hash after a second download"
                         % path)

    def _download(self, path, entry, part):
        """Bring `part` to the entry's size, continuing what is there; returns its hasher."""
        size = entry["size"]
        state = Transfer(entry, part)
        url = self.hf_hub_url(self.params["repo_id"], path, revision=self.commit,
                              endpoint=self.params["endpoint"])
        failures = 0
        last_error = None
        with open(part, "ab") as out:
            while state.have < size:
                if self.stop.is_set():
                    raise Stopped()
                before = state.have
                try:
                    self._stream(url, out, state)
                except Stopped:
                    raise
                except (self.httpx.NetworkError, self.httpx.TimeoutException,
                        self.httpx.RemoteProtocolError) as exc:
                    last_error = "%s: %s" % (type(exc).__name__, exc)
                except Exception as exc:  # noqa: BLE001 - HTTP errors from hf_raise_for_status
                    if http_status(exc) not in RETRY_STATUS:
                        raise
                    last_error = "HTTP %s" % http_status(exc)
                if state.have >= size:
                    break
                # an attempt that moved less than MIN_PROGRESS counts as one without progress
                failures = 0 if state.have - before >= MIN_PROGRESS else failures + 1
                if failures >= self.params["retries"]:
                    raise FetchError("download of %s from %s stopped at %d of %d bytes after %d "
                                     "attempts without progress (last error: %s); run again to "
                                     "continue from there" % (path, self.params["endpoint"],
                                                              state.have, size, failures,
                                                              last_error))
                self.progress.update(message="%s: %s, resuming at byte %d"
                                     % (path, last_error, state.have))
                self.stop.wait(min(30.0, 2.0 ** (failures - 1)) if failures else 0.2)
        return state.hasher

    def _stream(self, url, out, state):
        """One GET from state.have on, appended to `out`; state follows every byte written."""
        headers = self.build_hf_headers(token=self.token or False)
        headers["Accept-Encoding"] = "identity"
        if state.have:
            headers["Range"] = "bytes=%d-" % state.have
        session = self.get_session()
        with session.stream("GET", url, headers=headers, timeout=self.timeout,
                            follow_redirects=True) as response:
            if response.status_code == 416:  # partial file longer than the file: start over
                state.restart(out)
                return
            if response.status_code >= 400:
                response.read()
                self.raise_for_status(response)
            if state.have:
                match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                if response.status_code != 206 or not match or int(match.group(1)) != state.have:
                    state.restart(out)  # the server sends the whole file: take it from byte 0
                    if response.status_code != 200:
                        return
            size = state.size
            for chunk in response.iter_bytes():
                if self.stop.is_set():
                    raise Stopped()
                if not chunk:
                    continue
                if state.have + len(chunk) > size:
                    chunk = chunk[: size - state.have]
                out.write(chunk)
                state.add(chunk)
                self.progress.add(len(chunk))
                if state.have >= size:
                    break
            out.flush()


class Transfer:
    """Bytes of a partial file and their running hash."""

    def __init__(self, entry, part):
        self.entry = entry
        self.size = entry["size"]
        self.hasher = new_hasher(entry)
        self.have = os.path.getsize(part) if os.path.exists(part) else 0
        if self.have and self.hasher is not None:
            hash_into(self.hasher, part, self.have)

    def add(self, chunk):
        if self.hasher is not None:
            self.hasher.update(chunk)
        self.have += len(chunk)

    def restart(self, out):
        out.truncate(0)
        out.seek(0)
        self.have = 0
        self.hasher = new_hasher(self.entry)


class XetFetcher:
    """huggingface_hub's hf_hub_download (Xet where the Hub offers it), then a hash check."""

    def __init__(self, params, commit, token, local_dir, progress, stop):
        from huggingface_hub import hf_hub_download

        self.download = hf_hub_download
        self.params = params
        self.commit = commit
        self.token = token
        self.local_dir = local_dir
        self.progress = progress
        self.stop = stop

    def fetch(self, path, entry):
        for attempt in (1, 2):
            if self.stop.is_set():
                raise Stopped()
            target = self.download(self.params["repo_id"], path, revision=self.commit,
                                   local_dir=self.local_dir, token=self.token or False,
                                   endpoint=self.params["endpoint"], force_download=True)
            self.progress.add(entry["size"])
            if size_ok(target, entry) and content_ok(target, entry):
                return attempt > 1
            self.progress.update(message="%s: size or hash mismatch, fetching it again" % path)
        raise FetchError("%s still differs from the Hub's size/hash after a second download" % path)


def fetch_all(fetcher, files, paths, workers, progress):
    """Fetch `paths` with `workers` threads; returns the paths fetched twice. Stops on an error."""
    stop = fetcher.stop
    refetched = []
    errors = []
    lock = threading.Lock()

    def one(path):
        if stop.is_set():
            return
        progress.file_started(path)
        try:
            again = fetcher.fetch(path, files[path])
        except Stopped:
            progress.file_done(path, done=False)
            return
        except BaseException as exc:  # noqa: BLE001 - reported after the pool stops
            progress.file_done(path, done=False)
            with lock:
                errors.append(exc)
            stop.set()
            return
        progress.file_done(path)
        if again:
            with lock:
                refetched.append(path)

    order = sorted(paths, key=lambda p: -files[p]["size"])
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(order) or 1))) as pool:
        list(pool.map(one, order))
    if errors:
        raise errors[0]
    return sorted(refetched)


# -- peer transfer (rsync) ----------------------------------------------------------------------

RSYNC_TRANSIENT = (10, 12, 20, 23, 30, 35)
RSYNC_PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%")


def rsync_once(params, local_dir, paths, progress, base, whole_file):
    """One rsync run pulling `paths`; returns (rc, stderr tail, bytes reported)."""
    rsync = shutil.which("rsync")
    if not rsync:
        raise FetchError("rsync is not installed on this host (needed for hf_model_source=peer)")
    cmd = [rsync, "--times", "--ignore-times", "--no-motd", "--files-from=-", "--from0",
           "--partial-dir=" + RSYNC_PARTIAL_DIR, "--timeout=%d" % params["stall_timeout_s"],
           "--contimeout=30", "--info=progress2", "--no-inc-recursive", "--outbuf=L"]
    if whole_file:
        cmd.append("--whole-file")
    cmd += [params["peer_url"].rstrip("/") + "/", local_dir.rstrip("/") + "/"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    errors = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    proc.stdin.write(b"\0".join(p.encode() for p in paths) + b"\0")
    proc.stdin.close()
    seen = 0
    buffer = b""
    while True:
        chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
        if not chunk:
            break
        buffer += chunk
        pieces = re.split(rb"[\r\n]", buffer)
        buffer = pieces.pop()
        for piece in pieces:
            match = RSYNC_PROGRESS.match(piece)
            if match:
                seen = int(match.group(1).replace(b",", b""))
                progress.set_fetched(base + seen)
    rc = proc.wait()
    reader.join(timeout=5)
    tail = (errors[0] if errors else b"").decode("utf-8", "replace").strip()[-600:]
    return rc, tail, seen


def peer_fetch(params, local_dir, files, paths, progress):
    """Pull `paths` from the seed with rsync, verify them; returns the paths pulled twice."""
    fetched_bytes = 0
    pending = list(paths)
    refetched = []
    for attempt in (1, 2):
        failures = 0
        while True:
            rc, tail, seen = rsync_once(params, local_dir, pending, progress, fetched_bytes,
                                        whole_file=attempt > 1)
            fetched_bytes += seen
            if rc == 0:
                break
            failures += 1
            if rc not in RSYNC_TRANSIENT or failures >= min(params["retries"], 5):
                raise FetchError("copy from the seed %s failed (rsync exit %d): %s"
                                 % (params["peer_url"], rc, tail))
            progress.update(message="rsync exit %d, retrying: %s" % (rc, tail[-200:]))
            time.sleep(min(30.0, 2.0 ** failures))
        progress.update(phase="verifying")
        bad = [p for p in pending if not size_ok(os.path.join(local_dir, p), files[p])]
        bad += bad_content(local_dir, files, [p for p in pending if p not in bad])
        if not bad:
            return sorted(refetched)
        if attempt == 2:
            raise FetchError("files copied from the seed still differ from its manifest: %s"
                             % ", ".join(sorted(bad)))
        refetched = sorted(bad)
        pending = sorted(bad)
        for path in pending:
            remove_quietly(os.path.join(local_dir, path))
        progress.update(phase="fetching", message="hash mismatch, copying again: %s" % ", ".join(pending))
    return sorted(refetched)


# -- main ---------------------------------------------------------------------------------------


def read_token(params):
    if params["token"]:
        return params["token"]
    path = params.get("token_file")
    if not path:
        return ""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise FetchError("cannot read the token file %s: %s" % (path, exc.strerror))


def check_params(module, params):
    limits = {"workers": (1, 64), "retries": (1, 100), "stall_timeout_s": (5, 3600)}
    for name, (low, high) in limits.items():
        if not low <= params[name] <= high:
            module.fail_json(msg="%s=%s is out of range: %d-%d" % (name, params[name], low, high))
    if params["disk_margin_gb"] < 0:
        module.fail_json(msg="disk_margin_gb=%s must be >= 0" % params["disk_margin_gb"])
    if params["source"] == "peer":
        manifest = params.get("manifest") or {}
        if not isinstance(manifest.get("files"), dict) or not manifest.get("commit"):
            module.fail_json(msg="source=peer needs the seed's manifest (with commit and files)")
        if manifest.get("repo_id") != params["repo_id"]:
            module.fail_json(msg="the seed's manifest is for %s, not %s"
                             % (manifest.get("repo_id"), params["repo_id"]))


def main():
    module = AnsibleModule(
        argument_spec={
            "repo_id": {"type": "str", "required": True},
            "revision": {"type": "str", "default": "main"},
            "local_dir": {"type": "path", "required": True},
            "endpoint": {"type": "str", "default": "https://huggingface.co"},
            "token": {"type": "str", "default": "", "no_log": True},
            "token_file": {"type": "path"},
            "verify": {"type": "str", "default": "size", "choices": ["size", "sha256"]},
            "source": {"type": "str", "default": "hub", "choices": ["hub", "peer"]},
            "manifest": {"type": "dict"},
            "peer_url": {"type": "str"},
            "transfer": {"type": "str", "default": "http", "choices": ["http", "xet"]},
            "workers": {"type": "int", "default": 8},
            "retries": {"type": "int", "default": 10},
            "stall_timeout_s": {"type": "int", "default": 60},
            "disk_margin_gb": {"type": "float", "default": 5.0},
            "progress_file": {"type": "path"},
        },
        supports_check_mode=True,
    )
    params = module.params
    params["endpoint"] = params["endpoint"].rstrip("/")
    check_params(module, params)
    try:
        token = read_token(params)
    except FetchError as exc:
        module.fail_json(msg=str(exc))
    if token:
        module.no_log_values.add(token)
    local_dir = os.path.abspath(params["local_dir"])
    progress = Progress(None if module.check_mode else params["progress_file"], params["repo_id"],
                        local_dir, params["source"])
    if token:
        progress.secrets.add(token)
    result = {"changed": False, "missing": [], "fetched": [], "refetched": [], "removed": []}
    try:
        run(module, params, token, local_dir, progress, result)
    except FetchError as exc:
        progress.stop("failed", str(exc))
        module.fail_json(msg=str(exc), **result)
    except Exception as exc:  # noqa: BLE001 - Hub and network errors become a clear message
        message = describe_error(exc, params, bool(token), local_dir)
        progress.stop("failed", message)
        module.fail_json(msg=message, hub_status=http_status(exc), **result)
    module.exit_json(**result)


def resolve(params, token, current):
    """(commit, files) for the hub source, asking the Hub only for what the manifest lacks."""
    revision = params["revision"]
    same_repo = current.get("repo_id") == params["repo_id"] and isinstance(current.get("files"), dict)
    if same_repo and COMMIT_RE.match(revision) and current.get("commit") == revision:
        return revision, current["files"]  # a commit's tree never changes: no Hub call at all
    from huggingface_hub import HfApi

    api = HfApi(endpoint=params["endpoint"], token=token or False)
    if COMMIT_RE.match(revision):
        commit = revision
    else:
        commit = api.model_info(params["repo_id"], revision=revision, expand=["sha"]).sha
    if same_repo and current.get("commit") == commit:
        return commit, current["files"]
    return commit, hub_files(api, params["repo_id"], commit)


def run(module, params, token, local_dir, progress, result):
    os.environ.update({
        "HF_ENDPOINT": params["endpoint"],
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_XET_HIGH_PERFORMANCE": "1",
    })
    os.environ.pop("HF_TOKEN", None)
    os.environ.pop("HF_HUB_ENABLE_HF_TRANSFER", None)
    lock = DirLock(local_dir)
    if not module.check_mode:
        # A fetch left running by an earlier play (e.g. after a lost connection) keeps the lock
        # and its progress file; this one waits for it, then usually finds nothing to do.
        lock.acquire(progress)
    progress.start()
    current = read_manifest(local_dir)

    progress.update(phase="listing")
    if params["source"] == "hub":
        try:
            import huggingface_hub  # noqa: F401
        except ImportError as exc:
            raise FetchError("huggingface_hub is not importable by %s: %s" % (sys.executable, exc))
        commit, files = resolve(params, token, current)
    else:
        commit, files = params["manifest"]["commit"], params["manifest"]["files"]
    manifest = {
        "format": MANIFEST_FORMAT,
        "repo_id": params["repo_id"],
        "commit": commit,
        "files": {p: {"size": int(e["size"]), "sha256": e.get("sha256"), "git_oid": e.get("git_oid")}
                  for p, e in sorted(files.items())},
    }
    files = manifest["files"]
    bytes_total = sum(e["size"] for e in files.values())
    result.update(commit=commit, files_total=len(files), bytes_total=bytes_total, manifest=manifest)
    progress.update(commit=commit)

    progress.update(phase="checking")
    present = [p for p in sorted(files) if size_ok(os.path.join(local_dir, p), files[p])]
    if params["verify"] == "sha256":
        present = sorted(set(present) - set(bad_content(local_dir, files, present)))
    missing = sorted(set(files) - set(present))
    previous = current.get("files") if current.get("repo_id") == params["repo_id"] else None
    stale = sorted(p for p in (previous or {}) if p not in files
                   and os.path.lexists(os.path.join(local_dir, p)))
    resumable = {p: part_size(local_dir, p, files[p]) for p in missing}
    to_fetch = sum(files[p]["size"] - resumable[p] for p in missing)
    result.update(missing=missing, bytes_to_fetch=to_fetch, bytes_fetched=0, seconds=0.0)
    progress.set_totals(len(files), bytes_total, len(present), to_fetch)

    up_to_date = (current.get("commit") == commit and current.get("repo_id") == params["repo_id"]
                  and same_files(current.get("files"), files))
    result["up_to_date"] = not missing and not stale and up_to_date
    if result["up_to_date"]:
        progress.stop("done")
        return
    result["changed"] = True
    if module.check_mode:
        result.update(fetched=missing, removed=stale)
        return

    free, probe = free_bytes(local_dir)
    margin = int(params["disk_margin_gb"] * GB)
    if to_fetch and free < to_fetch + margin:
        raise FetchError(
            "not enough free space under %s (filesystem of %s): %.2f GB needed (%.2f GB still to "
            "fetch + %.2f GB margin), %.2f GB free"
            % (local_dir, probe, (to_fetch + margin) / GB, to_fetch / GB, margin / GB, free / GB))

    started = time.monotonic()
    progress.update(phase="fetching")
    os.makedirs(local_dir, mode=0o755, exist_ok=True)
    if missing:
        if params["source"] == "peer":
            if not params.get("peer_url"):
                raise FetchError("source=peer has files to fetch but no peer_url")
            refetched = peer_fetch(params, local_dir, files, missing, progress)
        else:
            stop = threading.Event()
            fetcher_class = XetFetcher if params["transfer"] == "xet" else HttpFetcher
            fetcher = fetcher_class(params, commit, token, local_dir, progress, stop)
            refetched = fetch_all(fetcher, files, missing, params["workers"], progress)
        result["refetched"] = refetched
    for path in stale:
        remove_quietly(os.path.join(local_dir, path))
    progress.update(phase="verifying")
    write_manifest(local_dir, manifest)
    prune_empty_dirs(os.path.join(local_dir, PARTS_DIR))
    seconds = time.monotonic() - started
    fetched_bytes = progress.snapshot()["bytes_fetched"]
    result.update(fetched=missing, removed=stale, bytes_fetched=fetched_bytes,
                  seconds=round(seconds, 3))
    progress.stop("done")


if __name__ == "__main__":
    main()
