"""The peer fetch of hf_model_fetch (source=peer) against real rsync daemons on loopback.

Each "host" is a model directory served by its own read-only rsync daemon on its own loopback
address (127.0.0.2, .3, ...; the same port, as on a fleet), configured as the role's template
configures it (the file module and the status module). The seed's directory is filled by the
module itself from this file's stand-in Hub. The evidence is the bytes on disk (hashed here), and
what the module reports per source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import deliberate_skip
from tests.ports import free_port
from tests.standins.hf_hub_standin.runner import StandinHub, build_fixture
from tests.unit.test_hf_model_fetch import (
    MODULE,
    REPO,
    args_file,
    parse_result,
    run_module,
    sha256,
)

pytestmark = pytest.mark.nolab

SHARD_SIZE = 700_000
RUN_ID = "unit-run-1"


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hf_model_fetch_under_test", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Host:
    """A model directory, its progress directory, and (while serving) its rsync daemon."""

    name: str
    address: str
    root: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def status(self) -> Path:
        return self.root / "run"

    def serve(self, port: int, allow: str = "127.0.0.0/8") -> None:
        """Serve as the role's daemon does, admitting the addresses in ``allow``."""
        self.model.mkdir(parents=True, exist_ok=True)
        self.status.mkdir(parents=True, exist_ok=True)
        conf = self.root / "rsyncd.conf"
        conf.write_text(
            "use chroot = no\nuid = root\ngid = root\nreverse lookup = no\n"
            f"pid file = {self.root / 'rsyncd.pid'}\n"
            f"[hf_model]\n path = {self.model}\n read only = yes\n list = no\n"
            f" hosts allow = {allow}\n hosts deny = *\n exclude = /.cache/\n"
            f" max connections = 8\n lock file = {self.root / 'rsyncd.lock'}\n"
            f"[hf_model_status]\n path = {self.status}\n read only = yes\n list = no\n"
            f" hosts allow = {allow}\n hosts deny = *\n"
            " include = /hf_model-progress.json\n exclude = *\n"
        )
        self.proc = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}",
             f"--address={self.address}", f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as sock:
                if sock.connect_ex((self.address, port)) == 0:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rsync daemon of {self.name} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def say(self, phase: str, message: str | None = None, run_id: str = RUN_ID) -> None:
        """Write this host's progress file as the fetch module does."""
        self.status.mkdir(parents=True, exist_ok=True)
        (self.status / "hf_model-progress.json").write_text(
            json.dumps(
                {"phase": phase, "message": message, "run_id": run_id, "updated_at": time.time()}
            )
        )


@dataclass
class Fleet:
    hub: StandinHub
    meta: dict[str, Any]
    seed_copy: Path
    port: int


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if shutil.which("rsync") is None:
        deliberate_skip("no-rsync")
    work = tmp_path_factory.mktemp("hf_model_peer")
    meta = build_fixture(work / "repo", SHARD_SIZE)
    hub = StandinHub({REPO: work / "repo"}, work).start()
    try:
        seed_copy = work / "seed-copy"
        args = {"repo_id": REPO, "local_dir": str(seed_copy), "endpoint": hub.url,
                "disk_margin_gb": 0}  # fmt: skip
        fetched = run_module(args, work)
        assert not fetched.get("failed"), fetched.get("msg")
        yield Fleet(hub, meta, seed_copy, free_port())
    finally:
        hub.stop()


@pytest.fixture
def hosts(fleet: Fleet, tmp_path: Path) -> Iterator[list[Host]]:
    made = [Host(n, f"127.0.0.{i + 2}", tmp_path / n) for i, n in enumerate(["seed", "a", "b"])]
    try:
        yield made
    finally:
        for host in made:
            host.stop()


def fill(fleet: Fleet, host: Host) -> None:
    """A complete copy of the model, manifest included, in the host's directory."""
    shutil.copytree(fleet.seed_copy, host.model, ignore=shutil.ignore_patterns(".cache"))


def corrupt(host: Host, path: str) -> None:
    """Flip one byte in the middle of a file, keeping its size."""
    target = host.model / path
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def manifest(fleet: Fleet) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((fleet.seed_copy / ".sparkfleet-manifest.json").read_text())
    return loaded


def peer_args(fleet: Fleet, hosts: list[Host], me: Host, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "repo_id": REPO,
        "local_dir": str(me.model),
        "source": "peer",
        "manifest": manifest(fleet),
        "fleet": [{"name": h.name, "address": h.address} for h in hosts],
        "host_name": me.name,
        "peer_port": fleet.port,
        "run_id": RUN_ID,
        "disk_margin_gb": 0,
        "stall_timeout_s": 10,
        "progress_file": str(me.status / "hf_model-progress.json"),
    }
    args.update(extra)
    return args


