"""vllm_service's checks of a pair member's variables (``tasks/pair.yml``), run by
ansible-playbook on this machine (no host, no lab): a good declaration passes; each bad value is
refused before anything changes, the message naming the host, the variable, the value and what
is allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]
PLAY = """\
- name: Check a pair member's variables
  hosts: head
  gather_facts: false
  roles:
    - {role: vllm_service, when: false}
  tasks:
    - name: Run the role's pair checks
      ansible.builtin.include_role:
        name: vllm_service
        tasks_from: pair
"""
GOOD = {
    "head": {"vllm_pair_role": "head", "vllm_pair_peer": "worker",
             "vllm_pair_interface": "enp1s0f0np0", "vllm_pair_address": "192.168.100.10"},
    "worker": {"vllm_pair_role": "worker", "vllm_pair_peer": "head",
               "vllm_pair_interface": "enp1s0f0np0", "vllm_pair_address": "192.168.100.11"},
}  # fmt: skip


def check(tmp_path: Path, **head: object) -> subprocess.CompletedProcess[str]:
    return run_play(tmp_path, PLAY, head)


def run_play(
    tmp_path: Path, play: str, head: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    """``play`` on the good pair (hosts head and worker), the head's variables updated."""
    return run_hosts(tmp_path, play, {**GOOD, "head": {**GOOD["head"], **head}})


def run_hosts(
    tmp_path: Path, play: str, hosts: Mapping[str, Mapping[str, object]], *args: str
) -> subprocess.CompletedProcess[str]:
    """``play`` on ``hosts`` ({name: variables}, each run on this machine), ``args`` added."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {"all": {"hosts": {name: {**local, **v} for name, v in hosts.items()}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(play)
    playbook = Path(sys.executable).parent / "ansible-playbook"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    return subprocess.run(
        [str(playbook), "-i", str(tmp_path / "inventory.json"), str(tmp_path / "play.yml"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ({"vllm_pair_peer": "nobody"},
         'head: vllm_pair_peer="nobody" must be another host of the inventory'),
        ({"vllm_pair_address": "192.168.100.300"},
         'head: vllm_pair_address="192.168.100.300" must be an IPv4 address (four numbers 0-255)'),
        ({"vllm_pair_address": "192.168.100.11"},
         "head: worker's vllm_pair_address=\"192.168.100.11\" must be an IPv4 address other "
         "than this host's"),
        ({"vllm_pair_interface": "enp1s0f0np0 x"},
         'head: vllm_pair_interface="enp1s0f0np0 x" must be a network interface name'),
        ({"vllm_pair_generation_probe_s": 5},
         'head: vllm_pair_generation_probe_s=5 must be a number of seconds, 10-3600'),
        ({"vllm_pair_firewall_ports": ["6379", "1000-x"]},
         'head: vllm_pair_firewall_ports=["6379", "1000-x"] must be a list of TCP ports or '
         "ranges FIRST-LAST"),
        ({"vllm_pair_firewall_ports": ["6379", "70000"]},
         'head: vllm_pair_firewall_ports=["6379", "70000"] must be a list of TCP ports 1-65535 '
         'or ranges FIRST-LAST within 1-65535 with FIRST <= LAST; "70000" is not'),
        ({"vllm_pair_firewall_ports": ["19999-10001"]},
         'vllm_pair_firewall_ports=["19999-10001"] must be a list of TCP ports 1-65535 or ranges '
         'FIRST-LAST within 1-65535 with FIRST <= LAST; "19999-10001" is not'),
        ({"vllm_pair_firewall_ports": ["0-100"]}, '; "0-100" is not'),
        ({"vllm_pair_firewall_ports": ["8265", "32768-65536"]}, '; "32768-65536" is not'),
        ({"vllm_port": 11434},
         'head: vllm_pair_firewall_ports=["6379", "8265", "10001-19999", "32768-60999"] would drop '
         "vllm_port=11434 from every host but worker"),
        ({"ansible_port": 2222, "vllm_port": 40000,
          "vllm_pair_firewall_ports": ["6379", "2000-3000", "10001-19999", "32768-60999"]},
         "would drop vllm_port=40000, ansible_port=2222 from every host but worker"),
        # a gateway's own ports, on a member that is also a gateway (its group is 'all' here)
        ({"fleet_gateway_group": "all",
          "vllm_pair_firewall_ports": ["6379", "8001-8500", "10001-19999", "32768-60999"]},
         "would drop fleet_gateway_port=8080, fleet_gateway_metrics_port=8405 from every host "
         "but worker"),
        ({"vllm_pair_ray_port": 6380},
         "head: vllm_pair_ray_port=6380 must be 6379: the image's entrypoint starts Ray's GCS on "
         "port 6379 in its ray-head, ray-worker and serve modes and takes no other"),
    ],
)  # fmt: skip
def test_bad_pair_values_are_refused(tmp_path: Path, head: dict[str, object], message: str) -> None:
    proc = check(tmp_path, **head)
    assert proc.returncode != 0
    assert message in " ".join(proc.stdout.split()), proc.stdout[-3000:]


def test_the_firewall_must_cover_the_kernels_ephemeral_range(tmp_path: Path) -> None:
    # where Ray's agents and managers listen: this machine's range, read as the role reads it
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    proc = check(tmp_path, vllm_pair_firewall_ports=["6379", "8265", "10001-19999"])
    assert proc.returncode != 0
    assert (
        'head: vllm_pair_firewall_ports=["6379", "8265", "10001-19999"] must cover the kernel\'s '
        f"ephemeral port range {low}-{high} (net.ipv4.ip_local_port_range), where Ray's agents "
        f'and node and object managers listen on ports the kernel picks: add "{low}-{high}"'
    ) in " ".join(proc.stdout.split()), proc.stdout[-3000:]
    covered = check(tmp_path, vllm_pair_firewall_ports=["6379", f"{int(low) - 1}-{high}"])
    assert covered.returncode == 0, covered.stdout[-3000:]


def test_a_good_pair_passes(tmp_path: Path) -> None:
    proc = check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    # the gateway's ports matter only on a gateway: here no host is one
    ports = ["6379", "8001-8500", "10001-19999", "32768-60999"]
    not_a_gateway = check(tmp_path, vllm_pair_firewall_ports=ports)
    assert not_a_gateway.returncode == 0, not_a_gateway.stdout[-3000:]


# spark_pair's checks that compare the members (read from the inventory, before any fact is
# gathered): each message gives each host's own value.
SPARK_PAIR = """\
- name: Check the pair
  hosts: all
  gather_facts: false
  roles:
    - spark_pair
