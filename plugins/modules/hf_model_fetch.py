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
  - A file counts as present only when its content is known to match, never by its size alone
    with a hash that changed; the previous manifest (or the journal of files installed since)
    records the same hash for the same path, or the file is hashed now. After a commit change
    only the files whose hash changed are hashed (and fetched when they differ); a directory
    without our manifest (e.g. filled by C(hf download)) is hashed before anything in it is
    adopted. C(hf download)'s partial files (C(.cache/huggingface/download/*.incomplete)) of
    missing files are continued (their prefix hashed, the whole file checked), others removed.
  - Every Hub call (revision, listing, each download) is retried after a 408, 429, 5xx or a
    network error, waiting what the Hub asks (C(Retry-After), C(RateLimit)) or 1, 2, 4 ... 30 s,
    until the time since the first failure in a row would pass I(retry_budget_min); the waits
    are returned in C(hub_waits). A 416, or a 403 from the server the Hub redirected to, is one
    failed attempt (the next one asks the Hub for a fresh URL).
  - Downloads go through huggingface_hub's HTTP session (its headers, proxies, CA) into partial
    files under C(.cache/sparkfleet/parts) in I(local_dir), hashed while they arrive. A run
    killed at any point (SIGKILL, lost SSH, lost network) leaves them there, and the next run
    continues them with HTTP Range requests.
  - Every fetched file is checked against the Hub's size and hash before it is moved into place;
    a file that fails is fetched once more, alone; a second failure fails the task.
  - Free space under I(local_dir) is checked against the bytes still to fetch plus
    I(disk_margin_gb) before anything is downloaded.
  - With I(source=peer) the files come from the other hosts of I(fleet) (the seed, which fetches
    from the Hub, first), each serving its model directory through a read-only rsync daemon on
    I(peer_port). A file is copied as soon as a host holds it, from this host's parent in a tree
    of I(fanout) children per host, else the nearest ancestor up to the seed, else any other
    host. Each copy is checked against I(manifest) (the Hub's listing, taken by the seed) before
    it is moved into place, where this host's own daemon serves it onward; a copy that fails the
    check is refused from that host and taken from another; a host that stops answering is
    passed over. The peer fails when the seed's fetch failed, or when the seed is done and no
    host offers a good copy of a file.
  - With I(upstream=pair) the first host of I(fleet) is this host's pair partner, reached over
    the pair's direct link, the only host it copies from; it stands for the seed above (its
    failure, its progress, its copies) and the messages name it as the pair partner.
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
  fleet:
    description:
      - Hosts that serve the model to each other (source=peer), the seed first, each a dict with
        C(name) and C(address) (IPv4 or IPv6); must include I(host_name).
    type: list
    elements: dict
  host_name: {description: "This host's name in I(fleet) (source=peer).", type: str}
  upstream:
    description:
      - What the first host of I(fleet) is to this host (source=peer), as the messages name it;
        seed, the host that fetches from the Hub; pair, this host's pair partner, whose copy it
        copies over their link.
    type: str
    choices: [seed, pair]
    default: seed
  peer_port: {description: "TCP port of every host's temporary rsync daemon (1-65535).", type: int, default: 8730}
  fanout: {description: "Children per host in the tree the copies follow (1-16).", type: int, default: 2}
  streams: {description: "Files copied from peers at the same time (1-16).", type: int, default: 2}
  run_id:
    description:
      - Identifier of this fleet-wide fetch, written into the progress file; a peer reads the
        seed's progress (its daemon's C(hf_model_status) module) only when it carries the same.
    type: str
    default: ""
  transfer:
    description:
      - http, resumable Range downloads through huggingface_hub's HTTP session;
        xet, huggingface_hub's own hf_hub_download (Xet where the Hub stores the file in Xet, plain
        HTTP otherwise; partial files are not continued; a transfer that moves no byte for
        I(stall_timeout_s) fails the run).
    type: str
    choices: [http, xet]
    default: http
  workers: {description: Files fetched at the same time (1-64)., type: int, default: 8}
  retries:
    description: Attempts per file in a row that move less than 1 MiB before giving up (1-100).
    type: int
    default: 10
  stall_timeout_s:
    description:
      - Seconds without data before a transfer is retried (http) or the run fails (xet), 5-3600.
      - With I(source=peer), also how long no host of the fleet may answer, and how long the seed's
        progress file may stay unchanged while its fetch runs, before this run fails.
    type: int
    default: 60
  retry_budget_min:
    description: Minutes a Hub call or a file's transfer keeps being retried after its first failure in a row (1-1440).
    type: int
    default: 10
  proxy:
    description: "HTTP(S) proxy for the Hub, http://HOST:PORT (no credentials); empty: the environment's."
    type: str
    default: ""
  no_proxy: {description: "Hosts reached without the proxy, comma-separated (NO_PROXY).", type: str, default: ""}
  ca_bundle:
    description: PEM file of the CAs to trust for the Hub (set as SSL_CERT_FILE); empty for the system store.
    type: path
  xet_high_performance:
    description: Set HF_XET_HIGH_PERFORMANCE=1 for transfer=xet (the Hub's docs ask for 64 GB of RAM or more for it).
    type: bool
    default: false
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
hashed: {description: Files of the right size hashed to know whether they match (not trusted by manifest)., returned: success, type: list, elements: str}
adopted_partials: {description: "Files whose hf download partial file was taken over to be continued.", returned: success, type: list, elements: str}
removed_partials: {description: "Number of hf download partial files removed (not continued).", returned: success, type: int}
peer_bytes: {description: "Bytes of the files copied from each host, good or refused (source=peer), by name.", returned: success, type: dict}
peer_rejected:
  description: Copies refused because they did not match the manifest, each with path, source and reason (source=peer).
  returned: success
  type: list
  elements: dict
peer_failures:
  description: Copies that did not finish (the host stopped answering, was busy, lacked the file), each with path, source, outcome and detail (source=peer).
  returned: success
  type: list
  elements: dict
hub_waits:
  description: Waits chosen after retryable answers, each with what (call or file), status, asked_s (what the Hub asked, or null) and slept_s.
  returned: always
  type: list
  elements: dict
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
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from ansible.module_utils.basic import AnsibleModule

MANIFEST = ".sparkfleet-manifest.json"
STATE_DIR = os.path.join(".cache", "sparkfleet")
PARTS_DIR = os.path.join(STATE_DIR, "parts")
MANIFEST_FORMAT = 1
PROGRESS_SCHEMA = "sparkfleet/hf_model-progress/1"
READ_CHUNK = 8 * 1024 * 1024
GB = 1000 ** 3
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
MIN_PROGRESS = 1024 * 1024
JOURNAL = os.path.join(STATE_DIR, "installed.jsonl")
HF_DOWNLOAD_DIR = os.path.join(".cache", "huggingface", "download")


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
    """A regular file (not a symlink: the container's read-only mount would not carry its
    target) of the entry's size."""
    try:
        stat = os.lstat(path)
    except OSError:
        return False
    return not os.path.islink(path) and stat.st_size == entry["size"]


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
            "run_id": None,
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
        if state["phase"] == "done":  # every file in place, checked (some resumed from partials)
            state["bytes_done"] = state["bytes_total"]
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


def same_entry(a, b):
    return isinstance(a, dict) and isinstance(b, dict) and all(
        a.get(key) == b.get(key) for key in ("size", "sha256", "git_oid"))


class Journal:
    """Files this module installed since the manifest was last written (one JSON line each),
    so that a run cut short does not make the next one hash what it already verified."""

    def __init__(self, local_dir, repo_id):
        self.path = os.path.join(local_dir, JOURNAL)
        self.repo_id = repo_id
        self.lock = threading.Lock()

    def read(self):
        entries = {}
        try:
            with open(self.path) as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a line torn by a crash
                    if isinstance(record, dict) and record.get("repo_id") == self.repo_id:
                        entries[record["path"]] = {k: record.get(k)
                                                   for k in ("size", "sha256", "git_oid")}
        except OSError:
            pass
        return entries

    def add(self, path, entry):
        record = dict(part_meta(entry), repo_id=self.repo_id, path=path)
        with self.lock:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def clear(self):
        remove_quietly(self.path)


def short_hash(name):
    """huggingface_hub's name for a file's download state (sha1 of the name, urlsafe base64)."""
    import base64

    return base64.urlsafe_b64encode(hashlib.sha1(name.encode()).digest()).decode()  # noqa: S324


def hf_partials(local_dir, files, missing, adopt):
    """Partial files `hf download` left in local_dir/.cache/huggingface/download/ (named
    <short hash of the file name>.<etag>.<id>.incomplete, the etag of an LFS file being its
    sha256). With `adopt`, the longest one of each missing file becomes that file's part (its
    prefix is hashed when it is continued, and the whole file checked before it is installed);
    every other one is removed. Returns (adopted paths, number removed)."""
    top = os.path.join(local_dir, HF_DOWNLOAD_DIR)
    if not os.path.isdir(top):
        return [], 0
    wanted = {}
    for path in missing:
        directory, name = os.path.split(path)
        key = (directory, short_hash(name + ".metadata"))
        wanted.setdefault(key, []).append(path)
    best = {}
    others = []
    for root, _dirs, names in os.walk(top):
        rel = os.path.relpath(root, top)
        rel = "" if rel == "." else rel
        for name in names:
            if not name.endswith(".incomplete"):
                continue
            full = os.path.join(root, name)
            pieces = name.split(".")
            match = None
            if adopt and len(pieces) >= 3:
                for path in wanted.get((rel, pieces[0]), []):
                    entry = files[path]
                    if pieces[1] in (entry.get("sha256"), entry.get("git_oid")):
                        match = path
            try:
                size = os.lstat(full).st_size
            except OSError:
                continue
            if match is None or size > files[match]["size"] or part_size(local_dir, match,
                                                                         files[match]):
                others.append(full)
                continue
            if match in best:
                others.append(best[match][1] if best[match][0] < size else full)
                if best[match][0] >= size:
                    continue
            best[match] = (size, full)
    adopted = []
    for path, (size, full) in sorted(best.items()):
        part = part_path(local_dir, path)
        os.makedirs(os.path.dirname(part), mode=0o755, exist_ok=True)
        with open(part + ".json", "w") as handle:
            json.dump(part_meta(files[path]), handle)
        os.replace(full, part)
        adopted.append(path)
    for full in others:
        remove_quietly(full)
    return adopted, len(others)


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

    exc = hub_error(exc)
    repo, endpoint = params["repo_id"], params["endpoint"]
    status = http_status(exc)
    if cdn_refusal(exc, params):
        return ("the download server %s, to which the Hub at %s redirected, refused a file of %s "
                "(HTTP 403) again and again: its signed URL was refused or expired (not a token "
                "problem: the token is never sent there); run again" % (
                    response_host(exc), endpoint, repo))
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


def response_host(exc):
    """host[:port] of the server that gave the error answer (None when unknown)."""
    try:
        url = exc.response.url
    except AttributeError:
        return None
    return "%s:%s" % (url.host, url.port) if url.port else url.host


def cdn_refusal(exc, params):
    """A 403 from the server the Hub redirected to (a signed URL refused or expired), not from
    the Hub: the next attempt asks the Hub for a fresh URL."""
    from urllib.parse import urlsplit

    host = response_host(exc)
    return http_status(exc) == 403 and host is not None and host != urlsplit(
        params["endpoint"]).netloc


def hub_error(exc):
    """The Hub's HTTP error behind `exc` (huggingface_hub wraps some, e.g. "Force download
    failed" or LocalEntryNotFoundError, around the answer of its HEAD), or `exc` itself."""
    seen = set()
    current = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if http_status(current) is not None:
            return current
        current = current.__cause__ or current.__context__
    return exc


# -- Hub calls: retries within a budget, waiting what the Hub asks ------------------------------


def asked_wait(status, headers):
    """Seconds the Hub asked to wait: RateLimit's t when r=0 on a 429, else Retry-After."""
    if headers is None:
        return None
    if status == 429:
        from huggingface_hub.utils import parse_ratelimit_headers

        info = parse_ratelimit_headers(headers)
        if info is not None and info.remaining == 0:
            return int(info.reset_in_seconds)
    value = (headers.get("Retry-After") or "").strip()
    return int(value) if value.isdigit() else None


class Waits:
    """The waits chosen after retryable answers, and the budget they may not exceed.

    A call (or a file's transfer) that keeps failing is retried until the time since its first
    failure in a row would pass retry_budget_min; each wait is what the Hub asked (Retry-After,
    RateLimit) or, when it asked nothing, 1, 2, 4 ... 30 s. Every wait is recorded.
    """

    def __init__(self, params, progress, stop):
        self.budget = params["retry_budget_min"] * 60.0
        self.params = params
        self.progress = progress
        self.stop = stop
        self.lock = threading.Lock()
        self.records = []

    def pause(self, what, status, headers, failures, since, error):
        asked = asked_wait(status, headers)
        wait = float(asked) if asked is not None else min(30.0, 2.0 ** max(0, failures - 1))
        if time.monotonic() - since + wait > self.budget:
            raise FetchError(self.exhausted(what, status, error))
        with self.lock:
            self.records.append({"what": what, "status": status, "asked_s": asked,
                                 "slept_s": wait})
        self.progress.update(message="%s: %s, retrying in %.0f s%s"
                             % (what, error, wait, " (asked by the Hub)" if asked is not None
                                else ""))
        self.stop.wait(wait)

    def exhausted(self, what, status, error):
        limited = status == 429
        return ("%s: the Hub at %s %s for %d min (hf_model_retry_budget_min=%d; last error: %s): "
                "%s; run again later to continue" % (
                    what, self.params["endpoint"],
                    "kept answering HTTP 429 (rate limited)" if limited else "kept failing",
                    self.params["retry_budget_min"], self.params["retry_budget_min"], error,
                    "set hf_model_token (a token's limits are higher than an address's), point "
                    "hf_model_endpoint at a mirror, or use hf_model_source: peer so that one host "
                    "asks the Hub for the fleet" if limited else
                    "check the Hub's status and this host's network, proxy (hf_model_proxy) and "
                    "CA (hf_model_ca_bundle), or point hf_model_endpoint at a mirror"))


class Hub:
    """The two metadata calls, through huggingface_hub's HTTP session, each retried."""

    def __init__(self, params, token, waits):
        import httpx2
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        self.httpx = httpx2
        self.params = params
        self.token = token
        self.waits = waits
        self.headers = build_hf_headers(token=token or False)
        self.get_session = get_session
        self.raise_for_status = hf_raise_for_status

    def get(self, what, url, params=None):
        failures = 0
        since = None
        while True:
            status, headers = None, None
            try:
                response = self.get_session().get(url, params=params, headers=self.headers,
                                                  timeout=60.0, follow_redirects=True)
                if response.status_code not in RETRY_STATUS:
                    self.raise_for_status(response)
                    return response
                status, headers = response.status_code, response.headers
                error = "HTTP %d" % status
            except (self.httpx.NetworkError, self.httpx.TimeoutException,
                    self.httpx.RemoteProtocolError) as exc:
                error = "%s: %s" % (type(exc).__name__, exc)
            failures += 1
            since = since or time.monotonic()
            if status != 429 and failures > self.params["retries"]:
                raise FetchError(self.waits.exhausted(what, status, error))
            self.waits.pause(what, status, headers, failures, since, error)

    def commit(self, revision):
        from urllib.parse import quote

        url = "%s/api/models/%s/revision/%s" % (self.params["endpoint"], self.params["repo_id"],
                                                quote(revision, safe=""))
        return self.get("the revision lookup", url, {"expand": "sha"}).json()["sha"]

    def files(self, commit):
        """{path: entry} for every file of the repo at `commit` (the tree, page by page)."""
        url = "%s/api/models/%s/tree/%s" % (self.params["endpoint"], self.params["repo_id"],
                                            commit)
        params = {"recursive": "true", "expand": "false"}
        files = {}
        while url:
            response = self.get("the file listing", url, params)
            for item in response.json():
                if item.get("type") != "file":
                    continue
                lfs = item.get("lfs") or None
                files[item["path"]] = {
                    "size": int(item["size"]),
                    "sha256": lfs["oid"] if lfs else None,
                    "git_oid": None if lfs else item["oid"],
                }
            url = (response.links.get("next") or {}).get("url")
            params = None  # the next link carries them
        return files


# -- HTTP transfer ------------------------------------------------------------------------------


class RangeRefused(Exception):
    """A 416 to a Range inside the file: a CDN fault, counted as one failed attempt."""


class HttpFetcher:
    """Resumable, hashed downloads through huggingface_hub's HTTP session."""

    def __init__(self, params, commit, token, local_dir, progress, stop, waits, journal):
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
        self.waits = waits
        self.journal = journal
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
                self.journal.add(path, entry)
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
        since = None
        last_error = None
        with open(part, "ab") as out:
            while state.have < size:
                if self.stop.is_set():
                    raise Stopped()
                before = state.have
                status, headers = None, None
                try:
                    self._stream(url, out, state)
                except Stopped:
                    raise
                except RangeRefused:
                    status, last_error = 416, "HTTP 416 to a Range within the file"
                except (self.httpx.NetworkError, self.httpx.TimeoutException,
                        self.httpx.RemoteProtocolError) as exc:
                    last_error = "%s: %s" % (type(exc).__name__, exc)
                except Exception as exc:  # noqa: BLE001 - HTTP errors from hf_raise_for_status
                    status = http_status(exc)
                    if status not in RETRY_STATUS and not cdn_refusal(exc, self.params):
                        raise
                    headers = getattr(exc.response, "headers", None)
                    last_error = "HTTP %s" % status
                    if cdn_refusal(exc, self.params):
                        last_error += (" from %s, the server the Hub redirected to (its signed URL "
                                       "refused or expired; not a token problem: the token is "
                                       "never sent there)" % response_host(exc))
                if state.have >= size:
                    break
                if state.have - before >= MIN_PROGRESS:
                    failures, since = 0, None
                # a rate-limit answer is waited out within the budget, not counted as an attempt
                limited = status == 429 or asked_wait(status, headers) is not None
                if not limited and state.have - before < MIN_PROGRESS:
                    failures += 1
                if failures >= self.params["retries"]:
                    raise FetchError("download of %s from %s stopped at %d of %d bytes after %d "
                                     "attempts without progress (last error: %s); run again to "
                                     "continue from there" % (path, self.params["endpoint"],
                                                              state.have, size, failures,
                                                              last_error))
                if not failures and not limited:
                    self.stop.wait(0.2)  # it moved: continue at once
                    continue
                since = since or time.monotonic()
                self.waits.pause("%s (at byte %d)" % (path, state.have), status, headers,
                                 failures, since, last_error)
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
            if response.status_code == 416:  # never asked past the end: the CDN's fault
                response.read()
                raise RangeRefused()
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
    """huggingface_hub's hf_hub_download (Xet where the Hub offers it), then a hash check.

    The first attempt lets the library work as it does for `hf download` (its HEAD is retried,
    a file it finds complete is kept); only a second attempt, after a hash mismatch or a
    transient error, forces a new download. Errors it wraps are unwrapped into the Hub's answer,
    so the messages are those of http mode. A transfer that moves no byte for stall_timeout_s
    (xet-core#883: downloads that hang) fails the run rather than waiting for the async timeout.
    """

    def __init__(self, params, commit, token, local_dir, progress, stop, waits, journal):
        from huggingface_hub import hf_hub_download

        self.download = hf_hub_download
        self.params = params
        self.commit = commit
        self.token = token
        self.local_dir = local_dir
        self.progress = progress
        self.stop = stop
        self.waits = waits
        self.journal = journal

    def fetch(self, path, entry):
        since = None
        for attempt in (1, 2):
            if self.stop.is_set():
                raise Stopped()
            try:
                target = self._download(path, force=attempt > 1)
            except FetchError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried once when transient, else reported
                error = hub_error(exc)
                status = http_status(error)
                transient = status in RETRY_STATUS or type(error).__name__ in (
                    "ConnectError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError",
                    "ReadError", "WriteError", "PoolTimeout", "LocalEntryNotFoundError")
                if attempt == 2 or not transient:
                    raise error
                since = since or time.monotonic()
                headers = getattr(getattr(error, "response", None), "headers", None)
                self.waits.pause(path, status, headers, 1, since,
                                 "%s: %s" % (type(error).__name__, str(error).splitlines()[0]))
                continue
            if size_ok(target, entry) and content_ok(target, entry):
                self.progress.add(entry["size"])
                self.journal.add(path, entry)
                return attempt > 1
            self.progress.update(message="%s: size or hash mismatch, fetching it again" % path)
        raise FetchError("%s still differs from the Hub's size/hash after a second download" % path)

    def _incomplete_bytes(self, path):
        directory, name = os.path.split(path)
        where = os.path.join(self.local_dir, HF_DOWNLOAD_DIR, directory)
        prefix = short_hash(name + ".metadata") + "."
        total = 0
        try:
            for item in os.listdir(where):
                if item.startswith(prefix) and item.endswith(".incomplete"):
                    try:
                        total += os.lstat(os.path.join(where, item)).st_size
                    except OSError:
                        pass
        except OSError:
            pass
        return total

    def _download(self, path, force):
        box = {}

        def work():
            try:
                box["path"] = self.download(
                    self.params["repo_id"], path, revision=self.commit, local_dir=self.local_dir,
                    token=self.token or False, endpoint=self.params["endpoint"],
                    force_download=force)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc

        worker = threading.Thread(target=work, name="xet %s" % path, daemon=True)
        worker.start()
        stall = float(self.params["stall_timeout_s"])
        seen, moved = -1, time.monotonic()
        while worker.is_alive():
            worker.join(0.5)
            if self.stop.is_set():
                raise Stopped()
            now = time.monotonic()
            size = self._incomplete_bytes(path)
            if size != seen:
                seen, moved = size, now
            elif now - moved > stall:
                raise FetchError(
                    "hf_model_transfer=xet: no byte of %s arrived for %d s "
                    "(hf_model_stall_timeout_s; hf_xet downloads can hang, xet-core#883): run "
                    "again, or use hf_model_transfer: http" % (path, stall))
        if "error" in box:
            raise box["error"]
        return box["path"]


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


# -- peer transfer: a tree of read-only rsync daemons ------------------------------------------
#
# Every host of the fleet serves its model directory (files in place only: each was verified
# before it was moved there) through a temporary read-only rsync daemon (module "hf_model"),
# and its progress file through a second module ("hf_model_status"). A host copies each file it
# lacks from the first host, in its order of preference, that lists it: its parent in a tree of
# `fanout` children per host rooted at the seed, then the parent's parent and so on up to the
# seed, then every other host. A copy lands in .cache/sparkfleet/peer/, is checked against the
# manifest (size and hash) and only then moved into place, where the host's own daemon serves
# it onward. A copy that fails the check is refused from that host (until its copy changes) and
# taken from another; a host that stops answering is passed over for a while.

RSYNC_MODULE = "hf_model"
STATUS_MODULE = "hf_model_status"
PEER_STAGE_DIR = os.path.join(STATE_DIR, "peer")
PEER_STATUS_DIR = os.path.join(STATE_DIR, "seed-status")
RSYNC_PROGRESS = re.compile(rb"^\s*([\d,.]+)\s+\d+%")
# rsync --list-only: "-rw-r--r--     12,345,678 2026/11/30 12:00:00 path/name"
RSYNC_LIST_LINE = re.compile(r"^-\S+\s+([\d,.]+)\s+(\S+\s+\S+)\s(.+)$")
RSYNC_BUSY = 5  # "@ERROR: max connections (N) reached -- try again later" (and other refusals)
# A daemon that does not admit this host (its "hosts allow" lacks the address this host connects
# from) answers "@ERROR: Unknown module '...'" for a `list = no` module, else "@ERROR: access
# denied to ... from ...", exit 5 as for a full daemon (rsync clientserver.c rsync_module()).
RSYNC_REFUSED = re.compile(r"@ERROR: (?:Unknown module|access denied)[^\n]*")
RSYNC_DOWN = (10, 12, 30, 35)  # socket I/O, protocol stream, I/O timeout, connect timeout
RSYNC_GONE = (23, 24)  # the file is not (or no longer) there
PEER_POLL_S = 1.0
PEER_DOWN_S = 5.0
PEER_ERRORS = 3


def rsync_url(address, port, module):
    host = "[%s]" % address if ":" in address else address
    return "rsync://%s:%d/%s" % (host, port, module)


def peer_order(fleet, me, fanout):
    """The hosts `me` copies from, in order of preference: its ancestors in a tree of `fanout`
    children per host laid over `fleet` (a list of {"name", "address"}, the seed first), the
    nearest first and the seed last, then every other host in fleet order."""
    names = [host["name"] for host in fleet]
    index = names.index(me)
    chain = []
    while index > 0:
        index = (index - 1) // fanout
        chain.append(index)
    rest = [i for i in range(len(fleet)) if i not in chain and names[i] != me]
    return [fleet[i] for i in chain + rest]


def parse_listing(text):
    """{path: (size, "date time")} of the regular files in `rsync --list-only` output."""
    found = {}
    for line in text.splitlines():
        match = RSYNC_LIST_LINE.match(line)
        if match:
            size = int(re.sub(r"[,.]", "", match.group(1)))
            found[match.group(3)] = (size, match.group(2))
    return found


class PeerSource:
    """One host of the fleet as a source: what it listed last, whether it answers."""

    def __init__(self, entry, port):
        self.name = entry["name"]
        self.url = rsync_url(entry["address"], port, RSYNC_MODULE)
        self.status_url = rsync_url(entry["address"], port, STATUS_MODULE)
        self.listing = {}
        self.listed_at = None
        self.down_until = 0.0
        self.busy_until = 0.0
        self.active = 0
        self.bytes = 0
        self.refused = None  # the daemon's refusal of this host, while it refuses

    def usable(self, now):
        return self.down_until <= now and self.busy_until <= now

    def offers(self, path, entry, rejected):
        listed = self.listing.get(path)
        return (listed is not None and listed[0] == entry["size"]
                and rejected.get((self.name, path)) != listed[1])


class Rsync:
    """rsync client runs, each killable when the fetch stops."""

    def __init__(self, stall_timeout_s):
        self.path = shutil.which("rsync")
        if not self.path:
            raise FetchError("rsync is not installed on this host (needed for "
                             "hf_model_source=peer)")
        self.stall = stall_timeout_s
        self.lock = threading.Lock()
        self.procs = set()
        self.stopped = False
        self.env = dict(os.environ, LC_ALL="C")

    def base(self):
        return [self.path, "--no-motd", "--contimeout=10", "--timeout=%d" % self.stall]

    def run(self, args, stdin=b"", on_bytes=None):
        """(exit code, stderr tail) of one rsync run; `on_bytes(total)` follows --info=progress2."""
        proc = subprocess.Popen(self.base() + args, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        with self.lock:
            if self.stopped:
                proc.kill()
            self.procs.add(proc)
        errors = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
        reader.start()
        out = []
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except OSError:
            pass
        buffer = b""
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            if on_bytes is None:
                out.append(chunk)
                continue
            buffer += chunk
            pieces = re.split(rb"[\r\n]", buffer)
            buffer = pieces.pop()
            for piece in pieces:
                match = RSYNC_PROGRESS.match(piece)
                if match:
                    on_bytes(int(re.sub(rb"[,.]", b"", match.group(1))))
        rc = proc.wait()
        reader.join(timeout=5)
        with self.lock:
            self.procs.discard(proc)
        tail = (errors[0] if errors else b"").decode("utf-8", "replace").strip()[-600:]
        return rc, tail, b"".join(out).decode("utf-8", "replace")

    def stop(self):
        with self.lock:
            self.stopped = True
            for proc in self.procs:
                try:
                    proc.kill()
                except OSError:
                    pass


class PeerFetch:
    """Copies `paths` from the fleet (see the section's comment); run() returns the paths that
    had to be copied again after a copy failed the check."""

    def __init__(self, params, local_dir, files, paths, progress, journal):
        self.params = params
        self.local_dir = local_dir
        self.files = files
        self.pending = sorted(paths, key=lambda p: (-files[p]["size"], p))
        self.progress = progress
        self.journal = journal
        self.rsync = Rsync(params["stall_timeout_s"])
        names = [host.get("name") for host in params["fleet"]]
        self.seed_name = names[0]
        self.seed_label = ("its pair partner %s" if params.get("upstream") == "pair"
                           else "the seed %s") % self.seed_name
        self.sources = [PeerSource(e, params["peer_port"])
                        for e in peer_order(params["fleet"], params["host_name"],
                                            params["fanout"])]
        self.seed = next(s for s in self.sources if s.name == self.seed_name)
        self.rejected = {}  # (source, path) -> the listing's stamp of the refused copy
        self.rejections = []
        self.failures = []
        self.errors = {}
        self.refetched = set()
        self.flying_paths = set()
        self.seed_stamp = None  # (the seed's last updated_at, when this host first saw it)

    # one rsync run copying a batch of files, in a worker thread: it never touches the shared
    # state above, and returns (path, outcome, detail) for each file of the batch
    def copy(self, source, paths):
        stage_root = os.path.join(self.local_dir, PEER_STAGE_DIR)
        for path in paths:
            os.makedirs(os.path.dirname(os.path.join(stage_root, path)), mode=0o755,
                        exist_ok=True)
        seen = [0]

        def on_bytes(total):
            if total > seen[0]:
                self.progress.add(total - seen[0])
                seen[0] = total

        rc, tail, _out = self.rsync.run(
            ["--times", "--files-from=-", "--from0", "--partial-dir=.rsync-partial",
             "--info=progress2", "--outbuf=L", source.url + "/", stage_root + "/"],
            stdin=b"".join(p.encode() + b"\0" for p in paths), on_bytes=on_bytes)
        if rc == 0:
            failed = None
        elif rc == RSYNC_BUSY and not RSYNC_REFUSED.search(tail):
            failed = "busy"
        elif rc == RSYNC_BUSY:
            failed = "down"
        elif rc in RSYNC_DOWN:
            failed = "down"
        elif rc in RSYNC_GONE:
            failed = "gone"
        else:
            failed = "error"
        outcomes = []
        for path in paths:
            entry = self.files[path]
            stage = os.path.join(stage_root, path)
            if failed is not None and not size_ok(stage, entry):
                outcomes.append((path, failed, "rsync exit %d: %s" % (rc, tail)))
            elif size_ok(stage, entry) and content_ok(stage, entry):
                install_file(stage, self.local_dir, path)
                self.journal.add(path, entry)
                outcomes.append((path, "ok", ""))
            else:
                remove_quietly(stage)
                outcomes.append((path, "bad", "size or hash differs from the manifest"))
        return outcomes

    def list(self, source, now):
        rc, tail, out = self.rsync.run(["--list-only", "--recursive", source.url + "/"])
        refused = RSYNC_REFUSED.search(tail) if rc == RSYNC_BUSY else None
        source.refused = refused.group(0) if refused else None
        if rc == 0:
            source.listing = parse_listing(out)
            source.listed_at = now
        elif rc == RSYNC_BUSY and not refused:
            source.busy_until = now + PEER_POLL_S
        else:
            source.down_until = now + PEER_DOWN_S

    def seed_status(self):
        """The seed's progress in this run (None: unknown, unreachable or another run's)."""
        where = os.path.join(self.local_dir, PEER_STATUS_DIR)
        shutil.rmtree(where, ignore_errors=True)
        os.makedirs(where, mode=0o755, exist_ok=True)
        rc, _tail, _out = self.rsync.run(["--recursive", self.seed.status_url + "/", where + "/"])
        if rc != 0:
            return None
        for name in sorted(os.listdir(where)):
            try:
                with open(os.path.join(where, name)) as handle:
                    status = json.load(handle)
            except (OSError, ValueError):
                continue
            if isinstance(status, dict) and status.get("run_id") == self.params["run_id"]:
                return status
        return None

    def offered(self, path):
        return any(s.offers(path, self.files[path], self.rejected) for s in self.sources)

    def refresh(self, waiting, now, everyone=False):
        """List the sources in order until each waiting path has one that offers it."""
        need = set(waiting)
        for source in self.sources:
            if not need and not everyone:
                break
            if source.down_until > now:
                continue
            if everyone or source.listed_at is None or now - source.listed_at >= PEER_POLL_S:
                self.list(source, now)
            need = {p for p in need if not source.offers(p, self.files[p], self.rejected)}

    def settle(self, future, source):
        source.active -= 1
        for path, outcome, detail in future.result():
            self.outcome(source, path, outcome, detail)

    def outcome(self, source, path, outcome, detail):
        now = time.monotonic()
        self.flying_paths.discard(path)
        if outcome == "ok":
            self.pending.remove(path)
            source.bytes += self.files[path]["size"]
            self.progress.file_done(path)
            return
        self.progress.file_done(path, done=False)
        if outcome == "bad":
            source.bytes += self.files[path]["size"]
            stamp = source.listing.get(path, (None, None))[1]
            self.rejected[(source.name, path)] = stamp
            self.rejections.append({"path": path, "source": source.name, "reason": detail})
            self.refetched.add(path)
            self.progress.update(message="%s from %s: %s; copying it from another host"
                                 % (path, source.name, detail))
            return
        self.failures.append({"path": path, "source": source.name, "outcome": outcome,
                              "detail": detail[-300:]})
        if outcome == "down":
            source.down_until = now + PEER_DOWN_S
            self.progress.update(message="%s stopped answering (%s); copying from another "
                                 "host" % (source.name, detail[-200:]))
        elif outcome == "busy":
            source.busy_until = now + PEER_POLL_S
        elif outcome == "gone":
            source.listing.pop(path, None)
        else:
            self.errors[path] = self.errors.get(path, 0) + 1
            if self.errors[path] >= PEER_ERRORS:
                raise FetchError("copy of %s from %s failed %d times: %s"
                                 % (path, source.name, PEER_ERRORS, detail))

    def schedule(self, pool, flying, now):
        """Start batches: each waiting file goes to the first host, in order of preference, that
        offers it and can take one more transfer; a host's files are spread over up to
        `streams` batches."""
        streams = self.params["streams"]
        chosen = {}
        for path in self.pending:
            if path in self.flying_paths:
                continue
            source = next((s for s in self.sources if s.usable(now) and s.active < streams
                           and s.offers(path, self.files[path], self.rejected)), None)
            if source is not None:
                chosen.setdefault(source.name, (source, []))[1].append(path)
        for source, paths in chosen.values():
            slots = min(streams - len(flying), streams - source.active, len(paths))
            for slot in range(max(0, slots)):
                batch = paths[slot::slots]
                source.active += 1
                for path in batch:
                    self.flying_paths.add(path)
                    self.progress.file_started(path)
                flying[pool.submit(self.copy, source, batch)] = source

    def check_seed(self, waiting, now):
        """Fail when the seed failed, or finished while a file is to be had from no host."""
        status = self.seed_status()
        if status is None:
            return
        if status.get("phase") == "failed":
            raise FetchError("%s failed to fetch the model: %s"
                             % (self.seed_label, status.get("message")))
        if status.get("phase") != "done":
            self.check_seed_alive(status)
            return
        self.refresh(waiting, now, everyone=True)
        lost = sorted(p for p in waiting if not self.offered(p))
        if lost:
            refused = sorted({"%s (%s)" % (r["source"], r["path"]) for r in self.rejections})
            raise FetchError("%s is done, but no host of the fleet offers a copy of %s "
                             "that matches the manifest%s" % (
                                 self.seed_label, ", ".join(lost),
                                 "; refused: " + ", ".join(refused) if refused else ""))

    def check_seed_alive(self, status):
        """Fail when the seed's running fetch stopped rewriting its progress file (once a second
        while its process lives) for longer than stall_timeout_s: its process died (killed, or
        out of memory) and no "failed" will ever be written. The age is measured on this host's
        clock, from the first poll that saw the current `updated_at`, so that the two hosts'
        clocks need not agree."""
        stamp = status.get("updated_at")
        now = time.monotonic()
        if self.seed_stamp is None or self.seed_stamp[0] != stamp:
            self.seed_stamp = (stamp, now)
            return
        unchanged = now - self.seed_stamp[1]
        stall = float(self.params["stall_timeout_s"])
        if unchanged > stall:
            try:
                at = " (last written %s UTC)" % time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.gmtime(float(stamp)))
            except (TypeError, ValueError, OverflowError):
                at = ""
            raise FetchError(
                "%s stopped updating its progress file in phase %s%s: unchanged for "
                "%d s, more than hf_model_stall_timeout_s (%d s); its fetch process is gone "
                "(killed?): run the play again" % (
                    self.seed_label, status.get("phase"), at, unchanged, stall))

    def run(self):
        stall = float(self.params["stall_timeout_s"])
        flying = {}
        last_answer = time.monotonic()
        seed_checked = None
        kept_alive = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=self.params["streams"])
        try:
            while self.pending:
                for future in [f for f in flying if f.done()]:
                    self.settle(future, flying.pop(future))
                if not self.pending:
                    break
                now = time.monotonic()
                waiting = [p for p in self.pending if p not in self.flying_paths]
                if waiting and len(flying) < self.params["streams"]:
                    self.refresh(waiting, now)
                    self.schedule(pool, flying, now)
                if any(s.down_until <= now for s in self.sources) or flying:
                    last_answer = now
                elif now - last_answer > stall:
                    refused = ["%s (%s)" % (s.name, s.refused) for s in self.sources if s.refused]
                    admitted = ("its daemon admits this host by its vllm_pair_address: it must "
                                "be the address this host connects from over the link"
                                if self.params.get("upstream") == "pair" else
                                "their daemons admit the play's hosts by hf_model_peer_address: "
                                "it must be the address this host connects from")
                    raise FetchError("no host of the fleet (%s) answered for %d s "
                                     "(hf_model_stall_timeout_s)%s" % (
                                         ", ".join(s.name for s in self.sources), stall,
                                         "; refused this host: %s (%s)"
                                         % (", ".join(refused), admitted) if refused else ""))
                if now - kept_alive >= stall / 2:
                    # a connection to every host that answers, so that no daemon of the fleet
                    # takes itself for idle (the role's unit stops it then) while this runs
                    kept_alive = now
                    self.refresh([], now, everyone=True)
                if not flying and (seed_checked is None or now - seed_checked >= 2.0):
                    seed_checked = now
                    self.check_seed(list(self.pending), now)
                if flying:
                    wait_futures(list(flying), timeout=PEER_POLL_S / 2,
                                 return_when=FIRST_COMPLETED)
                else:
                    time.sleep(PEER_POLL_S / 2)
        finally:
            self.rsync.stop()
            pool.shutdown(wait=True)
            shutil.rmtree(os.path.join(self.local_dir, PEER_STATUS_DIR), ignore_errors=True)
        return sorted(self.refetched)

    def report(self):
        return {
            "peer_bytes": {s.name: s.bytes for s in self.sources if s.bytes},
            "peer_rejected": self.rejections,
            "peer_failures": self.failures,
        }


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
    limits = {"workers": (1, 64), "retries": (1, 100), "stall_timeout_s": (5, 3600),
              "retry_budget_min": (1, 1440), "peer_port": (1, 65535), "fanout": (1, 16),
              "streams": (1, 16)}
    for name, (low, high) in limits.items():
        if not low <= params[name] <= high:
            module.fail_json(msg="%s=%s is out of range: %d-%d" % (name, params[name], low, high))
    if params["disk_margin_gb"] < 0:
        module.fail_json(msg="disk_margin_gb=%s must be >= 0" % params["disk_margin_gb"])
    proxy = params["proxy"]
    if proxy and (not re.match(r"^(https?|socks5h?)://[^/@\s]+(:\d+)?/?$", proxy)):
        module.fail_json(msg="proxy=%s must be http(s)://HOST[:PORT] or socks5://HOST[:PORT], "
                             "without credentials (user:password@ would end up in the job's "
                             "files)" % proxy.split("@")[-1])
    if params["ca_bundle"] and not os.path.isfile(params["ca_bundle"]):
        module.fail_json(msg="ca_bundle=%s is not a file on this host (a PEM bundle of the CAs "
                             "to trust)" % params["ca_bundle"])
    if params["source"] == "peer":
        manifest = params.get("manifest") or {}
        if not isinstance(manifest.get("files"), dict) or not manifest.get("commit"):
            module.fail_json(msg="source=peer needs the seed's manifest (with commit and files)")
        if manifest.get("repo_id") != params["repo_id"]:
            module.fail_json(msg="the seed's manifest is for %s, not %s"
                             % (manifest.get("repo_id"), params["repo_id"]))
        fleet = params.get("fleet")
        if fleet is not None:
            names = [host.get("name") for host in fleet]
            if (any(not host.get("name") or not host.get("address") for host in fleet)
                    or len(set(names)) != len(names) or params.get("host_name") not in names
                    or names[0] == params.get("host_name")):
                module.fail_json(msg="fleet=%s must list hosts with distinct names and an "
                                     "address each, the seed first, and include host_name=%s "
                                     "(not as the seed)" % (fleet, params.get("host_name")))


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
            "fleet": {"type": "list", "elements": "dict"},
            "host_name": {"type": "str"},
            "upstream": {"type": "str", "default": "seed", "choices": ["seed", "pair"]},
            "peer_port": {"type": "int", "default": 8730},
            "fanout": {"type": "int", "default": 2},
            "streams": {"type": "int", "default": 2},
            "run_id": {"type": "str", "default": ""},
            "transfer": {"type": "str", "default": "http", "choices": ["http", "xet"]},
            "workers": {"type": "int", "default": 8},
            "retries": {"type": "int", "default": 10},
            "stall_timeout_s": {"type": "int", "default": 60},
            "disk_margin_gb": {"type": "float", "default": 5.0},
            "progress_file": {"type": "path"},
            "retry_budget_min": {"type": "int", "default": 10},
            "proxy": {"type": "str", "default": ""},
            "no_proxy": {"type": "str", "default": ""},
            "ca_bundle": {"type": "path"},
            "xet_high_performance": {"type": "bool", "default": False},
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
    progress.update(run_id=params["run_id"] or None)
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


