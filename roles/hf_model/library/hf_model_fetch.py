#!/usr/bin/python
"""Ansible module: fetch a Hugging Face Hub repository into a directory, pinned and verified."""

from __future__ import annotations

DOCUMENTATION = r"""
module: hf_model_fetch
short_description: Fetch a model repository from the Hugging Face Hub into a local directory
description:
  - Resolves I(revision) to a commit, lists the repository's files with their sizes and sha256,
    and downloads with huggingface_hub only the files that are missing or differ in size.
  - Files just downloaded are checked against the Hub's size and, for LFS files, sha256; a file
    that fails is fetched once more, alone. A manifest (repo, commit, files, sizes, sha256) is
    written to C(.sparkfleet-manifest.json) in I(local_dir).
  - A run that finds every file present (and the manifest at the same commit) changes nothing.
  - Must run with a Python interpreter that has huggingface_hub installed.
options:
  repo_id: {description: Repository id (owner/name)., type: str, required: true}
  revision: {description: Branch, tag or commit., type: str, default: main}
  local_dir: {description: Target directory., type: path, required: true}
  endpoint: {description: Hub endpoint or mirror., type: str, default: "https://huggingface.co"}
  token: {description: Access token (never logged)., type: str, default: ""}
  verify:
    description: Check made on files already present (size, or size and sha256).
    type: str
    choices: [size, sha256]
    default: size
author: sparkfleet
"""

RETURN = r"""
commit: {description: Commit the revision resolved to., returned: success, type: str}
fetched: {description: Paths downloaded by this run., returned: success, type: list}
files_total: {description: Number of files in the repository., returned: success, type: int}
bytes_total: {description: Total size of the repository's files., returned: success, type: int}
manifest: {description: The manifest written to local_dir., returned: success, type: dict}
"""

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

MANIFEST = ".sparkfleet-manifest.json"
CHUNK = 8 * 1024 * 1024


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path):
    digest = hashlib.sha1()  # noqa: S324 - git's object id, not a security hash
    digest.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def content_ok(path, meta):
    """True when the file at path has the Hub's sha256 (LFS) or git blob id (others)."""
    if meta["sha256"]:
        return file_sha256(path) == meta["sha256"]
    return not meta["blob_id"] or git_blob_sha1(path) == meta["blob_id"]


def size_ok(path, meta):
    try:
        return os.path.getsize(path) == meta["size"]
    except OSError:
        return False


def bad_content(local_dir, files, paths):
    """Paths among `paths` whose content does not match, hashed in parallel."""
    workers = min(8, max(1, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: (p, content_ok(os.path.join(local_dir, p), files[p])), paths)
        return sorted(p for p, ok in results if not ok)


def hub_error(module, exc, params):
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, endpoint = params["repo_id"], params["endpoint"]
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError):
        msg = "repo %s on %s is gated: accept its terms on the Hub and set hf_model_token" % (repo, endpoint)
    elif isinstance(exc, RevisionNotFoundError):
        msg = "hf_model_revision=%s not found in %s on %s" % (params["revision"], repo, endpoint)
    elif isinstance(exc, RepositoryNotFoundError) or status == 404:
        msg = ("hf_model_repo_id=%s not found on %s (wrong id, or private/gated and the token "
               "has no access)" % (repo, endpoint))
    elif status in (401, 403):
        msg = ("the Hub at %s refused access to %s (HTTP %s): hf_model_token is missing, wrong "
               "or lacks access" % (endpoint, repo, status))
    elif isinstance(exc, HfHubHTTPError):
        msg = "the Hub at %s answered HTTP %s for %s" % (endpoint, status, repo)
    else:
        msg = "could not reach the Hub at %s: %s: %s" % (endpoint, type(exc).__name__, exc)
    module.fail_json(msg=msg, hub_status=status)