"""


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ({"vllm_pair_role": "worker"},
         "the pair's members do not have one head and one worker: head has "
         'vllm_pair_role="worker", worker has vllm_pair_role="worker"; a pair has one head and '
         'one worker (worker\'s must be "head")'),
        ({"hf_model_revision": "0123456789abcdef0123456789abcdef01234567"},
         "model revisions differ between the pair's members: head has "
         'hf_model_revision="0123456789abcdef0123456789abcdef01234567", worker has '
         "hf_model_revision=null; a pair serves one model with one image"),
        ({"vllm_image_digest": "sha256:" + "a" * 64},
         'image digests differ between the pair\'s members: head has vllm_image_digest="sha256:'
         + "a" * 64 + '", worker has vllm_image_digest=null'),
    ],
)  # fmt: skip
def test_spark_pair_names_each_hosts_value(
    tmp_path: Path, head: dict[str, object], message: str
) -> None:
    proc = run_play(tmp_path, SPARK_PAIR, head)
    assert proc.returncode != 0
    assert message in " ".join(proc.stdout.split()), proc.stdout[-3000:]


def test_spark_pair_names_a_peer_that_does_not_name_this_host(tmp_path: Path) -> None:
    hosts = dict(GOOD, third={**GOOD["worker"], "vllm_pair_peer": "worker"})
    hosts["worker"] = {**GOOD["worker"], "vllm_pair_peer": "third"}
    proc = run_hosts(tmp_path, SPARK_PAIR, hosts, "--limit", "head,worker")
    said = " ".join(proc.stdout.split())
    assert proc.returncode != 0
    # the message gives what each host has, not what the check expected
    assert (
        'the pair\'s members do not name each other: head has vllm_pair_peer="worker", worker has '
        "vllm_pair_peer=\"third\"; each member's vllm_pair_peer must name the other (worker's "
        'must be "head")'
    ) in said, said[-3000:]


# As site.yml runs it: with the roles whose defaults name the revision and the image in the play
# (a peer's hostvars hold only its inventory, not those defaults).
SPARK_PAIR_WITH_DEFAULTS = """\
- name: Check the pair
  hosts: all
  gather_facts: false
  roles:
    - {role: hf_model, when: false}
    - {role: vllm_service, when: false}
    - spark_pair
