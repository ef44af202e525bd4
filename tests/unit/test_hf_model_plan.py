"""The hf_model role's plan of a fetch (``plugins/filter/hf_model_plan.py``): who fetches from the
Hub, who copies from whom, what each host's rsync daemon listens on and admits, with and without
pairs of Sparks; and the role refusing a pair it cannot plan before anything changes.

The plan is a pure function of the play's hosts; the role's own use of it (the daemons, the
copies over the link, the Hub's bytes) is shown in the lab (``test_hf_model_pair_fetch_lab.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.sparkfleet.spark.plugins.filter.hf_model_plan import (
    PLAN_KEYS,
    FilterModule,
    hf_model_plan,
)

from tests.unit.plays import check_play

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]
REPO = "owner/model"


def host(name: str, index: int, **pair: Any) -> dict[str, Any]:
    """A host as the role describes it: LAN address 10.0.0.<index>, and the pair keys given
    (``role``, ``peer``, ``address``, ``link``)."""
    return {
        "name": name,
        "address": f"10.0.0.{index}",
        "link": pair.get("link", "role" in pair),
        "pair_role": pair.get("role"),
        "pair_peer": pair.get("peer"),
        "pair_address": pair.get("address"),
        "repo_id": pair.get("repo_id", REPO),
        "revision": pair.get("revision", "main"),
    }


def fleet(*names_addresses: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": n, "address": a} for n, a in names_addresses]


def lan(names: list[str]) -> list[dict[str, str]]:
    return [{"name": n, "address": f"10.0.0.{n[1:]}"} for n in names]


def singles(count: int) -> list[dict[str, Any]]:
    return [host(f"h{i}", i) for i in range(1, count + 1)]


def with_pair(
    hosts: list[dict[str, Any]], head: str, worker: str, **extra: Any
) -> list[dict[str, Any]]:
    """``hosts`` with ``head`` and ``worker`` declared a pair (link addresses 192.168.100.<i>)."""
    out = []
    for h in hosts:
        index = int(h["name"][1:])
        if h["name"] in (head, worker):
            role = "head" if h["name"] == head else "worker"
            peer = worker if h["name"] == head else head
            keys = {"role": role, "peer": peer, "address": f"192.168.100.{index}", **extra}
            h = host(h["name"], index, **keys)
        out.append(h)
    return out


def test_without_pairs_the_plan_is_the_role_plan_before_pairs() -> None:
    """Hub mode: every host fetches alone. Peer mode: the seed first, then the play's order; every
    host serves on its LAN address and admits the others'."""
    hosts = singles(4)
    for name, plan in hf_model_plan(hosts, "hub").items():
        assert set(plan) == set(PLAN_KEYS)
        assert plan["from_hub"] and plan["lister"] == name and not plan["lists"]
        assert plan["group"] == [name] and plan["fleet"] == [] and plan["serve"] == []
        assert plan["partner"] is None and plan["errors"] == []
    plans = hf_model_plan(hosts, "peer", "h3")
    order = ["h3", "h1", "h2", "h4"]
    for name, plan in plans.items():
        assert plan["from_hub"] == (name == "h3") and plan["lists"] == (name == "h3")
        assert plan["lister"] == "h3" and plan["group"] == ["h1", "h2", "h3", "h4"]
        assert plan["fleet"] == lan(order) and plan["upstream"] == "seed"
        assert plan["serve"] == [f"10.0.0.{name[1:]}"] and plan["tree"]
        assert plan["allow"] == [f"10.0.0.{n[1:]}" for n in order if n != name]
        assert plan["link_clients"] == 0 and not plan["via_link"]