def resolve(params, token, current, waits):
    """(commit, files) for the hub source, asking the Hub only for what the manifest lacks."""
    revision = params["revision"]
    same_repo = current.get("repo_id") == params["repo_id"] and isinstance(current.get("files"), dict)
    if same_repo and COMMIT_RE.match(revision) and current.get("commit") == revision:
        return revision, current["files"]  # a commit's tree never changes: no Hub call at all
    hub = Hub(params, token, waits)
    commit = revision if COMMIT_RE.match(revision) else hub.commit(revision)
    if same_repo and current.get("commit") == commit:
        return commit, current["files"]
    return commit, hub.files(commit)


def set_environment(params):
    """The environment huggingface_hub reads when it is imported (so: before that)."""
    os.environ.update({
        "HF_ENDPOINT": params["endpoint"],
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    })
    if params["xet_high_performance"]:
        os.environ["HF_XET_HIGH_PERFORMANCE"] = "1"
    else:
        os.environ.pop("HF_XET_HIGH_PERFORMANCE", None)
    for name in ("HF_TOKEN", "HF_HUB_ENABLE_HF_TRANSFER"):
        os.environ.pop(name, None)
    if params["proxy"]:
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            os.environ[name] = params["proxy"]
    if params["no_proxy"]:
        for name in ("NO_PROXY", "no_proxy"):
            os.environ[name] = params["no_proxy"]
    if params["ca_bundle"]:
        # httpx2 (huggingface_hub's HTTP client) reads SSL_CERT_FILE; it ignores
        # REQUESTS_CA_BUNDLE, which is set too for the tools that read only that one
        os.environ["SSL_CERT_FILE"] = params["ca_bundle"]
        os.environ["REQUESTS_CA_BUNDLE"] = params["ca_bundle"]