def start_module(args: dict[str, Any], where: Path) -> subprocess.Popen[str]:
    """The module running in the background, as an async job runs it."""
    return subprocess.Popen(
        [sys.executable, str(MODULE), str(args_file(args, where))],
        stdout=subprocess.PIPE,
        text=True,
    )


def assert_verified(fleet: Fleet, host: Host) -> None:
    for entry in fleet.meta["files"]:
        assert sha256(host.model / entry["path"]) == entry["sha256"], entry["path"]
    recorded = json.loads((host.model / ".sparkfleet-manifest.json").read_text())
    assert recorded["commit"] == fleet.meta["sha"]
    staged = host.model / ".cache" / "sparkfleet" / "peer"
    assert not [p for p in staged.rglob("*") if p.is_file()]


def shards(fleet: Fleet) -> list[str]:
    return sorted(f["path"] for f in fleet.meta["files"] if f["path"].endswith(".safetensors"))


# -- tests --------------------------------------------------------------------------------------


def test_the_copies_follow_a_tree_rooted_at_the_seed() -> None:
    module = load_module()
    fleet = [{"name": f"h{i}", "address": f"10.0.0.{i}"} for i in range(7)]

    def names(me: str, fanout: int) -> list[str]:
        order: list[dict[str, str]] = module.peer_order(fleet, me, fanout)
        return [h["name"] for h in order]

    # fanout 2: h0 -> h1, h2; h1 -> h3, h4; h2 -> h5, h6
    assert names("h1", 2) == ["h0", "h2", "h3", "h4", "h5", "h6"]
    assert names("h4", 2) == ["h1", "h0", "h2", "h3", "h5", "h6"]
    assert names("h6", 2) == ["h2", "h0", "h1", "h3", "h4", "h5"]
    # fanout 1: a chain
    assert names("h3", 1) == ["h2", "h1", "h0", "h4", "h5", "h6"]
    listing: dict[str, tuple[int, str]] = module.parse_listing(
        "drwxr-xr-x          4,096 2026/11/30 12:00:00 .\n"
        "-rw-r--r--      2,000,000 2026/11/30 12:00:01 model-00001-of-00020.safetensors\n"
        "-rw-r--r--            811 2026/11/30 12:00:02 sub dir/config.json\n"
    )
    assert listing == {
        "model-00001-of-00020.safetensors": (2_000_000, "2026/11/30 12:00:01"),
        "sub dir/config.json": (811, "2026/11/30 12:00:02"),
    }


