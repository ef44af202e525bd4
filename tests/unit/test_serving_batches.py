"""spark_pair's ``batches`` task file: the serving plays' batches keep a pair's two hosts together.

Runs the task file as site.yml and rolling_restart.yml do (a first play on the hosts, then a play
over ``sparkfleet_serving`` with ``serial`` from the batches), on hosts reached with the local
connection, and reads each batch the second play ran (``ansible_play_batch``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.lab.config import REPO_ROOT, venv_tool

pytestmark = pytest.mark.nolab

# a and d are a pair (a the head), listed apart; so are g and f (g the head, listed after f)
HOSTS: dict[str, dict[str, str]] = {
    "a": {"vllm_pair_role": "head", "vllm_pair_peer": "d"},
    "b": {},
    "c": {},
    "d": {"vllm_pair_role": "worker", "vllm_pair_peer": "a"},
    "e": {},
    "f": {"vllm_pair_role": "worker", "vllm_pair_peer": "g"},
    "g": {"vllm_pair_role": "head", "vllm_pair_peer": "f"},
}

DEBUG = {
    "ansible.builtin.debug": {"msg": "BATCH={{ ansible_play_batch | to_json }}"},
    "run_once": True,
}


def plays(playbook: str) -> list[dict[str, object]]:
    """The playbook's batching tasks and its serving play's hosts and serial, with a debug task.

    Read from the playbook itself: site.yml's first play's post_tasks, rolling_restart.yml's
    first play's tasks, and the play after it.
    """
    book = yaml.safe_load((REPO_ROOT / "playbooks" / playbook).read_text())
    first, serving = book[0], book[1]
    tasks = first.get("post_tasks") or first["tasks"]
    batching = [
        t for t in tasks if t.get("ansible.builtin.include_role", {}).get("tasks_from") == "batches"
    ]
    assert batching, f"{playbook}: no batches task in its first play"
    return [
        {"name": "Batches", "hosts": first["hosts"], "gather_facts": False, "tasks": batching},
        {
            "name": "Serve",
            "hosts": serving["hosts"],
            "gather_facts": False,
            "serial": serving["serial"],
            "tasks": [DEBUG],
        },
    ]


def run(tmp_path: Path, *args: str, playbook: str = "site.yml") -> subprocess.CompletedProcess[str]:
    inventory = {"spark": {"hosts": HOSTS, "vars": {"ansible_connection": "local"}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(plays(playbook), sort_keys=False))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO_ROOT / "roles"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [venv_tool("ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
         str(tmp_path / "play.yml"), *args],
        capture_output=True, text=True, check=False, env=env, timeout=300,
    )  # fmt: skip


def batches(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return [json.loads(m) for m in re.findall(r"BATCH=(\[[^\]]*\])", result.stdout)]


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        # 5 units: a+d, b, c, e, g+f (a pair where its head comes, the head first)
        ("25%", [["a", "d"], ["b"], ["c"], ["e"], ["g", "f"]]),
        ("2", [["a", "d", "b"], ["c", "e"], ["g", "f"]]),
        ("50%", [["a", "d", "b"], ["c", "e"], ["g", "f"]]),  # 2.5 rounded down, as serial does
        ("60%", [["a", "d", "b", "c"], ["e", "g", "f"]]),
        ("100%", [["a", "d", "b", "c", "e", "g", "f"]]),
    ],
)
def test_a_pair_is_one_unit_in_one_batch(
    tmp_path: Path, batch: str, expected: list[list[str]]
) -> None:
    found = batches(run(tmp_path, "-e", f"vllm_rolling_batch={batch}"))
    assert found == expected


@pytest.mark.parametrize("playbook", ["site.yml", "rolling_restart.yml"])
def test_a_member_without_its_peer_is_refused_naming_both(tmp_path: Path, playbook: str) -> None:
    # --limit to f, a worker, without g, its head: f fails before any batch, naming g and how
    # to run the pair; the other hosts are batched as before
    result = run(tmp_path, "--limit", "a,b,d,f", playbook=playbook)
    assert result.returncode != 0
    said = " ".join(result.stdout.split())
    assert "f is the worker of a pair with g, which is not in this run" in said, said[-3000:]
    assert "run both members together (--limit g,f, or no --limit)" in said, said[-3000:]
    found = [json.loads(m) for m in re.findall(r"BATCH=(\[[^\]]*\])", result.stdout)]
    assert found == [["a", "d"], ["b"]] if playbook == "rolling_restart.yml" else [["a", "d", "b"]]
    assert "f" not in [h for b in found for h in b]


@pytest.mark.parametrize("playbook", ["site.yml", "rolling_restart.yml"])
def test_the_playbooks_default_batches_keep_the_pairs(tmp_path: Path, playbook: str) -> None:
    # site.yml: 25 % of 5 units, rolling_restart.yml: 1; either way one unit per batch here
    found = batches(run(tmp_path, playbook=playbook))
    assert len(found) == 5
    assert ["g", "f"] in found and ["a", "d"] in found
    assert sorted(h for b in found for h in b) == sorted(HOSTS)


@pytest.mark.parametrize("bad", ["0", "0%", "101%", "x", "-1", "2.5"])
def test_a_bad_batch_is_refused_naming_the_variable(tmp_path: Path, bad: str) -> None:
    result = run(tmp_path, "-e", f"vllm_rolling_batch={bad}")
    assert result.returncode != 0
    assert f"vllm_rolling_batch={json.dumps(bad)}" in result.stdout
    assert "BATCH=" not in result.stdout