"""


def test_spark_pair_compares_each_members_defaults_too(tmp_path: Path) -> None:
    proc = run_hosts(tmp_path, SPARK_PAIR_WITH_DEFAULTS, GOOD)
    # neither member names a revision, an image or a digest: both have the roles' defaults and
    # pass to the next check (the link's, which this machine has no interface for)
    assert "differ between the pair's members" not in proc.stdout, proc.stdout[-3000:]
    assert "TASK [spark_pair : Check the link interface on both members]" in proc.stdout
    one = {**GOOD, "worker": {**GOOD["worker"], "hf_model_revision": "0" * 40}}
    proc = run_hosts(tmp_path, SPARK_PAIR_WITH_DEFAULTS, one)
    said = " ".join(proc.stdout.split())
    assert proc.returncode != 0
    # refused on both members, each naming the other's value (the head's is the default)
    for mine, theirs in (("head", "worker"), ("worker", "head")):
        value = {"head": '"main"', "worker": '"' + "0" * 40 + '"'}
        assert (
            f"model revisions differ between the pair's members: {mine} has "
            f"hf_model_revision={value[mine]}, {theirs} has hf_model_revision={value[theirs]}"
        ) in said, said[-3000:]


# vllm_service's comparison of the images the members hold after the pull (tasks/pair_image.yml),
# with the pull's result as each host's and a docker that reports the image's registry digests.
PAIR_IMAGE = """\
- name: Compare the images the members hold
  hosts: all
  gather_facts: false
  tasks:
    - name: Run the role's comparison
      ansible.builtin.include_role:
        name: vllm_service
        tasks_from: pair_image
"""
REF = "avarok/dgx-vllm-nvfp4-kernel:v23"


def compare_images(tmp_path: Path, ids: dict[str, str], *limit: str) -> str:
    docker = tmp_path / "docker"
    # docker image inspect --format FORMAT ID: the image's registry digest, from its ID
    digest = 'echo "[\\"avarok/dgx-vllm-nvfp4-kernel@sha256:${5#sha256:}\\"]"'
    docker.write_text(f"#!/bin/sh\n{digest}\n")
    docker.chmod(0o755)
    host_vars = {
        name: {**GOOD[name], "_vllm_service_image": {"ref": REF, "id": image_id},
               "vllm_docker_bin": str(docker)}
        for name, image_id in ids.items()
    }  # fmt: skip
    args = ["--limit", ",".join(limit)] if limit else []
    proc = run_hosts(tmp_path, PAIR_IMAGE, host_vars, *args)
    return f"rc={proc.returncode} " + " ".join(proc.stdout.split())


def test_members_holding_different_images_are_refused(tmp_path: Path) -> None:
    mine, theirs = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    said = compare_images(tmp_path, {"head": mine, "worker": theirs})
    assert said.startswith("rc=2"), said[-3000:]
    assert (
        f"the pair's members hold different images for {REF}: head has {mine} "
        f"(avarok/dgx-vllm-nvfp4-kernel@sha256:{'1' * 64}), worker has {theirs} "
        f"(avarok/dgx-vllm-nvfp4-kernel@sha256:{'2' * 64}); a pair serves one model with one "
        "image: pin vllm_image_digest"
    ) in said, said[-3000:]


def test_members_holding_the_same_image_pass(tmp_path: Path) -> None:
    same = "sha256:" + "3" * 64
    said = compare_images(tmp_path, {"head": same, "worker": same})
    assert said.startswith("rc=0") and "failed=0" in said, said[-3000:]
    # a run without the peer (and an image not pulled yet, in check mode) has nothing to compare
    alone = compare_images(tmp_path, {"head": same, "worker": "sha256:" + "4" * 64}, "head")
    assert alone.startswith("rc=0"), alone[-3000:]