def test_peer_mode_the_head_takes_its_place_in_the_tree_and_the_worker_copies_over_the_link() -> (
    None
):
    hosts = with_pair(singles(4), head="h2", worker="h3")
    plans = hf_model_plan(hosts, "peer", "h1")
    tree = lan(["h1", "h2", "h4"])
    for name in ("h1", "h2", "h4"):
        assert plans[name]["fleet"] == tree and plans[name]["tree"], name
        assert "10.0.0.3" not in plans[name]["allow"], name  # the worker is not in the tree
    head, worker = plans["h2"], plans["h3"]
    assert head["serve"] == ["10.0.0.2", "192.168.100.2"]
    assert head["allow"] == ["10.0.0.1", "10.0.0.4", "192.168.100.3"]
    assert head["link_clients"] == 1 and head["partner"] == "h3" and not head["via_link"]
    assert not head["from_hub"] and head["upstream"] == "seed"
    assert worker["fleet"] == fleet(("h2", "192.168.100.2"), ("h3", "192.168.100.3"))
    assert worker["via_link"] and worker["upstream"] == "pair" and worker["partner"] == "h2"
    assert worker["serve"] == [] and not worker["tree"] and not worker["from_hub"]
    assert worker["lister"] == "h1" and worker["group"] == ["h1", "h2", "h3", "h4"]
    # the filter as Ansible finds it
    assert FilterModule().filters()["hf_model_plan"] is hf_model_plan


def test_a_pair_holding_the_seed_copies_to_the_other_member_over_the_link() -> None:
    """The seed is the pair's lead, whichever its role: the default seed (the play's first host)
    may well be a worker."""
    hosts = with_pair(singles(3), head="h2", worker="h1")
    plans = hf_model_plan(hosts, "peer", "h1")
    assert plans["h1"]["from_hub"] and plans["h1"]["lists"]
    assert plans["h1"]["fleet"] == lan(["h1", "h3"])
    assert plans["h1"]["serve"] == ["10.0.0.1", "192.168.100.1"]
    assert plans["h2"]["via_link"] and plans["h2"]["partner"] == "h1"
    assert plans["h2"]["fleet"] == fleet(("h1", "192.168.100.1"), ("h2", "192.168.100.2"))
    assert plans["h3"]["fleet"] == lan(["h1", "h3"]) and plans["h3"]["allow"] == ["10.0.0.1"]


def test_hub_mode_the_head_fetches_for_the_pair_and_others_fetch_alone() -> None:
    hosts = with_pair(singles(3), head="h3", worker="h1")
    plans = hf_model_plan(hosts, "hub")
    head, worker, single = plans["h3"], plans["h1"], plans["h2"]
    assert head["from_hub"] and head["lists"] and head["group"] == ["h3", "h1"]
    assert head["serve"] == ["192.168.100.3"] and head["allow"] == ["192.168.100.1"]
    assert not head["tree"] and head["link_clients"] == 1
    assert not worker["from_hub"] and worker["lister"] == "h3" and worker["via_link"]
    assert worker["fleet"] == fleet(("h3", "192.168.100.3"), ("h1", "192.168.100.1"))
    assert worker["group"] == ["h3", "h1"] and worker["serve"] == []
    assert single["from_hub"] and single["group"] == ["h2"] and single["partner"] is None


def test_with_the_link_off_the_members_fetch_as_hosts_of_no_pair() -> None:
    hosts = with_pair(singles(3), head="h1", worker="h2", link=False)
    assert hf_model_plan(hosts, "peer", "h1") == hf_model_plan(singles(3), "peer", "h1")
    assert hf_model_plan(hosts, "hub") == hf_model_plan(singles(3), "hub")