def check_present(params, local_dir, files, current, journal):
    """(present, hashed): the files whose content is known to match, and those hashed to know.

    A file of the right size counts as present without being read only when the previous
    manifest (or the journal of files installed since) records the same hash for the same path;
    any other file of the right size (a changed hash, a directory without our manifest, e.g.
    filled by `hf download`) is hashed first. verify=sha256 hashes every one.
    """
    same_repo = current.get("repo_id") == params["repo_id"]
    known = dict(current.get("files") or {}) if same_repo else {}
    known.update(journal.read())
    sized = [p for p in sorted(files) if size_ok(os.path.join(local_dir, p), files[p])]
    if params["verify"] == "sha256":
        to_hash = sized
    else:
        to_hash = [p for p in sized if not same_entry(known.get(p), files[p])]
    bad = set(bad_content(local_dir, files, to_hash))
    return [p for p in sized if p not in bad], to_hash


def run(module, params, token, local_dir, progress, result):
    set_environment(params)
    lock = DirLock(local_dir)
    if not module.check_mode:
        # A fetch left running by an earlier play (e.g. after a lost connection) keeps the lock
        # and its progress file; this one waits for it, then usually finds nothing to do.
        lock.acquire(progress)
    progress.start()
    current = read_manifest(local_dir)
    stop = threading.Event()
    waits = Waits(params, progress, stop)
    result["hub_waits"] = waits.records
    journal = Journal(local_dir, params["repo_id"])

    progress.update(phase="listing")
    if params["source"] == "hub":
        try:
            import huggingface_hub  # noqa: F401
        except ImportError as exc:
            raise FetchError("huggingface_hub is not importable by %s: %s" % (sys.executable, exc))
        commit, files = resolve(params, token, current, waits)
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
    present, hashed = check_present(params, local_dir, files, current, journal)
    missing = sorted(set(files) - set(present))
    result["hashed"] = hashed
    if not module.check_mode:
        adopt = params["source"] == "hub" and params["transfer"] == "http"
        result["adopted_partials"], result["removed_partials"] = hf_partials(
            local_dir, files, missing, adopt)
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
    if result["up_to_date"] and os.path.exists(journal.path):
        journal.clear()
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
            if not params.get("fleet") or not params.get("host_name"):
                raise FetchError("source=peer has files to fetch but no fleet to copy them from")
            peers = PeerFetch(params, local_dir, files, missing, progress, journal)
            try:
                refetched = peers.run()
            finally:
                result.update(peers.report())
        else:
            fetcher_class = XetFetcher if params["transfer"] == "xet" else HttpFetcher
            fetcher = fetcher_class(params, commit, token, local_dir, progress, stop, waits,
                                    journal)
            refetched = fetch_all(fetcher, files, missing, params["workers"], progress)
        result["refetched"] = refetched
    for path in stale:
        remove_quietly(os.path.join(local_dir, path))
    progress.update(phase="verifying")
    write_manifest(local_dir, manifest)
    journal.clear()
    prune_empty_dirs(os.path.join(local_dir, PARTS_DIR))
    seconds = time.monotonic() - started
    fetched_bytes = progress.snapshot()["bytes_fetched"]
    result.update(fetched=missing, removed=stale, bytes_fetched=fetched_bytes,
                  seconds=round(seconds, 3))
    progress.stop("done")


if __name__ == "__main__":
    main()
