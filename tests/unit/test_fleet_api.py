"""sparkfleet's API and CLI without the lab: inventories, options, usage errors, stopping a run.

Runs that need Ansible use ``data/local_play.yml`` on two inventory hosts reached with the
``local`` connection (the controller itself); it only runs ``sleep``/``true`` and sets facts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from sparkfleet import (
    CancelToken,
    ExitCode,
    Fleet,
    FleetError,
    FleetEvent,
    HostTaskResult,
    HostTaskStarted,
    InventoryError,
    PlaybookNotFoundError,
    Project,
    ProjectNotFoundError,
    StopRequested,
    TaskRetry,
    TaskStarted,
)
from sparkfleet.cli import main
from sparkfleet.fleet import _Control
from sparkfleet.inventory import normalize
from sparkfleet.options import VaultId

pytestmark = pytest.mark.nolab

DATA = Path(__file__).resolve().parent / "data"
PLAY = DATA / "local_play.yml"
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def local_inventory(**hostvars: dict[str, Any]) -> dict[str, Any]:
    """Hosts ``one`` and ``two`` on the controller, with extra vars per host."""
    return {name: {**LOCAL, **hostvars.get(name, {})} for name in ("one", "two")}


# -- inventories ------------------------------------------------------------------------------


def test_inventory_forms(tmp_path: Path) -> None:
    spark: dict[str, Any] = {"all": {"children": {"spark": {"hosts": {"a": {}, "b": {}}}}}}
    assert normalize(["a", "b"]) == spark
    assert normalize("a,b") == spark
    assert normalize({"a": None, "b": {}}) == spark
    with_vars = normalize({"a": {"ansible_host": "10.0.0.1"}})
    assert with_vars == {
        "all": {"children": {"spark": {"hosts": {"a": {"ansible_host": "10.0.0.1"}}}}}
    }
    structure = {"spark": {"hosts": {"a": {}}, "vars": {"x": 1}}}
    assert normalize(structure) == structure
    path = tmp_path / "hosts.yml"
    path.write_text("spark:\n  hosts:\n    a:\n")
    assert normalize(path) == str(path) == normalize(str(path))


@pytest.mark.parametrize("bad", ["does/not/exist", [], {}, ["a", 3], {"a": "not a mapping"}])
def test_inventory_errors(bad: Any) -> None:
    with pytest.raises(InventoryError):
        normalize(bad)


# -- the project ------------------------------------------------------------------------------


def test_project_is_found_from_the_package() -> None:
    project = Project.find()
    assert (project.root / "playbooks" / "site.yml").is_file()
    assert project.ansible_env()["ANSIBLE_CONFIG"] == str(project.root / "ansible.cfg")
    assert project.ansible_env()["ANSIBLE_ROLES_PATH"].split(os.pathsep)[0] == str(
        project.root / "roles"
    )


def test_project_errors(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFoundError, match="not a sparkfleet project"):
        Project.find(tmp_path)
    with pytest.raises(ProjectNotFoundError, match=r"/missing does not exist \(the project"):
        Project.find(tmp_path / "missing")
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    (tmp_path / "roles").mkdir()
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "site.yml").write_text("---\n")
    fleet = Fleet(["a"], project_dir=tmp_path)
    with pytest.raises(
        PlaybookNotFoundError, match=r"status\.yml not found .*status\(\).*site\.yml"
    ):
        fleet.status()


# -- the CLI's usage errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy"],  # no inventory
        ["nope", "-i", "x"],  # no such command
        ["deploy", "-i", "/does/not/exist"],
        ["deploy", "-i", "a,b", "--vault-id", "lab@/does/not/exist"],
        ["deploy", "-i", "a,b", "--forks", "0"],
        ["uninstall", "-i", "a,b"],  # no --yes and no terminal
    ],
)
def test_cli_bad_usage_exits_3(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == ExitCode.USAGE
    assert "Error" in capsys.readouterr().err


def test_cli_missing_playbook_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    (project / "playbooks").mkdir(parents=True)
    (project / "roles").mkdir()
    (project / "ansible.cfg").write_text("[defaults]\n")
    argv = ["status", "-i", "a,b", "--project-dir", str(project)]
    assert main(argv) == ExitCode.USAGE
    assert "status.yml not found" in capsys.readouterr().err


def test_cli_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("deploy", "preflight", "fetch", "health", "bench", "restart", "uninstall",
                    "status"):  # fmt: skip
        assert f"  {command} " in out
    assert "Exit codes:" in out and "130" in out


# -- stopping a run ---------------------------------------------------------------------------


def test_control_graceful_then_kill(tmp_path: Path) -> None:
    events: list[FleetEvent] = []
    stop_file = tmp_path / "stop"
    flag = threading.Event()
    control = _Control(flag, CancelToken(), stop_file, 3600.0, events.append, term_grace_s=0)
    assert control() is False and not stop_file.exists()
    flag.set()
    assert control() is False and stop_file.exists()
    assert [e.force for e in events if isinstance(e, StopRequested)] == [False]
    with subprocess.Popen(["sleep", "60"]) as child:
        control.pid = child.pid
        control.token.kill()
        assert control() is False  # SIGTERM sent, the runner does not kill yet
        assert child.wait(timeout=10) == -signal.SIGTERM
    assert control() is True  # term_grace_s passed: the runner kills
    assert [e.force for e in events if isinstance(e, StopRequested)] == [False, True]


def test_control_without_graceful_stop_kills_at_once() -> None:
    events: list[FleetEvent] = []
    control = _Control(lambda: True, CancelToken(), None, 60.0, events.append)
    assert control() is True
    assert [e.force for e in events if isinstance(e, StopRequested)] == [True]


def test_control_grace_expires(tmp_path: Path) -> None:
    token = CancelToken()
    control = _Control(token, CancelToken(), tmp_path / "stop", 0.0, lambda e: None)
    assert control() is False
    token.stop()
    assert control() is True  # grace 0 and no ansible-playbook pid known: the runner kills


def run_local(**kwargs: Any) -> tuple[Any, list[FleetEvent]]:
    """Run the local play; the result and its events."""
    events: list[FleetEvent] = []
    fleet = Fleet(local_inventory(**kwargs.pop("hostvars", {})), forks=2)
    result = fleet.run(PLAY, on_event=events.append, **kwargs)
    return result, events


def test_local_run_reports_retries_facts_and_failures() -> None:
    result, events = run_local(hostvars={"two": {"local_play_fail": True}})
    assert result.exit_code == ExitCode.FAILED and result.failed_hosts == ["two"]
    assert result.hosts["one"].facts["local_play_result"] == {"answer": 42, "host": "one"}
    two = result.hosts["two"]
    assert two.failed_task == "Fail where asked" and two.message == "asked to fail on two"
    retries = [e for e in events if isinstance(e, TaskRetry) and e.host == "one"]
    assert [(e.attempts, e.max_attempts) for e in retries] == [(1, 6), (2, 6)]
    assert result.playbook == "tests/unit/data/local_play.yml"  # relative to the project


def test_graceful_stop_runs_notified_handlers_and_ends_every_play() -> None:
    token = CancelToken()
    seen: list[FleetEvent] = []

    def stop_at_first(event: FleetEvent) -> None:
        seen.append(event)
        if isinstance(event, HostTaskStarted) and event.task == "Change something":
            token.stop()

    fleet = Fleet(local_inventory(), forks=2, extravars={"local_play_sleep": 1}, graceful_stop=True)
    result = fleet.run(PLAY, on_event=stop_at_first, cancel=token)
    assert result.canceled and result.exit_code == ExitCode.INTERRUPTED
    tasks = [(e.task, e.is_handler) for e in seen if isinstance(e, TaskStarted)]
    assert tasks == [("Change something", False), ("Handle the change", True)]
    handled = {
        e.host for e in seen if isinstance(e, HostTaskResult) and e.task == "Handle the change"
    }
    assert handled == {"one", "two"}
    assert all(h.changed == 2 and h.failed == 0 for h in result.hosts.values())


def test_stop_through_a_signal() -> None:
    """SIGINT while handle_signals is on: a graceful stop, and the handler is restored."""
    previous = signal.getsignal(signal.SIGINT)

    def interrupt(event: FleetEvent) -> None:
        if isinstance(event, HostTaskStarted) and event.task == "Retry twice":
            os.kill(os.getpid(), signal.SIGINT)

    fleet = Fleet(local_inventory(), forks=2, graceful_stop=True)
    result = fleet.run(PLAY, on_event=interrupt, handle_signals=True)
    assert result.canceled and not result.failed_hosts
    assert all(h.last_task == "Retry twice" for h in result.hosts.values())
    # the JSON report says the hosts were stopped, as the terminal does
    hosts = json.loads(result.to_json())["hosts"]
    assert {h["status"] for h in hosts.values()} == {"stopped"}, hosts
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_failing_callback_stops_the_run_and_is_raised(tmp_path: Path) -> None:
    started: set[str] = set()

    def broken(event: FleetEvent) -> None:
        if isinstance(event, HostTaskStarted):
            started.add(event.host)
            if started == {"one", "two"}:  # the 30 s task runs on both hosts
                raise RuntimeError("callback bug")

    log = tmp_path / "events.jsonl"
    fleet = Fleet(local_inventory(), extravars={"local_play_sleep": 30}, event_log=log)
    with pytest.raises(RuntimeError, match="callback bug"):
        fleet.run(PLAY, on_event=broken)
    # What ansible-playbook reported before it ended: the 30 s task started on both hosts and
    # was cut short (no result for it, no later task, no recap), so the run was killed, not
    # waited for.
    raw = [json.loads(line) for line in log.read_text().splitlines()]
    seen = [(e["event"], e.get("event_data", {}).get("task")) for e in raw]
    assert seen.count(("runner_on_start", "Change something")) == 2, seen
    tasks = [task for event, task in seen if event == "playbook_on_task_start"]
    assert tasks == ["Change something"], seen
    assert {event for event, _ in seen if event.startswith("runner_on_")} == {"runner_on_start"}
    assert "playbook_on_stats" not in {event for event, _ in seen}, seen


def test_a_limit_that_matches_nothing_is_bad_input() -> None:
    result = Fleet(local_inventory()).run(PLAY, limit="nothing-by-this-name")
    assert result.hosts == {} and result.no_hosts_matched
    assert result.errors and "no hosts to target" in result.errors[0]
    assert result.exit_code == ExitCode.USAGE


def test_vault_password_file(tmp_path: Path) -> None:
    """Vault-encrypted group vars reach the play with the password file, and not without."""
    password = tmp_path / "vault-password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.json").write_text(json.dumps({"spark": {"hosts": local_inventory()}}))
    vaulted = inventory / "group_vars" / "spark.yml"
    vaulted.write_text("local_play_fail: true\n")
    vault = Path(sys.executable).parent / "ansible-vault"
    subprocess.run(
        [vault, "encrypt", "--vault-password-file", password, vaulted],
        check=True,
        capture_output=True,
    )
    assert vaulted.read_text().startswith("$ANSIBLE_VAULT;")
    fleet = Fleet(inventory, vault_password_file=password)
    result = fleet.run(PLAY, limit="two")
    assert result.failed_hosts == ["two"]
    assert result.hosts["two"].message == "asked to fail on two"
    without = Fleet(inventory).run(PLAY, limit="two")
    assert without.exit_code == ExitCode.USAGE and without.hosts == {}
    assert any("vault" in e.lower() for e in without.errors), without.errors
    with pytest.raises(FleetError, match="does not exist"):
        Fleet(inventory, vault_password_file=tmp_path / "missing")


def test_a_strategy_chosen_in_ansible_cfg_is_kept(tmp_path: Path) -> None:
    for name in ("roles", "playbooks"):
        (tmp_path / name).mkdir()
    (tmp_path / "ansible.cfg").write_text("[defaults]\nforks = 5\n")
    ours = Fleet(["a"], project_dir=tmp_path, graceful_stop=True)._environment(tmp_path)
    assert ours["ANSIBLE_STRATEGY"] == "sparkfleet_linear"
    (tmp_path / "ansible.cfg").write_text("[defaults]\nstrategy = free\n")
    theirs = Fleet(["a"], project_dir=tmp_path, graceful_stop=True)._environment(tmp_path)
    assert "ANSIBLE_STRATEGY" not in theirs and "SPARKFLEET_STOP_FILE" not in theirs
    assert "ANSIBLE_STRATEGY" not in Fleet(["a"])._environment(tmp_path)  # opt-in


@pytest.mark.parametrize("tags", ["model", ["preflight", "model"], "service,health"])
def test_an_operation_refuses_tags_outside_its_own(tags: Any) -> None:
    """preflight() runs only the preflight tag: -t model would fetch the model, and is refused
    before anything runs."""
    with pytest.raises(
        FleetError, match=r"preflight runs only the tags preflight; tags (.*model|serv)"
    ):
        Fleet(local_inventory()).preflight(tags=tags)


def test_a_vault_password_file_under_home_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".vault-prod").write_text("pw\n")
    assert VaultId(label="prod", source="~/.vault-prod").source == "~/.vault-prod"
    assert VaultId.parse("prod@~/.vault-prod").label == "prod"
    with pytest.raises(FleetError, match="does not exist"):
        VaultId(source="~/.vault-other")