@pytest.mark.parametrize(
    ("change", "host_errors", "words"),
    [
        # the worker's peer is not in the play (a --limit to one member)
        ({"h2": {"peer": "h9"}}, {"h2": 1, "h1": 1}, ["vllm_pair_peer='h9'", "h1, h2, h3"]),
        ({"h1": {"role": "master"}}, {"h1": 1, "h2": 1},
         ["vllm_pair_role='master'", "head or worker"]),
        ({"h2": {"role": "head"}}, {"h1": 1, "h2": 1}, ["vllm_pair_role='head' on both"]),
        ({"h2": {"address": "spark-2.link"}}, {"h2": 1, "h1": 1}, ["an IPv4 address"]),
        ({"h2": {"link": False}}, {"h1": 1}, ["hf_model_pair_link differs"]),
        ({"h2": {"revision": "abc123"}}, {"h1": 1, "h2": 1},
         ["hf_model_revision differs", "'abc123'"]),
        ({"h3": {"role": "worker", "peer": "h1", "address": "192.168.100.3"}}, {"h3": 1},
         ["vllm_pair_peer differs: h3 names h1, but h1 names 'h2'"]),
    ],
)  # fmt: skip
def test_a_pair_that_cannot_be_planned_is_refused_naming_the_variable(
    change: dict[str, dict[str, Any]], host_errors: dict[str, int], words: list[str]
) -> None:
    """Each host concerned gets a message; the member whose own declaration is right gets one
    that points to its peer; hosts not concerned get none."""
    hosts = with_pair(singles(3), head="h1", worker="h2")
    for h in hosts:
        if h["name"] in change:
            index = int(h["name"][1:])
            keys = {
                "role": h["pair_role"], "peer": h["pair_peer"], "address": h["pair_address"],
                **change[h["name"]],
            }  # fmt: skip
            h.update(host(h["name"], index, **keys))
    plans = hf_model_plan(hosts, "peer", "h1")
    errors = {name: plan["errors"] for name, plan in plans.items() if plan["errors"]}
    assert {name: len(found) for name, found in errors.items()} == host_errors, errors
    text = " ".join(e for found in errors.values() for e in found)
    for word in words:
        assert word in text, errors
    # a refused host is planned as a host of no pair (the role stops it before anything runs)
    for name in errors:
        assert plans[name]["partner"] is None and not plans[name]["via_link"], name
        assert plans[name]["fleet"] == plans["h1"]["fleet"] and plans[name]["tree"], name


def test_input_the_role_never_gives_is_an_error() -> None:
    with pytest.raises(AnsibleFilterError, match="seed 'h9'"):
        hf_model_plan(singles(2), "peer", "h9")
    with pytest.raises(AnsibleFilterError, match="hub or peer"):
        hf_model_plan(singles(2), "torrent")
    with pytest.raises(AnsibleFilterError, match="duplicate"):
        hf_model_plan(singles(2) + singles(1), "hub")


# -- the role ----------------------------------------------------------------------------------

PLAY = """
- name: Fetch the model on a pair
  hosts: spark
  gather_facts: false
  tasks:
    - name: The role
      ansible.builtin.include_role:
        name: hf_model
"""


def run_role(tmp_path: Path, limit: str, source: str) -> tuple[int, str]:
    """hf_model in check mode on two local "hosts" declared a pair, limited to ``limit``."""
    pair = {
        "spark-a": {"vllm_pair_role": "head", "vllm_pair_peer": "spark-b",
                    "vllm_pair_address": "192.168.100.10"},
        "spark-b": {"vllm_pair_role": "worker", "vllm_pair_peer": "spark-a",
                    "vllm_pair_address": "192.168.100.11"},
    }  # fmt: skip
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
              "hf_model_source": source, "hf_model_peer_address": "127.0.0.1",
              "hf_model_dir": str(tmp_path / "model")}  # fmt: skip
    inventory = {"spark": {"hosts": {n: {**v, **common} for n, v in pair.items()}}}
    return check_play(
        tmp_path, inventory, PLAY, "--limit", limit,
        env={"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
             "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"},
    )  # fmt: skip


@pytest.mark.parametrize("source", ["hub", "peer"])
def test_a_member_whose_peer_is_outside_the_play_stops_before_anything_changes(
    tmp_path: Path, source: str
) -> None:
    rc, out = run_role(tmp_path, "spark-b", source)
    assert rc != 0, out
    tasks = out.split("TASK [")
    assert tasks[-1].startswith("hf_model : Check the pair's declaration"), out[-3000:]
    failed = [line for line in out.splitlines() if line.startswith("fatal: [spark-b]")]
    assert len(failed) == 1, out[-3000:]
    msg = json.loads(failed[0].split(" => ", 1)[1])["msg"]
    expected = "spark-b: vllm_pair_peer='spark-a' must be another host of this play (spark-b)"
    assert msg.startswith(expected), msg
    assert "hf_model_pair_link: false" in msg, msg
    assert "changed=0" in out.split("PLAY RECAP", 1)[1], out[-1500:]
