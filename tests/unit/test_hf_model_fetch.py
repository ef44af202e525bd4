"""Tests of the hf_model role's module (plugins/modules/hf_model_fetch.py).

The module runs as Ansible runs it on a host: a child process of the project's Python (which has
ansible-core and huggingface_hub, as the role's venv does) reading ``{"ANSIBLE_MODULE_ARGS": ...}``
from a file. It fetches from this file's own stand-in Hub on 127.0.0.1, whose fault switches
(dropped connections, a corrupted byte, a slow link, tokens) and byte counters are the evidence.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import deliberate_skip
from tests.standins.hf_hub_standin.fixture import derive_commit
from tests.standins.hf_hub_standin.runner import StandinHub, build_fixture

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "plugins" / "modules" / "hf_model_fetch.py"
REPO = "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
BIG_REPO = "standin/one-big-shard"
BIG_SHARD = "model-00001-of-00001.safetensors"
SHARD_SIZE = 1_500_000  # 20 shards: a ~30 MB repo
BIG_SHARD_SIZE = 24 * 1024 * 1024
MANIFEST = ".sparkfleet-manifest.json"


@dataclass
class Fixture:
    """The running stand-in Hub and the repos it serves (repo.json of each)."""

    hub: StandinHub
    meta: dict[str, Any]
    big_meta: dict[str, Any]

    def sizes(self, meta: dict[str, Any] | None = None) -> dict[str, int]:
        return {f["path"]: int(f["size"]) for f in (meta or self.meta)["files"]}

    def total(self, meta: dict[str, Any] | None = None) -> int:
        return sum(self.sizes(meta).values())

    def sha256(self, path: str, meta: dict[str, Any] | None = None) -> str:
        return str(next(f for f in (meta or self.meta)["files"] if f["path"] == path)["sha256"])


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    work = tmp_path_factory.mktemp("hf_model_fetch")
    meta = build_fixture(work / "repo", SHARD_SIZE)
    big_meta = build_fixture(work / "big", BIG_SHARD_SIZE, shards=1, seed=1)
    hub = StandinHub({REPO: work / "repo", BIG_REPO: work / "big"}, work).start()
    try:
        yield Fixture(hub, meta, big_meta)
    finally:
        hub.stop()


@pytest.fixture(autouse=True)
def _clean_hub(request: pytest.FixtureRequest) -> None:
    if "fx" in request.fixturenames:
        fixture: Fixture = request.getfixturevalue("fx")
        fixture.hub.clean()


def module_args(fx: Fixture, local_dir: Path, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "repo_id": REPO,
        "local_dir": str(local_dir),
        "endpoint": fx.hub.url,
        "disk_margin_gb": 0,
        "retries": 3,
        "progress_file": str(local_dir.parent / f"{local_dir.name}-progress.json"),
    }
    args.update(extra)
    return args


def args_file(args: dict[str, Any], where: Path) -> Path:
    path = where / f"args-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    return path


def parse_result(stdout: str) -> dict[str, Any]:
    line = [ln for ln in stdout.splitlines() if ln.startswith("{")][-1]
    result: dict[str, Any] = json.loads(line)
    return result


def run_module(
    args: dict[str, Any], where: Path, timeout: float = 120, prefix: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the module once as Ansible would (after ``prefix``); its JSON result (plus the raw
    stdout)."""
    proc = subprocess.run(
        [*prefix, sys.executable, str(MODULE), str(args_file(args, where))],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("HF_")},
    )
    result = parse_result(proc.stdout)
    result["_stdout"] = proc.stdout + proc.stderr
    assert proc.returncode == (1 if result.get("failed") else 0), proc.stderr
    return result


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assert_complete(fx: Fixture, local_dir: Path, meta: dict[str, Any] | None = None) -> None:
    meta = meta or fx.meta
    for entry in meta["files"]:
        path = local_dir / entry["path"]
        assert path.stat().st_size == entry["size"], entry["path"]
        assert sha256(path) == entry["sha256"], entry["path"]
    manifest = json.loads((local_dir / MANIFEST).read_text())
    assert manifest["commit"] == meta["sha"]
    assert set(manifest["files"]) == {f["path"] for f in meta["files"]}
    parts = local_dir / ".cache" / "sparkfleet" / "parts"
    assert not [p for p in parts.rglob("*") if p.is_file()]