def test_a_peer_copies_from_its_parent_and_refuses_a_corrupt_copy(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    seed, parent, me = hosts
    fill(fleet, seed)
    fill(fleet, parent)
    bad = shards(fleet)[3]
    corrupt(parent, bad)
    seed.say("done")
    for host in (seed, parent):
        host.serve(fleet.port)
    fleet.hub.clean()
    result = run_module(peer_args(fleet, hosts, me, fanout=1), tmp_path)
    assert not result.get("failed"), result.get("msg")
    assert_verified(fleet, me)
    assert result["peer_rejected"] == [
        {"path": bad, "source": "a", "reason": "size or hash differs from the manifest"}
    ]
    assert result["refetched"] == [bad]
    size = {f["path"]: int(f["size"]) for f in fleet.meta["files"]}
    total = sum(size.values())
    # everything from the parent (the bad copy too), the one file again from the seed
    assert result["peer_bytes"] == {"a": total, "seed": size[bad]}
    assert fleet.hub.stats()["bytes_served"] == 0


def test_a_host_that_does_not_answer_is_passed_over(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    seed, parent, me = hosts
    fill(fleet, seed)
    seed.say("done")
    seed.serve(fleet.port)  # the parent serves nothing: nobody listens on its address
    result = run_module(peer_args(fleet, hosts, me, fanout=1), tmp_path)
    assert not result.get("failed"), result.get("msg")
    assert_verified(fleet, me)
    assert list(result["peer_bytes"]) == ["seed"]
    assert parent.name not in result["peer_bytes"]


def test_a_file_arriving_late_on_the_seed_is_copied_when_it_arrives(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    seed, _, me = hosts
    fill(fleet, seed)
    late = shards(fleet)[0]
    held = tmp_path / "held"
    (seed.model / late).rename(held)
    seed.say("fetching")
    seed.serve(fleet.port)
    peer = start_module(peer_args(fleet, hosts, me, stall_timeout_s=5), tmp_path)
    for _ in range(10):  # the seed "fetching" the last file, its progress rewritten each second
        time.sleep(1)
        seed.say("fetching")
    assert peer.poll() is None  # still waiting for the file: the seed lives, past the stall time
    held.rename(seed.model / late)
    seed.say("done")
    out, _ = peer.communicate(timeout=120)
    result = parse_result(out)
    assert not result.get("failed"), result.get("msg")
    assert_verified(fleet, me)


def test_the_peer_fails_when_the_seed_failed(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    seed, _, me = hosts
    seed.say("failed", "the Hub at http://hub answered HTTP 500")
    seed.serve(fleet.port)
    result = run_module(peer_args(fleet, hosts, me), tmp_path)
    assert result["failed"]
    assert result["msg"] == (
        "the seed seed failed to fetch the model: the Hub at http://hub answered HTTP 500"
    )


def test_the_peer_fails_when_the_seeds_progress_stops_changing(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    """The seed's fetch process died (kill -9): its progress file says "fetching" forever."""
    seed, _, me = hosts
    seed.say("fetching")
    seed.serve(fleet.port)
    peer = start_module(peer_args(fleet, hosts, me, stall_timeout_s=5), tmp_path)
    out, _ = peer.communicate(timeout=120)
    result = parse_result(out)
    assert result["failed"]
    assert result["msg"].startswith(
        "the seed seed stopped updating its progress file in phase fetching (last written "
    )
    assert "more than hf_model_stall_timeout_s (5 s); its fetch process is gone" in result["msg"]


def test_another_runs_status_is_ignored_and_a_done_seed_without_a_good_copy_fails(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    seed, _, me = hosts
    fill(fleet, seed)
    bad = shards(fleet)[1]
    corrupt(seed, bad)
    seed.say("failed", "an earlier run", run_id="another-run")
    seed.serve(fleet.port)
    peer = start_module(peer_args(fleet, hosts, me), tmp_path)
    time.sleep(4)
    assert peer.poll() is None  # another run's failure is not this one's
    seed.say("done")
    out, _ = peer.communicate(timeout=120)
    result = parse_result(out)
    assert result["failed"]
    assert result["msg"] == (
        f"the seed seed is done, but no host of the fleet offers a copy of {bad} that matches "
        f"the manifest; refused: seed ({bad})"
    )
    good = [p for p in shards(fleet) if p != bad]
    for path in good:  # what could be had is in place, verified
        assert (me.model / path).is_file()
    digest = hashlib.sha256((me.model / good[0]).read_bytes()).hexdigest()
    assert digest == next(f["sha256"] for f in fleet.meta["files"] if f["path"] == good[0])


def test_a_peer_every_host_refuses_fails_naming_the_refusal(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    """The daemons admit hosts by address (hf_model_peer_address): a host that connects from
    another address is refused ("@ERROR: Unknown module", rsync's answer for a `list = no`
    module to a host it does not admit, exit 5, as for "max connections reached"). That is no
    busy host to wait for: the peer fails after hf_model_stall_timeout_s, saying why."""
    seed, parent, me = hosts
    fill(fleet, seed)
    seed.say("fetching")
    for host in (seed, parent):
        host.serve(fleet.port, allow="127.0.0.99")  # not the address this host connects from
    peer = start_module(peer_args(fleet, hosts, me, stall_timeout_s=5), tmp_path)
    try:
        out, _ = peer.communicate(timeout=120)
    finally:
        peer.kill()
    result = parse_result(out)
    assert result["failed"]
    assert result["msg"].startswith("no host of the fleet (seed, a) answered for 5 s"), result
    refused = "@ERROR: Unknown module 'hf_model'"
    assert f"refused this host: seed ({refused}), a ({refused})" in result["msg"], result
    assert "hf_model_peer_address" in result["msg"], result
    assert not list(me.model.glob("*.safetensors"))


def test_a_pair_member_copies_from_its_partner_alone_and_names_it(
    fleet: Fleet, hosts: list[Host], tmp_path: Path
) -> None:
    """upstream=pair (the role's plan for a pair's follower): the fleet is the partner and this
    host; the partner stands for the seed (its progress, its failure), named as the partner."""
    seed, partner, me = hosts
    fill(fleet, seed)
    fill(fleet, partner)
    seed.say("done")
    partner.say("done")
    seed.serve(fleet.port)
    partner.serve(fleet.port)
    pair = [partner, me]
    result = run_module(peer_args(fleet, pair, me, upstream="pair"), tmp_path)
    assert not result.get("failed"), result.get("msg")
    assert_verified(fleet, me)
    total = sum(int(f["size"]) for f in fleet.meta["files"])
    assert result["peer_bytes"] == {"a": total}  # the seed serves too, but is not its source

    for host in (me, partner):  # nothing here, nothing to copy from the partner
        shutil.rmtree(host.model)
        host.model.mkdir()
    partner.say("failed", "the seed seed failed to fetch the model: HTTP 500")
    result = run_module(peer_args(fleet, pair, me, upstream="pair"), tmp_path)
    assert result["failed"]
    assert result["msg"] == (
        "its pair partner a failed to fetch the model: the seed seed failed to fetch the "
        "model: HTTP 500"
    )
