"""A pair of simulated Sparks fetches the model once: ``hf_model`` with a declared pair
(``vllm_pair_role``, ``hf_model_pair_link`` on by default) on two lab hosts with a link of their
own (``tests/lab/pair.py``), and a host of no pair beside them, against the lab's stand-in Hub.

The evidence is kept outside the code under test: the stand-in Hub's per-client byte counters
(``/_standin/stats`` ``clients``: of the pair, only the head's address is served, exactly one
copy), the kernel's byte counter of the worker's link interface (the copy arrived there), and
every host's files hashed on the host and compared with the Hub's own files. In peer mode the
head is the seed: the host of no pair copies from it over the LAN and the worker over the link,
in the same run (the head's daemon on both addresses); a second run changes nothing and starts
no daemon. In hub mode (every model removed) the head fetches from the Hub for the pair, and
the host of no pair fetches alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.lab import access, hosts, pair, services
from tests.lab.config import LabConfig, log

# both tests fetch the model to a pair: beyond make test's budget (marker long)
pytestmark = [pytest.mark.lab, pytest.mark.long]

CFG = LabConfig(host_prefix="pairfetch", host_label="sparklab.pairfetch")
SOLO = LabConfig(host_prefix="pairfetch-solo", host_label="sparklab.pairfetch-solo")
NET = pair.PairNet("sparklab-pairfetch", "172.29.94.0/24", mtu=9000)
MODEL_DIR = "/opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4"
HUB_FILES = CFG.state_dir / "hub" / "repo" / "files"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@pytest.fixture(scope="module")
def members() -> Iterator[list[pair.PairMember]]:
    with pair.own_pair(CFG, NET, f"{CFG.sim_image}:latest") as members:
        yield members


@pytest.fixture(scope="module")
def solo() -> Iterator[tuple[str, str]]:
    """A host of no pair: (name, address)."""
    with hosts.own_hosts(SOLO) as started:
        yield started[0], hosts.host_address(SOLO, started[0])


@pytest.fixture(scope="module")
def workdir(
    members: list[pair.PairMember], solo: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An inventory of the pair and the host of no pair (the lab's group_vars; the head first,
    so the seed) and a play running hf_model."""
    tmp = tmp_path_factory.mktemp("pairfetch")
    host_vars = pair.declared(CFG, members)
    host_vars[solo[0]] = access.ansible_host_vars(SOLO, solo[1], sudo_password=False)
    addresses = {m.name: m.lab_address for m in members} | {solo[0]: solo[1]}
    for name, address in addresses.items():
        host_vars[name] |= {"hf_model_peer_address": address, "hf_model_disk_margin_gb": 0.1}
    pair.write_inventory(tmp, host_vars)
    converge = [{"name": "Fetch the model", "hosts": "spark", "become": True,
                 "gather_facts": True, "roles": ["hf_model"]}]  # fmt: skip
    (tmp / "converge.yml").write_text(yaml.safe_dump(converge))
    return tmp


