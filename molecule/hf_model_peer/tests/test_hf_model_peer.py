"""Verify hf_model_source=peer: every host has the fixture's files, the Hub served them once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

STATE = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
HUB_PY = Path(__file__).resolve().parents[1] / "hub.py"
MODEL_DIR = "/opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4"
SEED = "hf-peer-1"
HASH_FILES = r"""
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for path in json.load(open(os.path.join(root, ".sparkfleet-manifest.json")))["files"]:
    data = open(os.path.join(root, path), "rb").read()
    out[path] = [len(data), hashlib.sha256(data).hexdigest(),
                 hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()]
print(json.dumps(out))
"""


def fixture() -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((STATE / "hub" / "repo" / "repo.json").read_text())
    return meta


def hub_stats() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HUB_PY), "stats", str(STATE / "hub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    stats: dict[str, Any] = json.loads(out)
    return stats


def test_files_match_the_fixture_and_the_manifest(host: Any) -> None:
    meta = fixture()
    manifest = json.loads(host.file(f"{MODEL_DIR}/.sparkfleet-manifest.json").content_string)
    assert manifest["repo_id"] == "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
    assert manifest["commit"] == meta["sha"]
    assert set(manifest["files"]) == {f["path"] for f in meta["files"]}
    on_host = json.loads(host.check_output(f"python3 -c '{HASH_FILES}' {MODEL_DIR}"))
    for entry in meta["files"]:
        size, sha256, git_oid = on_host[entry["path"]]
        recorded = manifest["files"][entry["path"]]
        assert size == entry["size"] == recorded["size"], entry["path"]
        assert sha256 == entry["sha256"], entry["path"]
        assert git_oid == entry["git_oid"], entry["path"]
        assert recorded["sha256"] == (entry["sha256"] if entry["lfs"] else None)
        assert recorded["git_oid"] == (None if entry["lfs"] else entry["git_oid"])


def test_the_hub_served_the_model_once_for_the_fleet(host: Any) -> None:
    meta = fixture()
    stats = hub_stats()
    assert stats["files"] == {f["path"]: f["size"] for f in meta["files"]}
    assert stats["bytes_served"] == meta["total_size"]


def test_only_the_seed_talks_to_the_hub(host: Any) -> None:
    name = host.backend.get_hostname()
    venv = host.file("/opt/sparkfleet/hf-venv/bin/python")
    assert venv.exists == (name == SEED)
    progress = json.loads((STATE / "progress" / f"{name}.json").read_text())
    assert progress["phase"] == "done" and progress["host"] == name
    assert progress["source"] == ("hub" if name == SEED else "peer")
    assert progress["bytes_done"] == progress["bytes_total"] == fixture()["total_size"]


def fault_result(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((STATE / "faults" / f"{name}.json").read_text())
    return result


def test_a_lying_and_dying_peer_costs_only_its_share(host: Any) -> None:
    """side_effect.yml: hf-peer-3 copied from hf-peer-2 (its parent in the chain), refused the
    copy whose byte hf-peer-2 had flipped, lost hf-peer-2 mid-transfer and finished from the
    seed; the files on disk are checked by the first test."""
    if host.backend.get_hostname() != "hf-peer-3":
        return
    killed = json.loads((STATE / "faults" / "killed.json").read_text())
    assert killed["victim"] == "hf-peer-2" and killed["watched_bytes"]["phase"] == "fetching"
    result = fault_result("hf-peer-3")
    bad = "model-00001-of-00020.safetensors"
    assert result["peer_rejected"] == [
        {"path": bad, "source": "hf-peer-2", "reason": "size or hash differs from the manifest"}
    ]
    assert bad in result["refetched"]
    assert any(
        f["source"] == "hf-peer-2" and f["outcome"] == "down" for f in result["peer_failures"]
    ), result["peer_failures"]
    total = fixture()["total_size"]
    copied = result["peer_bytes"]
    assert set(copied) == {"hf-peer-1", "hf-peer-2"} and copied["hf-peer-2"] < total
    sizes = {f["path"]: f["size"] for f in fixture()["files"]}
    # every file once, and the refused one a second time: what hf-peer-2 did not finish came
    # from the seed, nothing twice but the bad copy
    assert copied["hf-peer-1"] + copied["hf-peer-2"] == total + sizes[bad]


def test_a_sha256_run_repairs_the_lying_peer(host: Any) -> None:
    if host.backend.get_hostname() != "hf-peer-2":
        return
    result = fault_result("hf-peer-2")
    assert result["fetched"] == ["model-00001-of-00020.safetensors"]
    assert result["hashed"]  # verify=sha256 read the files it had


def test_an_interrupted_play_leaves_daemons_that_end_by_themselves(host: Any) -> None:
    """side_effect.yml, first interrupt: the play was stopped mid-copy, its daemons were left
    running (and hf-peer-3's fetch job); the play waited for them to end by themselves."""
    name = host.backend.get_hostname()
    left = fault_result(f"left-1-{name}")
    assert left["daemon"] == "active"
    if name == "hf-peer-3":
        assert left["fetch_jobs"] >= 1
    assert fault_result(f"ended-{name}") == []  # its configuration, lock and log went with it


def test_a_run_after_an_interrupted_one_replaces_it_and_finishes(host: Any) -> None:
    """side_effect.yml, second interrupt, then a run at once: it stopped the earlier fetch job
    and daemons and copied the model (the files on disk are checked by the first test)."""
    name = host.backend.get_hostname()
    left = fault_result(f"left-2-{name}")
    assert left["daemon"] == "active"
    rerun = fault_result(f"rerun-{name}")
    assert "daemon" in rerun["earlier"]  # the earlier run's daemon, replaced
    if name != "hf-peer-3":
        return
    assert left["fetch_jobs"] >= 1
    interrupted = fault_result("interrupted")
    assert interrupted["watched"]["phase"] == "fetching"
    assert "fetch" in rerun["earlier"]  # the earlier run's fetch job, stopped mid-copy
    lifted = fault_result("lifted")  # the uplinks were held until this run's copy started
    assert lifted["watched"]["run_id"] != interrupted["watched"]["run_id"]
    result = rerun["fetch"]
    assert not result.get("failed")
    assert result["bytes_total"] == fixture()["total_size"]
    assert result["fetched"]  # what the interrupted job had not copied yet


def test_check_mode_shows_what_a_run_would_copy(host: Any) -> None:
    """side_effect.yml: a check-mode run with hf-peer-3's copy removed."""
    if host.backend.get_hostname() != "hf-peer-3":
        return
    report = json.loads((STATE / "faults" / "check.json").read_text())
    shown = next(
        task["hosts"]["hf-peer-3"]["msg"]
        for play in report["plays"]
        for task in play["tasks"]
        if task["task"]["name"].endswith("Show what was fetched")
    )
    files = fixture()["files"]
    gb = "%.2f" % (fixture()["total_size"] / 1e9)
    assert f"would fetch {len(files)} file(s), {gb} GB from the fleet" in shown, shown


def test_the_rsync_daemons_are_gone(host: Any) -> None:
    assert not host.service("sparkfleet-hf_model-rsyncd").is_running
    assert not host.file("/run/sparkfleet-hf_model-rsyncd.conf").exists
    assert ":8730 " not in host.check_output("ss -ltn")
    assert not host.file("/etc/sparkfleet/hf_model.token").exists