def remote_files(api, repo_id, revision):
    from huggingface_hub.hf_api import RepoFile

    info = api.model_info(repo_id, revision=revision)
    files = {}
    for entry in api.list_repo_tree(repo_id, revision=info.sha, recursive=True):
        if isinstance(entry, RepoFile):
            files[entry.path] = {
                "size": entry.size,
                "sha256": entry.lfs.sha256 if entry.lfs else None,
                "blob_id": entry.blob_id,
            }
    return info.sha, files


def read_manifest(local_dir):
    try:
        with open(os.path.join(local_dir, MANIFEST)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def write_manifest(local_dir, manifest):
    path = os.path.join(local_dir, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def download(params, local_dir, commit, paths, force=False):
    from huggingface_hub import hf_hub_download, snapshot_download

    token = params["token"] or False
    if force:
        for path in paths:
            hf_hub_download(params["repo_id"], path, revision=commit, local_dir=local_dir,
                            token=token, endpoint=params["endpoint"], force_download=True)
        return
    snapshot_download(params["repo_id"], revision=commit, local_dir=local_dir, token=token,
                      endpoint=params["endpoint"], allow_patterns=list(paths))


def main():
    module = AnsibleModule(
        argument_spec={
            "repo_id": {"type": "str", "required": True},
            "revision": {"type": "str", "default": "main"},
            "local_dir": {"type": "path", "required": True},
            "endpoint": {"type": "str", "default": "https://huggingface.co"},
            "token": {"type": "str", "default": "", "no_log": True},
            "verify": {"type": "str", "default": "size", "choices": ["size", "sha256"]},
        },
        supports_check_mode=True,
    )
    params = module.params
    endpoint = params["endpoint"].rstrip("/")
    params["endpoint"] = endpoint
    os.environ.update({
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_XET_HIGH_PERFORMANCE": "1",
    })
    os.environ.pop("HF_TOKEN", None)
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        module.fail_json(msg="huggingface_hub is not importable by %s: %s" % (sys.executable, exc))

    local_dir = params["local_dir"]
    api = HfApi(endpoint=endpoint, token=params["token"] or False)
    try:
        commit, files = remote_files(api, params["repo_id"], params["revision"])
    except Exception as exc:  # noqa: BLE001 - mapped to a clear message
        hub_error(module, exc, params)

    present = [p for p in sorted(files) if size_ok(os.path.join(local_dir, p), files[p])]
    if params["verify"] == "sha256":
        present = sorted(set(present) - set(bad_content(local_dir, files, present)))
    missing = sorted(set(files) - set(present))
    manifest = {
        "repo_id": params["repo_id"],
        "revision": params["revision"],
        "commit": commit,
        "endpoint": endpoint,
        "files": {p: {"size": m["size"], "sha256": m["sha256"]} for p, m in files.items()},
    }
    result = {
        "commit": commit,
        "files_total": len(files),
        "bytes_total": sum(m["size"] for m in files.values()),
        "missing": missing,
        "manifest": manifest,
    }
    current = read_manifest(local_dir)
    if not missing and current.get("commit") == commit and current.get("files") == manifest["files"]:
        module.exit_json(changed=False, fetched=[], **result)
    if module.check_mode:
        module.exit_json(changed=True, fetched=missing, **result)

    os.makedirs(local_dir, mode=0o755, exist_ok=True)
    try:
        if missing:
            download(params, local_dir, commit, missing)
        bad = [p for p in missing if not size_ok(os.path.join(local_dir, p), files[p])]
        bad += bad_content(local_dir, files, [p for p in missing if p not in bad])
        if bad:
            download(params, local_dir, commit, sorted(bad), force=True)
            still_bad = [p for p in bad if not size_ok(os.path.join(local_dir, p), files[p])
                         or not content_ok(os.path.join(local_dir, p), files[p])]
            if still_bad:
                module.fail_json(msg="files still differ from the Hub's size/sha256 after a "
                                 "second download: %s" % ", ".join(still_bad), **result)
    except Exception as exc:  # noqa: BLE001 - mapped to a clear message
        hub_error(module, exc, params)
    write_manifest(local_dir, manifest)
    module.exit_json(changed=True, fetched=missing, **result)


if __name__ == "__main__":
    main()