def playbook(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return pair.playbook(tmp, "converge.yml", *args)


def hub_files() -> dict[str, str]:
    """{path: sha256} of the files the lab's stand-in Hub serves for the model."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(HUB_FILES.iterdir())
        if p.is_file()
    }


def hub_bytes(addresses: dict[str, str]) -> dict[str, int]:
    """{name: bytes the lab's Hub has served to the host's address} (other lab users' not
    counted)."""
    clients = services.hub_stats(CFG)["clients"]
    assert isinstance(clients, dict)
    return {name: int(clients.get(address, 0)) for name, address in addresses.items()}


def rx_bytes(member: pair.PairMember) -> int:
    """The kernel's count of bytes received on the member's link interface."""
    path = f"/sys/class/net/{member.interface}/statistics/rx_bytes"
    return int(hosts.sh(member.name, f"cat {path}").stdout)


def assert_verified(name: str, expected: dict[str, str]) -> None:
    """Every file of the Hub on the host, with the Hub's content (hashed there)."""
    out = hosts.sh(name, f"cd {MODEL_DIR} && sha256sum {' '.join(sorted(expected))}")
    found = {line.split()[1]: line.split()[0] for line in out.stdout.splitlines()}
    assert found == expected
    recorded = hosts.sh(name, f"cat {MODEL_DIR}/.sparkfleet-manifest.json").stdout
    manifest = json.loads(recorded)
    assert sorted(manifest["files"]) == sorted(expected)


def recap(run: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """{host: changed} of a successful run."""
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
    found = {h: (int(c), int(u), int(f)) for h, c, u, f in RECAP.findall(run.stdout)}
    assert found and all(u == 0 and f == 0 for _, u, f in found.values()), run.stdout[-3000:]
    return {h: c for h, (c, _, _) in found.items()}


def task_lines(run: subprocess.CompletedProcess[str], task: str) -> list[str]:
    """The result lines (one per host) of ``task`` in the run's output."""
    section = run.stdout.split(f"TASK [{task}")[1].split("TASK [")[0]
    return [line for line in section.splitlines()[1:] if line and not line.startswith(" ")]


def fetch_as_a_pair(
    workdir: Path, members: list[pair.PairMember], solo: tuple[str, str], source: str
) -> None:
    """Run the play in ``source`` mode; assert the Hub served one copy to the head, none to the
    worker, whose copy came over the link, one to the host of no pair in hub mode only, and that
    every host has the Hub's files."""
    head, worker = members
    expected = hub_files()
    total = sum((HUB_FILES / name).stat().st_size for name in expected)
    addresses = {m.name: m.lab_address for m in members} | {solo[0]: solo[1]}
    before = hub_bytes(addresses)
    link_before = rx_bytes(worker)
    run = playbook(workdir, "-e", f"hf_model_source={source}")
    changed = recap(run)
    assert all(changed[name] > 0 for name in addresses), changed
    after = hub_bytes(addresses)
    served = {name: after[name] - before[name] for name in addresses}
    solo_share = total if source == "hub" else 0
    assert served == {head.name: total, worker.name: 0, solo[0]: solo_share}, (served, total)
    over_link = rx_bytes(worker) - link_before
    assert over_link >= total, (over_link, total)
    for name in addresses:
        assert_verified(name, expected)
    shown = " ".join(run.stdout.split())  # the results in YAML, long strings folded
    assert f"fetched {len(expected)} file(s)" in shown, run.stdout[-4000:]
    assert f"from {head.name} over the link" in shown, run.stdout[-4000:]
    log(f"pairfetch ({source}): Hub bytes {served}, {over_link} bytes in on {worker.name}'s "
        f"link; the model {total} bytes")  # fmt: skip


def test_peer_mode_the_worker_copies_from_the_head_over_the_link(
    members: list[pair.PairMember], solo: tuple[str, str], workdir: Path
) -> None:
    head, worker = members
    fetch_as_a_pair(workdir, members, solo, "peer")
    for name in (head.name, worker.name, solo[0]):  # the daemons are gone with their files
        gone = hosts.sh(
            name,
            "systemctl is-active sparkfleet-hf_model-rsyncd.service;"
            " ls /run/sparkfleet-hf_model-rsyncd.conf",
            check=False,
        )
        assert gone.stdout.split()[0] in ("inactive", "unknown"), gone.stdout
        assert "No such file" in gone.stderr, gone.stderr

    again = playbook(workdir, "-e", "hf_model_source=peer")
    assert recap(again) == {head.name: 0, worker.name: 0, solo[0]: 0}, again.stdout[-6000:]
    started = task_lines(again, "hf_model : Start the read-only rsync daemon")
    assert started and all(line.startswith("skipping:") for line in started), started


def test_hub_mode_the_head_fetches_for_the_pair(
    members: list[pair.PairMember], solo: tuple[str, str], workdir: Path
) -> None:
    for name in (members[0].name, members[1].name, solo[0]):
        hosts.sh(name, f"rm -rf {MODEL_DIR}")
    fetch_as_a_pair(workdir, members, solo, "hub")
