"""vllm_service's checks of a pair member's variables (``tasks/pair.yml``), run by
ansible-playbook on this machine (no host, no lab): a good declaration passes; each bad value is
refused before anything changes, the message naming the host, the variable, the value and what
is allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts: dict[str, dict[str, object]] = {name: {**local, **v} for name, v in GOOD.items()}
    hosts["head"].update(head)
    (tmp_path / "inventory.json").write_text(json.dumps({"all": {"hosts": hosts}}))
    (tmp_path / "play.yml").write_text(PLAY)
    playbook = Path(sys.executable).parent / "ansible-playbook"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    return subprocess.run(
        [str(playbook), "-i", str(tmp_path / "inventory.json"), str(tmp_path / "play.yml")],
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
    ],
)  # fmt: skip
def test_bad_pair_values_are_refused(tmp_path: Path, head: dict[str, object], message: str) -> None:
    proc = check(tmp_path, **head)
    assert proc.returncode != 0
    assert message in " ".join(proc.stdout.split()), proc.stdout[-3000:]


def test_a_good_pair_passes(tmp_path: Path) -> None:
    proc = check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
