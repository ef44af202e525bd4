"""A pair of Sparks in health, status and the front door, without the lab.

- The Ray probe (``module_utils/vllm_pair_ray.PROBE``) run by this machine's python against a
  node table in the shape Ray 2.60's ``GlobalState.node_table()`` returns (the keys
  ``ray._private.state`` and ``ray._private.internal_api`` read: NodeID, Alive,
  NodeManagerAddress, NodeManagerPort, Resources, DeathReasonMessage), with real sockets: a
  node whose raylet port listens answers, one whose port is closed does not. The real Ray's
  answer is checked in the lab (``test_vllm_pair_service_lab.py``).
- ``judge``: what is wrong with a cluster, naming the host and what to look at.
- ``vllm_health_ray`` and ``vllm_status`` run in-process with the host's commands scripted.
- The gateway role's backends and Prometheus targets leave a pair's worker out; its drain,
  undrain and key rotation do nothing for a worker (real ``ansible-playbook``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from ansible_collections.sparkfleet.spark.plugins.module_utils import vllm_health_probe as probe
from ansible_collections.sparkfleet.spark.plugins.module_utils import vllm_pair_ray as pair_ray
from ansible_collections.sparkfleet.spark.plugins.modules import vllm_health_ray as ray_module
from ansible_collections.sparkfleet.spark.plugins.modules import vllm_status as status_module

from sparkfleet.display import host_detail, status_table
from sparkfleet.result import HostResult, RunResult, StatusResult
from tests.unit.plays import GATEWAY_CHECK_PLAY, check_play, run_module

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]
HEAD, WORKER = "192.168.100.10", "192.168.100.11"
MEMBERS = [
    {"name": "spark-01", "role": "head", "address": HEAD},
    {"name": "spark-02", "role": "worker", "address": WORKER},
]


def node(
    address: str, node_id: str, alive: bool = True, gpus: float = 1.0, answering: bool | None = True
) -> dict[str, Any]:
    """A node entry as ``parse_nodes`` returns it."""
    death = "" if alive else "health check failed"
    return {"node_id": node_id, "address": address, "alive": alive, "gpus": gpus,
            "answering": answering if alive else None, "death": death}  # fmt: skip


# --- the probe, against a node table in Ray's shape ---------------------------------------


@pytest.fixture
def listening() -> Iterator[int]:
    """A port that accepts connections (a raylet's), closed at the end."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_probe(tmp_path: Path, table: object, address: str = "10.0.0.1:6379") -> tuple[int, str]:
    """PROBE with a ``ray`` package whose internal_api returns ``table`` (or raises it)."""
    pkg = tmp_path / "ray" / "_private"
    pkg.mkdir(parents=True)
    (tmp_path / "ray" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    body = (
        f"    raise {table}\n"
        if isinstance(table, str)
        else f"    return type('S', (), {{'node_table': lambda self: {table!r}}})()\n"
    )
    (pkg / "internal_api.py").write_text(
        f"def get_state_from_address(address):\n    assert address == {address!r}, address\n" + body
    )
    proc = subprocess.run(
        [sys.executable, "-c", pair_ray.PROBE, address],
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
        check=False, timeout=60,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_the_probe_reads_the_node_table_and_asks_each_live_raylet(
    tmp_path: Path, listening: int
) -> None:
    table = [
        {"NodeID": "a" * 56, "Alive": True, "NodeManagerAddress": "127.0.0.1",
         "NodeManagerPort": listening, "Resources": {"CPU": 20.0, "GPU": 1.0}},
        {"NodeID": "b" * 56, "Alive": True, "NodeManagerAddress": "127.0.0.1",
         "NodeManagerPort": closed_port(), "Resources": {"CPU": 20.0, "GPU": 1.0}},
        {"NodeID": "c" * 56, "Alive": False, "NodeManagerAddress": "127.0.0.2",
         "NodeManagerPort": 1, "Resources": {}, "DeathReasonMessage": "health check failed"},
    ]  # fmt: skip
    rc, out = run_probe(tmp_path, table)
    nodes, error = pair_ray.parse_nodes(rc, out, "")
    assert error is None, out
    assert nodes == [
        {"node_id": "a" * 56, "address": "127.0.0.1", "alive": True, "answering": True,
         "gpus": 1.0, "death": ""},
        {"node_id": "b" * 56, "address": "127.0.0.1", "alive": True, "answering": False,
         "gpus": 1.0, "death": ""},
        {"node_id": "c" * 56, "address": "127.0.0.2", "alive": False, "answering": None,
         "gpus": 0.0, "death": "health check failed"},
    ]  # fmt: skip


def test_the_probe_reports_a_gcs_it_cannot_read(tmp_path: Path) -> None:
    rc, out = run_probe(tmp_path, "ConnectionError('Failed to connect to GCS at 10.0.0.1:6379')")
    nodes, error = pair_ray.parse_nodes(rc, out, "")
    assert nodes is None
    assert error == (
        "Ray's GCS could not be read: ConnectionError: Failed to connect to GCS at 10.0.0.1:6379"
    )


@pytest.mark.parametrize(
    ("rc", "out", "err", "error"),
    [
        (1, "", "Error: No such container: minimax", "the probe exited 1: Error: No such"),
        (126, "", "", "the probe exited 126: no output"),
        (0, "Traceback ...", "", "the probe printed no result: Traceback ..."),
        (0, '{"nodes": 3}', "", "the probe's answer holds no node list"),
    ],
)  # fmt: skip
def test_a_probe_without_a_node_list_says_why(rc: int, out: str, err: str, error: str) -> None:
    nodes, why = pair_ray.parse_nodes(rc, out, err)
    assert nodes is None and why is not None and why.startswith(error), why


# --- judging the cluster ----------------------------------------------------------------


def test_a_complete_pair_passes_and_reports_both_members() -> None:
    nodes = [node(HEAD, "h" * 56), node(WORKER, "w" * 56), node(WORKER, "old", alive=False)]
    report, problems = pair_ray.judge(nodes, MEMBERS)
    assert problems == []
    assert report == [
        {"name": "spark-01", "role": "head", "address": HEAD, "node_id": "h" * 56,
         "alive": True, "gpus": 1.0},
        {"name": "spark-02", "role": "worker", "address": WORKER, "node_id": "w" * 56,
         "alive": True, "gpus": 1.0},
    ]  # fmt: skip
    assert pair_ray.describe(report) == (
        f"spark-01 (head, {HEAD}): node hhhhhhhhhhhh, 1 GPU; "
        f"spark-02 (worker, {WORKER}): node wwwwwwwwwwww, 1 GPU"
    )


@pytest.mark.parametrize(
    ("nodes", "problem"),
    [
        ([node(HEAD, "h1")],
         f"the worker spark-02 ({WORKER}): no Ray node of it in the cluster; "
         "look at `journalctl -u vllm` on spark-02"),
        ([node(HEAD, "h1"), node(WORKER, "w1deadbeef0123", alive=False)],
         f"the worker spark-02 ({WORKER}): no Ray node of it in the cluster (its last node "
         "w1deadbeef01 died: health check failed); look at `journalctl -u vllm` on spark-02"),
        ([node(HEAD, "h1"), node(WORKER, "w1", answering=False)],
         f"the worker spark-02 ({WORKER}): its Ray node w1 is gone (its raylet does not answer; "
         "Ray has not noticed yet); look at `journalctl -u vllm` on spark-02"),
        ([node(HEAD, "h1"), node(WORKER, "w1", answering=False), node(WORKER, "w2")],
         f"the worker spark-02 ({WORKER}): its Ray node w1 is gone (its raylet does not answer; "
         "Ray has not noticed yet), and a new node joined since: the head's server ran on the "
         "old one and restarts; look at `journalctl -u vllm` on spark-02"),
        ([node(HEAD, "h1"), node(WORKER, "w1", gpus=0.0)],
         f"the worker spark-02 ({WORKER}): its Ray node has 0 GPU(s), 1 expected (NUM_GPUS=1); "
         "look at `journalctl -u vllm` on spark-02"),
        ([node(HEAD, "h1"), node(WORKER, "w1"), node("192.168.100.99", "x1")],
         "a Ray node x1 at 192.168.100.99 is in the cluster, which is neither member's "
         "vllm_pair_address"),
    ],
)  # fmt: skip
def test_what_is_wrong_names_the_host_and_where_to_look(
    nodes: list[dict[str, Any]], problem: str
) -> None:
    _report, problems = pair_ray.judge(nodes, MEMBERS)
    assert problems == [problem]


def test_a_lost_ray_worker_in_the_heads_log_names_the_worker() -> None:
    # Ray 2.60's ray/exceptions.py: ActorDiedError.BASE_ERROR_MSG, as vLLM's traceback ends
    line = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."
    settings = {"pair_peer": "spark-02", "pair_peer_address": WORKER, "service": "vllm"}
    hints = probe.find_hints(["INFO serving", line, "EngineDeadError: EngineCore ..."], settings)
    assert [h["pattern"] for h in hints] == ["ray_worker_lost", "engine_died"]
    assert hints[0]["hint"].startswith(
        f"the pair's server lost its Ray worker: the worker spark-02 ({WORKER}) left the "
        "cluster. Look at it (`journalctl -u vllm` on spark-02)"
    )
    assert probe.find_hints(["ray.exceptions.RayTaskError: division by zero"], settings) == []


# --- the modules, with the host's commands scripted --------------------------------------


Script = Callable[[list[str]], tuple[int, str, str]]


def host(
    nodes: list[dict[str, Any]] | None,
    active: str = "active",
    running: bool = True,
    calls: list[list[str]] | None = None,
) -> Script:
    """A member host: its unit ``active``, its container ``running``, the probe's ``nodes``."""

    def run(argv: list[str], *_args: Any, **_kwargs: Any) -> tuple[int, str, str]:
        if calls is not None:
            calls.append(argv)
        if argv[0] == "systemctl":
            return 0, f"LoadState=loaded\nActiveState={active}\nSubState=running\nNRestarts=0\n", ""
        if argv[1:3] == ["inspect", "--format"]:
            state = {"Status": "running" if running else "exited", "Running": running}
            return 0, json.dumps(state), ""
        if argv[1] == "inspect":  # vllm_status: docker inspect NAME
            return 0, json.dumps([{"State": {"Running": running}, "Image": "sha256:1"}]), ""
        if argv[1] == "image":
            return 0, "[]", ""
        if argv[1] == "exec":
            assert argv[2:5] == ["minimax", "python3", "-c"] and argv[6] == f"{HEAD}:6379", argv
            return 0, json.dumps({"nodes": nodes}), ""
        raise AssertionError(argv)

    return run


def run_ray_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], script: Script,
    **args: Any,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    monkeypatch.setattr(AnsibleModule, "run_command", lambda self, argv, **kw: script(argv))
    args = {"role": "worker", "members": MEMBERS, "gcs_address": f"{HEAD}:6379",
            "interval_s": 0.05, **args}  # fmt: skip
    return run_module(ray_module, args, capsys)


def test_the_worker_passes_with_its_node_alive(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_ray_module(monkeypatch, capsys, host([node(HEAD, "h1"), node(WORKER, "w1")]))
    assert rc == 0, result
    assert [(m["name"], m["alive"], m["gpus"]) for m in result["members"]] == [
        ("spark-01", True, 1.0), ("spark-02", True, 1.0)]  # fmt: skip
    assert result["problems"] == []


def test_the_worker_waits_for_its_node_then_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[list[str]] = []
    rc, result = run_ray_module(
        monkeypatch, capsys, host([node(HEAD, "h1")], calls=calls), budget_s=1
    )
    assert rc == 1
    assert result["msg"].startswith("the pair's Ray cluster (checked on the worker, after ")
    assert f"the worker spark-02 ({WORKER}): no Ray node of it in the cluster" in result["msg"]
    assert len([c for c in calls if c[1] == "exec"]) > 2  # it looked again within the budget


def test_a_stopped_unit_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[list[str]] = []
    script = host(None, active="inactive", running=False, calls=calls)
    rc, result = run_ray_module(monkeypatch, capsys, script, budget_s=60)
    assert rc == 1
    assert "the worker's vllm.service inactive (running): stopped, nothing" in result["msg"]
    assert not [c for c in calls if c[1] == "exec"]
    assert result["elapsed_s"] < 30  # did not wait out the budget


def run_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], script: Script,
    role: str,
) -> dict[str, Any]:  # fmt: skip
    monkeypatch.setattr(status_module, "_run", lambda argv: script(argv))
    capsys.readouterr()
    args = {"service_name": "vllm", "container_name": "minimax", "model_dir": "/nonexistent",
            "port": 1, "pair_role": role, "pair_members": MEMBERS,
            "gcs_address": f"{HEAD}:6379"}  # fmt: skip
    with patch_module_args(args), pytest.raises(SystemExit):
        status_module.main()
    status: dict[str, Any] = json.loads(capsys.readouterr().out)["status"]
    return status


def test_status_of_a_worker_reads_its_node_and_no_metrics(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_status(monkeypatch, capsys, host([node(HEAD, "h1"), node(WORKER, "w1")]), "worker")
    assert status["metrics_error"] is None and status["metrics"] == {}
    assert status["pair"]["head"] == "spark-01" and status["pair"]["problems"] == []
    report = StatusResult.from_fact({**status, "endpoint": ""})
    assert report.serving
    result = HostResult("spark-02", ok=1, facts={"fleet_status_report": {**status, "endpoint": ""}})
    table = status_table(RunResult("status", "status.yml", "successful", 0, {"spark-02": result}))
    assert "worker of spark-01, Ray: spark-01 192.168.100.10 1 GPU" in render(table)

    lost = run_status(monkeypatch, capsys, host([node(HEAD, "h1")]), "worker")
    report = StatusResult.from_fact(lost)
    assert not report.serving
    assert report.ray_problems[0].startswith(f"the worker spark-02 ({WORKER}): no Ray node")


def test_status_of_a_head_names_the_clusters_members(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_status(monkeypatch, capsys, host([node(HEAD, "h1"), node(WORKER, "w1")]), "head")
    assert status["metrics_error"]  # port 1: nothing answers /metrics
    assert [(m["name"], m["address"], m["alive"]) for m in status["pair"]["members"]] == [
        ("spark-01", HEAD, True), ("spark-02", WORKER, True)]  # fmt: skip


def render(table: Any) -> str:
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(table)
    return console.export_text()


def test_health_of_a_worker_says_where_the_pair_is_checked() -> None:
    fact = {"endpoint": "", "client_endpoint": "", "model": "m", "healthy": True,
            "checked": True, "served_by": "spark-01"}  # fmt: skip
    result = HostResult("spark-02", ok=3, facts={"vllm_health_result": fact})
    assert host_detail(result) == (
        "worker of spark-01: Ray node alive (the pair is served and checked there)"
    )


# --- the front door -----------------------------------------------------------------------


PAIR = {
    "s-1": {"ansible_host": "10.0.0.11", "vllm_pair_role": "head", "vllm_pair_peer": "s-2"},
    "s-2": {"ansible_host": "10.0.0.12", "vllm_pair_role": "worker", "vllm_pair_peer": "s-1"},
    "s-3": {"ansible_host": "10.0.0.13"},
}

GATEWAY_PLAY = (
    GATEWAY_CHECK_PLAY
    + """
- name: Drain, undrain and rotate each fleet host (a gateway that cannot be reached)
  hosts: spark
  gather_facts: false
  tasks:
    - name: Drain
      ansible.builtin.include_role:
        name: fleet_gateway
        tasks_from: "{{ step }}"
      loop: [drain, rotate, undrain]
      loop_control:
        loop_var: step
"""
)


def run_gateway(tmp_path: Path, gateway_vars: dict[str, Any]) -> tuple[int, str]:
    inventory = {"all": {"children": {
        "spark": {"hosts": {h: {**v, "ansible_connection": "local"} for h, v in PAIR.items()}},
        "gateway": {
            "hosts": {"gw": {"ansible_connection": "local"},
                      # a gateway that cannot be reached: a drain that runs says so
                      "gw-down": {"ansible_host": "192.0.2.1", "ansible_connection": "ssh",
                                  "ansible_ssh_common_args": "-o ConnectTimeout=2"}},
            "vars": {"fleet_gateway_api_key": "gateway-key-0123456789abcdef",
                     "fleet_gateway_admin_socket": str(tmp_path / "no-such.sock"),
                     **gateway_vars},
        },
    }}}  # fmt: skip
    return check_play(tmp_path, inventory, GATEWAY_PLAY)


def test_a_pairs_worker_is_no_gateway_member(tmp_path: Path) -> None:
    rc, out = run_gateway(tmp_path, {})
    assert "BACKEND NAMES s-1 s-3" in out, out
    assert "JOBS sparkfleet-gateway vllm-s-1 vllm-s-3" in out, out
    # the head and the single host are drained, put back and compared at the gateways (the one
    # that cannot be reached is named); the worker: nothing asked of any gateway
    assert rc == 0, out
    for name in ("s-1", "s-3"):
        assert f"[{name} -> gw]" in out, out
        assert "gateway gw-down cannot be reached" in out and f"{name} is left as" in out, out
    assert "[s-2 -> " not in out and "s-2 is left as" not in out, out


def test_a_worker_listed_as_backend_is_refused(tmp_path: Path) -> None:
    rc, out = run_gateway(tmp_path, {"fleet_gateway_backends": ["s-1", "s-2", "s-3"]})
    assert rc != 0, out
    assert 'fleet_gateway_backends=["s-1", "s-2", "s-3"] lists s-2: the worker of a' in out, out
    assert "list the pair's head (s-1) instead" in out, out
    assert "BACKEND NAMES" not in out, out


# --- vllm_health on a pair's members (check mode: no request, the declaration checked) ------

HEALTH_PLAY = """
- name: vllm_health on a pair's members
  hosts: spark
  gather_facts: false
  roles: [vllm_health]
  post_tasks:
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ vllm_health_result | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
      check_mode: false
"""


def run_health(tmp_path: Path, hosts: dict[str, dict[str, Any]]) -> tuple[int, str]:
    inventory = {"all": {"children": {"spark": {"hosts": {
        h: {**v, "ansible_connection": "local"} for h, v in hosts.items()}}}}}  # fmt: skip
    return check_play(tmp_path, inventory, HEALTH_PLAY, "-e", f"out_dir={tmp_path}")


def declared(role: str, peer: str, address: str) -> dict[str, Any]:
    return {"vllm_pair_role": role, "vllm_pair_peer": peer, "vllm_pair_address": address}


def test_health_of_a_pair_in_check_mode_reports_the_worker_as_checked_at_the_head(
    tmp_path: Path,
) -> None:
    rc, out = run_health(tmp_path, {"s-1": declared("head", "s-2", HEAD),
                                    "s-2": declared("worker", "s-1", WORKER)})  # fmt: skip
    assert rc == 0, out
    results = {h: json.loads((tmp_path / f"{h}.json").read_text()) for h in ("s-1", "s-2")}
    assert results["s-2"]["served_by"] == "s-1" and results["s-2"]["checked"] is False, out
    assert results["s-2"]["note"] == "the pair is served and checked at s-1", out
    assert results["s-1"]["pair"]["role"] == "head" and results["s-1"]["pair"]["peer"] == "s-2"


def test_a_bad_pair_declaration_is_named_before_any_check(tmp_path: Path) -> None:
    rc, out = run_health(tmp_path, {"s-1": declared("head", "s-2", HEAD),
                                    "s-2": declared("head", "s-1", WORKER)})  # fmt: skip
    assert rc != 0, out
    assert 's-1: vllm_pair_role="head" must be head or worker, and vllm_pair_peer="s-2"' in out
    assert '"role": "head", "address": "192.168.100.11"' in out, out


def test_a_starting_unit_does_not_pass_but_its_cluster_is_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = host([node(HEAD, "h1")], active="activating")
    rc, result = run_ray_module(monkeypatch, capsys, script, role="head")
    assert rc == 1
    assert result["problems"] == [
        f"the worker spark-02 ({WORKER}): no Ray node of it in the cluster; "
        "look at `journalctl -u vllm` on spark-02",
        "the head's vllm.service activating (running): not active yet",
    ]