def bytes_on_disk(fx: Fixture, target: Path) -> int:
    """Bytes of the repo's files under target, in place or as partial files."""
    parts = target / ".cache" / "sparkfleet" / "parts"
    total = 0
    for path in fx.sizes():
        for candidate in (target / path, parts / f"{path}.part"):
            if candidate.exists():
                total += candidate.stat().st_size
    return total


def served(fx: Fixture) -> dict[str, int]:
    files: dict[str, int] = fx.hub.stats()["files"]
    return files


# -- tests --------------------------------------------------------------------------------------


def test_fetch_verifies_records_and_a_rerun_is_a_no_op(fx: Fixture, tmp_path: Path) -> None:
    target = tmp_path / "model"
    first = run_module(module_args(fx, target), tmp_path)
    assert first["changed"] and not first.get("failed"), first.get("msg", first)
    assert sorted(first["fetched"]) == sorted(fx.sizes())
    assert first["commit"] == fx.meta["sha"]
    assert first["bytes_fetched"] == fx.total() == first["bytes_total"]
    assert_complete(fx, target)
    assert served(fx) == fx.sizes()  # every file exactly once
    progress = json.loads((tmp_path / "model-progress.json").read_text())
    assert progress["phase"] == "done"
    assert progress["bytes_done"] == progress["bytes_total"] == fx.total()
    assert progress["schema"] == "sparkfleet/hf_model-progress/1"

    fx.hub.clean()
    again = run_module(module_args(fx, target), tmp_path)
    assert again["changed"] is False and again["fetched"] == []
    stats = fx.hub.stats()
    assert stats["bytes_served"] == 0
    assert stats["requests"] == 1  # the branch is resolved to its commit, nothing else

    fx.hub.clean()
    pinned = run_module(module_args(fx, target, revision=fx.meta["sha"]), tmp_path)
    assert pinned["changed"] is False
    assert fx.hub.stats()["requests"] == 0  # a recorded commit needs no Hub at all


def test_check_mode_reports_and_writes_nothing(fx: Fixture, tmp_path: Path) -> None:
    target = tmp_path / "model"
    result = run_module(module_args(fx, target, _ansible_check_mode=True), tmp_path)
    assert result["changed"] and sorted(result["fetched"]) == sorted(fx.sizes())
    assert result["bytes_to_fetch"] == fx.total()
    assert not target.exists()
    assert fx.hub.stats()["bytes_served"] == 0


def test_connection_dropped_mid_file_continues_with_range(fx: Fixture, tmp_path: Path) -> None:
    drop_at = 5 * 1024 * 1024 + 12345
    fx.hub.faults(drop_after_bytes=drop_at, drop_count=1)
    target = tmp_path / "model"
    result = run_module(module_args(fx, target, repo_id=BIG_REPO), tmp_path)
    assert result["changed"] and not result.get("failed"), result
    assert_complete(fx, target, fx.big_meta)
    size = fx.sizes(fx.big_meta)[BIG_SHARD]
    downloads = [d for d in fx.hub.stats()["downloads"] if d["path"] == BIG_SHARD]
    assert [(d["dropped"], d["range"]) for d in downloads] == [
        (True, None),
        (False, f"bytes={drop_at}-"),
    ]
    assert served(fx)[BIG_SHARD] == size  # not one byte fetched twice


def test_connection_dropped_every_time_fails_clearly(fx: Fixture, tmp_path: Path) -> None:
    fx.hub.faults(drop_after_bytes=1000)
    target = tmp_path / "model"
    result = run_module(module_args(fx, target, repo_id=BIG_REPO, retries=2), tmp_path)
    assert result["failed"]
    assert re.match(
        rf"download of \S+ from {fx.hub.url} stopped at \d+ of \d+ bytes after 2 attempts "
        r"without progress \(last error: RemoteProtocolError: .*\); run again to continue",
        result["msg"],
    ), result["msg"]
    assert "Traceback" not in result["_stdout"]


def test_corrupted_byte_in_transit_refetches_that_file_alone(fx: Fixture, tmp_path: Path) -> None:
    bad = "model-00007-of-00020.safetensors"
    fx.hub.faults(corrupt_once=bad)
    target = tmp_path / "model"
    result = run_module(module_args(fx, target), tmp_path)
    assert result["changed"] and not result.get("failed"), result
    assert result["refetched"] == [bad]
    assert_complete(fx, target)
    expected = fx.sizes()
    expected[bad] *= 2
    assert served(fx) == expected
    corrupted = [d["path"] for d in fx.hub.stats()["downloads"] if d["corrupted"]]
    assert corrupted == [bad]


def test_slow_server_shows_progress_and_completes(fx: Fixture, tmp_path: Path) -> None:
    fx.hub.faults(rate_limit_bps=1_500_000)  # about 3 s for the repo with 8 transfers at a time
    target = tmp_path / "model"
    progress_file = tmp_path / "model-progress.json"
    proc = subprocess.Popen(
        [sys.executable, str(MODULE), str(args_file(module_args(fx, target), tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    snapshots: list[dict[str, Any]] = []
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            snapshots.append(json.loads(progress_file.read_text()))
        time.sleep(0.2)
    stdout, _ = proc.communicate()
    result = parse_result(stdout)
    assert result["changed"] and not result.get("failed"), result
    assert_complete(fx, target)
    moving = [
        s
        for s in snapshots
        if s["phase"] == "fetching" and 0 < s["bytes_done"] < s["bytes_total"] and s["rate_bps"] > 0
    ]
    assert len(moving) >= 3, snapshots[-3:]
    assert all(s["bytes_total"] == fx.total() for s in moving)
    done = [s["bytes_done"] for s in moving]
    assert done == sorted(done)
    assert any(s["active"] for s in moving) and any(s["eta_s"] for s in moving)


def test_wrong_token_is_a_clear_401_and_never_shown(fx: Fixture, tmp_path: Path) -> None:
    fx.hub.faults(require_token="right-token-5c1f")
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token-9d2e\n")
    token_file.chmod(0o600)
    target = tmp_path / "model"
    result = run_module(module_args(fx, target, token_file=str(token_file)), tmp_path)
    assert result["failed"] and result["hub_status"] == 401
    assert "rejected hf_model_token (HTTP 401" in result["msg"]
    assert "wrong-token-9d2e" not in result["_stdout"]
    assert "wrong-token-9d2e" not in (tmp_path / "model-progress.json").read_text()

    missing = run_module(module_args(fx, target), tmp_path)
    assert missing["failed"] and missing["hub_status"] == 401  # a private repo, anonymously
    assert "not found on" in missing["msg"] and "(HTTP 401;" in missing["msg"]
    assert "set hf_model_token" in missing["msg"]

    token_file.write_text("right-token-5c1f\n")
    right = run_module(module_args(fx, target, token_file=str(token_file)), tmp_path)
    assert right["changed"] and not right.get("failed"), right
    assert "right-token-5c1f" not in right["_stdout"]
    assert_complete(fx, target)


def test_unknown_repo_and_revision_are_clear_errors(fx: Fixture, tmp_path: Path) -> None:
    target = tmp_path / "model"
    repo = run_module(module_args(fx, target, repo_id="nobody/nothing"), tmp_path)
    assert repo["failed"] and repo["hub_status"] == 401  # anonymous: 401, as huggingface.co
    assert "hf_model_repo_id=nobody/nothing not found" in repo["msg"]
    assert "(HTTP 401;" in repo["msg"]
    revision = run_module(module_args(fx, target, revision="v9.9"), tmp_path)
    assert revision["failed"] and "hf_model_revision=v9.9 not found" in revision["msg"]
    fx.hub.faults(status={"model-00003-of-00020.safetensors": 403})
    forbidden = run_module(module_args(fx, target), tmp_path)
    assert forbidden["failed"] and "HTTP 403" in forbidden["msg"]
    assert "Traceback" not in repo["_stdout"] + revision["_stdout"] + forbidden["_stdout"]


def test_sigkilled_run_is_continued_by_the_next(fx: Fixture, tmp_path: Path) -> None:
    total = fx.total()
    fx.hub.faults(rate_limit_bps=2_000_000)
    target = tmp_path / "model"
    proc = subprocess.Popen(
        [sys.executable, str(MODULE), str(args_file(module_args(fx, target), tmp_path))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while fx.hub.stats()["bytes_served"] < total // 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    # Pause the server (1 byte/s) and let the client write what the kernel's socket buffers still
    # hold, so that the kill cuts the files where the client has them: bytes buffered in the
    # kernel at a kill are lost to any client and would only blur the measurement.
    fx.hub.faults(rate_limit_bps=1)
    while fx.hub.stats()["bytes_served"] - bytes_on_disk(fx, target) > 8 * 8192:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = target / ".cache" / "sparkfleet" / "parts"
    cut = {str(p.relative_to(parts))[: -len(".part")] for p in parts.rglob("*.part")}
    resumable = {p for p in cut if (parts / f"{p}.part").stat().st_size > 0}
    assert resumable  # files cut mid-way
    # The server's threads for the dead connections end at their next writes; only then may the
    # pause be lifted (a full-speed write into a dead socket would be counted as served).
    while not cut <= {d["path"] for d in fx.hub.stats()["downloads"]}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    killed_at = fx.hub.stats()["bytes_served"]
    # killed mid-way: at least the half waited for was served, not all of it (files were cut)
    assert total // 2 <= killed_at < total
    fx.hub.control("DELETE", "faults")

    result = run_module(module_args(fx, target), tmp_path)
    assert result["changed"] and not result.get("failed"), result
    assert result["bytes_to_fetch"] < total - killed_at + total * 0.05
    assert_complete(fx, target)
    ranged = {d["path"] for d in fx.hub.stats()["downloads"] if d["range"]}
    assert ranged == resumable  # each partial file continued with Range, not restarted
    stats = fx.hub.stats()
    log = [(d["path"], d["range"], d["sent"]) for d in stats["downloads"]]
    assert stats["bytes_served"] <= 1.05 * total, json.dumps([killed_at, result["refetched"], log])


def test_a_second_run_waits_for_the_first_and_fetches_nothing(fx: Fixture, tmp_path: Path) -> None:
    fx.hub.faults(rate_limit_bps=4_000_000)
    target = tmp_path / "model"
    first = subprocess.Popen(
        [sys.executable, str(MODULE), str(args_file(module_args(fx, target), tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
    )
    while fx.hub.stats()["bytes_served"] == 0:
        assert first.poll() is None
        time.sleep(0.05)
    second = run_module(module_args(fx, target), tmp_path)
    assert parse_result(first.communicate()[0])["changed"]
    # the directory's lock was taken last by the second run (it writes its pid there)
    lock = target / ".cache" / "sparkfleet" / "lock"
    assert int(lock.read_text()) not in (0, first.pid)
    assert second["changed"] is False and second["fetched"] == []
    assert served(fx) == fx.sizes()  # each file once, for both runs
    assert_complete(fx, target)


def in_a_small_tmpfs(mount: Path) -> list[str]:
    """A command prefix: the rest runs in a user and mount namespace of its own (no root
    needed where unprivileged user namespaces are allowed), with an 8 MB tmpfs on ``mount``."""
    script = 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"'
    unshare = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    probe = subprocess.run(
        [*unshare, "sh", "-c", script, str(mount), "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        deliberate_skip("no-mount-privilege", probe.stderr.strip()[:300])
    return [*unshare, "sh", "-c", script, str(mount)]


def test_disk_too_small_fails_before_downloading(fx: Fixture, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    args = module_args(fx, mount / "model", disk_margin_gb=0.001)
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
        try:
            result = run_module(args, tmp_path)
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    else:
        result = run_module(args, tmp_path, prefix=in_a_small_tmpfs(mount))
    assert result["failed"]
    needed = (fx.total() + 1_000_000) / 1e9
    assert f"{needed:.2f} GB needed" in result["msg"]
    assert "GB free" in result["msg"] and str(mount / "model") in result["msg"]
    assert fx.hub.stats()["bytes_served"] == 0


def test_sha256_verify_finds_a_corrupted_file_and_refetches_it_alone(
    fx: Fixture, tmp_path: Path
) -> None:
    target = tmp_path / "model"
    assert run_module(module_args(fx, target), tmp_path)["changed"]
    bad = "model-00011-of-00020.safetensors"
    with open(target / bad, "r+b") as fh:
        fh.seek(fx.sizes()[bad] // 3)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))
    fx.hub.clean()
    by_size = run_module(module_args(fx, target, verify="size"), tmp_path)
    assert by_size["changed"] is False  # same size: only a hash can tell
    by_hash = run_module(module_args(fx, target, verify="sha256"), tmp_path)
    assert by_hash["changed"] and by_hash["fetched"] == [bad]
    assert served(fx) == {bad: fx.sizes()[bad]}
    assert_complete(fx, target)
    fx.hub.clean()
    clean = run_module(module_args(fx, target, verify="sha256"), tmp_path)
    assert clean["changed"] is False and fx.hub.stats()["bytes_served"] == 0


def test_files_dropped_by_a_new_commit_are_removed(fx: Fixture, tmp_path: Path) -> None:
    target = tmp_path / "model"
    assert run_module(module_args(fx, target), tmp_path)["changed"]
    manifest_path = target / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["commit"] = "0" * 40
    manifest["files"]["old-shard.safetensors"] = {"size": 3, "sha256": "x", "git_oid": None}
    manifest_path.write_text(json.dumps(manifest))
    (target / "old-shard.safetensors").write_bytes(b"old")
    (target / "notes.txt").write_text("kept: not the role's file")
    fx.hub.clean()
    result = run_module(module_args(fx, target), tmp_path)
    assert result["changed"] and result["removed"] == ["old-shard.safetensors"]
    assert result["fetched"] == []
    assert not (target / "old-shard.safetensors").exists() and (target / "notes.txt").exists()
    assert_complete(fx, target)
    assert fx.hub.stats()["bytes_served"] == 0


def test_xet_transfer_uses_huggingface_hubs_downloader(fx: Fixture, tmp_path: Path) -> None:
    bad = "model-00002-of-00020.safetensors"
    fx.hub.faults(corrupt_once=bad)
    target = tmp_path / "model"
    result = run_module(module_args(fx, target, transfer="xet"), tmp_path)
    assert result["changed"] and result["refetched"] == [bad], result
    assert_complete(fx, target)
    fx.hub.clean()
    assert run_module(module_args(fx, target, transfer="xet"), tmp_path)["changed"] is False


def test_bad_parameters_name_the_value_and_range(fx: Fixture, tmp_path: Path) -> None:
    result = run_module(module_args(fx, tmp_path / "m", workers=0), tmp_path)
    assert result["failed"] and result["msg"] == "workers=0 is out of range: 1-64"
    peer = run_module(module_args(fx, tmp_path / "m", source="peer"), tmp_path)
    assert peer["failed"] and "needs the seed's manifest" in peer["msg"]


# -- against a Hub that moves, limits, gates -----------------------------------------------------


def file_bytes(fx: Fixture, path: str) -> bytes:
    return (fx.hub.repos[REPO] / "files" / path).read_bytes()


def test_main_moved_with_same_size_changes_fetches_the_new_bytes(
    fx: Fixture, tmp_path: Path
) -> None:
    target = tmp_path / "model"
    assert run_module(module_args(fx, target), tmp_path)["commit"] == fx.meta["sha"]
    shard = "model-00009-of-00020.safetensors"
    config = file_bytes(fx, "config.json")
    new_config = config.replace(b"62", b"63", 1)
    old_shard = file_bytes(fx, shard)
    new_shard = old_shard[:1000] + bytes([old_shard[1000] ^ 0xFF]) + old_shard[1001:]
    assert len(new_config) == len(config) and new_config != config
    moved = derive_commit(
        fx.hub.repos[REPO], tmp_path / "next", {"config.json": new_config, shard: new_shard}
    )
    fx.hub.control("POST", "commit", {"repo": REPO, "dir": str(tmp_path / "next")})
    try:
        fx.hub.clean()
        result = run_module(module_args(fx, target), tmp_path)
        assert result["changed"] and result["commit"] == moved["sha"], result.get("msg")
        assert sorted(result["fetched"]) == ["config.json", shard]
        # only the files whose hash changed were read, not the 25 unchanged ones
        assert sorted(result["hashed"]) == ["config.json", shard]
        assert served(fx) == {"config.json": len(config), shard: len(old_shard)}
        assert (target / "config.json").read_bytes() == new_config
        assert sha256(target / shard) == hashlib.sha256(new_shard).hexdigest()
        assert_complete(fx, target, moved)  # every file's bytes match the new manifest
        fx.hub.clean()
        again = run_module(module_args(fx, target), tmp_path)
        assert again["changed"] is False and again["hashed"] == []
    finally:
        fx.hub.control("POST", "commit", {"repo": REPO, "dir": str(fx.hub.repos[REPO])})


def test_429s_with_retry_after_are_waited_out_as_asked(fx: Fixture, tmp_path: Path) -> None:
    shard = "model-00004-of-00020.safetensors"
    fx.hub.faults(
        throttle={
            "*/revision/*": {"count": 3, "retry_after": [1, 2, 1]},
            shard: {"count": 3, "retry_after": [2, 1, 1]},
        }
    )
    target = tmp_path / "model"
    result = run_module(module_args(fx, target, retries=2), tmp_path)
    assert result["changed"] and not result.get("failed"), result.get("msg")
    assert_complete(fx, target)
    waits = [(w["what"], w["status"], w["asked_s"], w["slept_s"]) for w in result["hub_waits"]]
    assert waits == [
        ("the revision lookup", 429, 1, 1.0),
        ("the revision lookup", 429, 2, 2.0),
        ("the revision lookup", 429, 1, 1.0),
        (f"{shard} (at byte 0)", 429, 2, 2.0),
        (f"{shard} (at byte 0)", 429, 1, 1.0),
        (f"{shard} (at byte 0)", 429, 1, 1.0),
    ]  # more 429s in a row than retries=2: a 429 is waited out, not counted as an attempt


def test_rate_limit_beyond_the_budget_names_what_to_do(fx: Fixture, tmp_path: Path) -> None:
    fx.hub.faults(throttle={"*/revision/*": {"count": 5, "retry_after": 120}})
    result = run_module(module_args(fx, tmp_path / "m", retry_budget_min=1), tmp_path)
    assert result["failed"] and "kept answering HTTP 429" in result["msg"]
    assert "hf_model_retry_budget_min=1" in result["msg"] and "hf_model_token" in result["msg"]
    assert "hf_model_source: peer" in result["msg"] and "mirror" in result["msg"]
    assert result["hub_waits"] == []  # 120 s asked does not fit in 1 min: no wait at all


def test_hf_download_dir_is_hashed_corrected_and_its_partial_continued(
    fx: Fixture, tmp_path: Path
) -> None:
    target = tmp_path / "model"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=fx.hub.url, HF_HOME=str(tmp_path / "hf-home"))
    hf = Path(sys.executable).parent / "hf"
    subprocess.run([str(hf), "download", REPO, "--local-dir", str(target)], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    bad, cut = "model-00013-of-00020.safetensors", "model-00017-of-00020.safetensors"
    with open(target / bad, "r+b") as fh:  # the wrong content at the right size (hf#3643)
        fh.seek(777)
        byte = fh.read(1)
        fh.seek(777)
        fh.write(bytes([byte[0] ^ 0x01]))
    # an `hf download` killed mid-file leaves <name hash>.<etag>.<id>.incomplete (hf#4412)
    from huggingface_hub._local_folder import get_local_download_paths

    half = fx.sizes()[cut] // 2
    incomplete = get_local_download_paths(target, cut).incomplete_path(fx.sha256(cut))
    partial = incomplete.with_name(f"{incomplete.stem}.0a1b2c3d.incomplete")
    partial.write_bytes(file_bytes(fx, cut)[:half])
    stray = incomplete.with_name(f"{incomplete.stem[:-64]}{'e' * 64}.0a1b2c3d.incomplete")
    stray.write_bytes(b"left by some older download")
    (target / cut).unlink()
    fx.hub.clean()
    result = run_module(module_args(fx, target), tmp_path)
    assert result["changed"] and not result.get("failed"), result.get("msg")
    assert sorted(result["hashed"]) == sorted(p for p in fx.sizes() if p != cut)
    assert sorted(result["fetched"]) == sorted([bad, cut])
    assert result["adopted_partials"] == [cut] and result["removed_partials"] == 1
    assert not partial.exists() and not stray.exists()
    downloads = {d["path"]: d for d in fx.hub.stats()["downloads"]}
    assert downloads[cut]["range"] == f"bytes={half}-"  # continued, not started over
    assert served(fx) == {bad: fx.sizes()[bad], cut: fx.sizes()[cut] - half}
    assert_complete(fx, target)


def test_416_and_200_to_a_range_and_an_expired_cdn_url(fx: Fixture, tmp_path: Path) -> None:
    drop_at = 5 * 1024 * 1024 + 4321
    fx.hub.faults(drop_after_bytes=drop_at, drop_count=1, range_416=1)
    target = tmp_path / "model"
    result = run_module(module_args(fx, target, repo_id=BIG_REPO), tmp_path)
    assert result["changed"] and not result.get("failed"), result.get("msg")
    downloads = fx.hub.stats()["downloads"]
    ranges = [(d["status"], d["range"]) for d in downloads if d["path"] == BIG_SHARD]
    # the 416 is one failed attempt: the next one continues at the same byte
    assert ranges == [(200, None), (206, f"bytes={drop_at}-")]
    assert [w["status"] for w in result["hub_waits"]] == [416]
    assert_complete(fx, target, fx.big_meta)

    fx.hub.clean()
    fx.hub.faults(drop_after_bytes=drop_at, drop_count=1, range_ignore="*")
    again = run_module(module_args(fx, tmp_path / "again", repo_id=BIG_REPO), tmp_path)
    assert again["changed"] and not again.get("failed"), again.get("msg")
    assert_complete(fx, tmp_path / "again", fx.big_meta)  # the whole file taken from byte 0

    fx.hub.clean()
    fx.hub.faults(cdn_url_ttl_s=-1.0)
    expired = run_module(module_args(fx, tmp_path / "expired", retries=2), tmp_path)
    assert expired["failed"] and "after 2 attempts" in expired["msg"]  # retried, fresh URLs
    assert "HTTP 403 from" in expired["msg"]
    assert "the server the Hub redirected to" in expired["msg"]
    assert "not a token problem" in expired["msg"] and "hf_model_token lacks" not in expired["msg"]


def test_gated_repo_in_both_transfers_gives_the_gated_message(fx: Fixture, tmp_path: Path) -> None:
    fx.hub.faults(gated={REPO: ["granted-7f3a"]}, tokens=["other-2b9c"])
    token_file = tmp_path / "token"
    token_file.write_text("other-2b9c\n")
    token_file.chmod(0o600)
    for transfer in ("http", "xet"):
        target = tmp_path / f"model-{transfer}"
        denied = run_module(
            module_args(fx, target, transfer=transfer, token_file=str(token_file)), tmp_path
        )
        assert denied["failed"] and denied["hub_status"] == 403, (transfer, denied["msg"])
        assert "no access to the gated repo" in denied["msg"], (transfer, denied["msg"])
        assert "accept the repo's terms" in denied["msg"] and "Force download" not in denied["msg"]
        anonymous = run_module(module_args(fx, target, transfer=transfer), tmp_path)
        assert anonymous["failed"] and anonymous["hub_status"] == 401, anonymous["msg"]
        assert "is gated or private (HTTP 401)" in anonymous["msg"]
        assert "other-2b9c" not in denied["_stdout"] + anonymous["_stdout"]


def test_xet_transfer_that_stalls_fails_within_the_stall_timer(fx: Fixture, tmp_path: Path) -> None:
    fx.hub.faults(rate_limit_bps=1)  # bytes trickle in far slower than anything moves
    result = run_module(
        module_args(fx, tmp_path / "m", repo_id=BIG_REPO, transfer="xet", stall_timeout_s=5),
        tmp_path,
    )
    assert result["failed"] and "no byte of" in result["msg"], result["msg"]
    assert "hf_model_stall_timeout_s" in result["msg"] and "xet-core#883" in result["msg"]


def test_proxy_and_ca_settings_are_checked(fx: Fixture, tmp_path: Path) -> None:
    with_password = module_args(fx, tmp_path / "m", proxy="http://u:pw-91@proxy:3128")
    secret = run_module(with_password, tmp_path)
    assert secret["failed"] and "without credentials" in secret["msg"]
    assert "pw-91" not in secret["msg"]
    ca = run_module(module_args(fx, tmp_path / "m", ca_bundle=str(tmp_path / "none.pem")), tmp_path)
    assert ca["failed"] and "is not a file on this host" in ca["msg"]
    # a proxy that is not there: the Hub is reached through it, or not at all
    proxied = run_module(
        module_args(fx, tmp_path / "m", proxy="http://127.0.0.1:9", retry_budget_min=1, retries=1),
        tmp_path,
    )
    assert proxied["failed"] and "ConnectError" in proxied["msg"], proxied["msg"]
