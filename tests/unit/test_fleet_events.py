"""sparkfleet's event parsing, results and display, on ansible-runner events from real runs.

The events in ``data/*.jsonl`` were recorded by ``data/record_events.py`` from runs on a simulated
host of the lab (trimmed: gathered facts and module invocations dropped, long strings cut):

- ``preflight_mixed``: preflight on three hosts, one ok, one failing its architecture check, one
  unreachable;
- ``deploy_stopped``: a deploy stopped gracefully during the toolkit role;
- ``deploy``: the deploy that followed, to the end;
- ``health``: the health check after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sparkfleet.display import HostBoard, PlainView, host_detail, print_summary
from sparkfleet.events import (
    STOP_ACKNOWLEDGED,
    AnsibleWarning,
    DownloadProgress,
    FleetEvent,
    HostTaskResult,
    HostTaskStarted,
    PlayStarted,
    TaskStarted,
    TaskStatus,
    event_to_dict,
    failure_message,
    parse_event,
)
from sparkfleet.result import ExitCode, HostResult, RunCollector, RunResult

pytestmark = pytest.mark.nolab

DATA = Path(__file__).resolve().parent / "data"
HOST, BAD, GONE = "api-rec-1", "api-rec-bad", "api-rec-gone"
STOPPED_AFTER = "Merge the settings into Docker's daemon.json"  # the recorder stops after it


def raw_events(name: str) -> list[dict[str, Any]]:
    """The recorded raw events of one run."""
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def runner_stats(raws: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What ansible-runner's ``Runner.stats`` gives for these events (None without a recap)."""
    recap = [r["event_data"] for r in raws if r["event"] == "playbook_on_stats"]
    if not recap:
        return None
    keys = ("skipped", "ok", "dark", "failures", "ignored", "rescued", "processed", "changed")
    return {key: recap[0].get(key, {}) for key in keys}


def replay(
    raws: list[dict[str, Any]], status: str = "successful", rc: int = 0
) -> tuple[RunResult, list[FleetEvent]]:
    """Feed recorded events to a collector as a run does; the result and the typed events."""
    collector = RunCollector()
    events: list[FleetEvent] = []
    for raw in raws:
        collector.add_raw(raw)
        for event in parse_event(raw):
            collector.add(event)
            events.append(event)
    collector.set_stats(runner_stats(raws))
    result = collector.result(
        operation="test", playbook="playbooks/site.yml", status=status, rc=rc, elapsed_s=1.0
    )
    return result, events


@pytest.fixture(scope="module")
def mixed() -> tuple[RunResult, list[FleetEvent]]:
    """The preflight on an ok, a failing and an unreachable host (ansible-playbook rc 4)."""
    return replay(raw_events("preflight_mixed"), status="failed", rc=4)


def test_mixed_preflight_per_host_outcome(mixed: tuple[RunResult, list[FleetEvent]]) -> None:
    result, _ = mixed
    assert set(result.hosts) == {HOST, BAD, GONE}
    ok, bad, gone = result.hosts[HOST], result.hosts[BAD], result.hosts[GONE]
    assert (ok.status, bad.status, gone.status) == ("ok", "failed", "unreachable")
    assert ok.failed_task is None and ok.message == ""
    assert bad.failed_task == "spark_preflight : Stop on unmet requirements"
    assert bad.message == (
        f"{BAD} is not ready (1 problem(s)): architecture is x86_64, "
        "expected spark_preflight_expected_arch=aarch64"
    )
    assert gone.failed_task == "Gathering Facts"
    assert "ssh: connect to host 172.29.78.254 port 22" in gone.message
    assert result.failed_hosts == [BAD] and result.unreachable_hosts == [GONE]
    assert result.exit_code == ExitCode.UNREACHABLE
    assert not result.canceled and result.errors == []


def test_mixed_preflight_facts(mixed: tuple[RunResult, list[FleetEvent]]) -> None:
    result, _ = mixed
    report = result.hosts[HOST].preflight_report
    assert report is not None
    assert report["arch"] == "x86_64" and report["gpu"]["name"] == "NVIDIA GB10"
    assert report["disk"]["free_bytes"] > 0 and report["port"]["state"] == "free"
    assert result.hosts[GONE].preflight_report is None
    assert set(result.facts("spark_preflight_report")) == {HOST, BAD}


def test_counts_from_events_match_ansibles_recap() -> None:
    """Without the recap (a killed run), the counts come from the results seen: the same."""
    for name in ("preflight_mixed", "deploy", "deploy_stopped"):
        raws = raw_events(name)
        with_recap, _ = replay(raws)
        without, _ = replay([r for r in raws if r["event"] != "playbook_on_stats"])
        assert with_recap.hosts.keys() == without.hosts.keys()
        for host in with_recap.hosts.values():
            other = without.hosts[host.name]
            got = (other.ok, other.changed, other.failed, other.unreachable, other.skipped)
            want = (host.ok, host.changed, host.failed, host.unreachable, host.skipped)
            assert got == want, f"{name} {host.name}"


def test_typed_events_of_a_run(mixed: tuple[RunResult, list[FleetEvent]]) -> None:
    _, events = mixed
    assert isinstance(events[0], PlayStarted) and events[0].pattern == "spark"
    first_task = next(e for e in events if isinstance(e, TaskStarted))
    assert first_task.task == "Gathering Facts" and first_task.role is None
    starts = {e.host for e in events if isinstance(e, HostTaskStarted)}
    assert starts == {HOST, BAD, GONE}
    unreachable = [e for e in events if isinstance(e, HostTaskResult) and e.host == GONE]
    assert [e.status for e in unreachable] == [TaskStatus.UNREACHABLE]
    assert unreachable[0].is_failure
    gather = next(e for e in events if isinstance(e, HostTaskResult) and e.host == HOST)
    assert gather.action == "gather_facts" and gather.result == {"changed": False}
    facts = [e for e in events if isinstance(e, HostTaskResult) and e.facts]
    assert {e.task for e in facts} == {"Keep the report as a fact"}
    for event in events:
        json.dumps(event_to_dict(event))


def test_deploy_results() -> None:
    result, events = replay(raw_events("deploy"))
    assert result.exit_code == ExitCode.OK and result.ok
    host = result.hosts[HOST]
    assert host.changed > 0 and host.failed == 0
    manifest = host.model_manifest
    assert manifest is not None and len(manifest["commit"]) == 40
    assert "model.safetensors.index.json" in manifest["files"]
    health = host.health
    assert health is not None and health.healthy
    assert isinstance(health.chat_seconds, float) and health.chat_seconds > 0
    assert isinstance(health.completion_tokens, int) and health.completion_tokens > 0
    # the check ran on the host's loopback; the endpoint reported is the one a controller reaches
    assert health.endpoint == "http://127.0.0.1:8000/v1"
    assert host.endpoint is not None and host.endpoint.startswith("http://172.29.78.")
    detail = host_detail(host)
    assert "serves MiniMax-M2.5-REAP-172B-NVFP4" in detail and host.endpoint in detail
    assert "127.0.0.1" not in detail and f"@{manifest['commit'][:12]}" in detail
    changed = {e.task for e in events if isinstance(e, HostTaskResult) and e.status == "changed"}
    assert not any(STOPPED_AFTER in task for task in changed)  # merged before the stop
    assert any(task.startswith("Apply Docker's configuration") for task in changed), changed
    assert "Wait for the fetch, reporting its progress" in changed  # the model was fetched


def test_health_run_changes_nothing() -> None:
    result, _ = replay(raw_events("health"))
    host = result.hosts[HOST]
    assert result.ok and host.changed == 0 and host.health is not None


def test_gracefully_stopped_deploy() -> None:
    result, events = replay(raw_events("deploy_stopped"))
    assert result.canceled and result.status == "canceled"
    assert result.exit_code == ExitCode.INTERRUPTED
    ack = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, AnsibleWarning) and e.message.startswith(STOP_ACKNOWLEDGED)
    )
    # the roles converge on state: no handler is left to run, so nothing starts after the stop
    assert [e.task for e in events[ack:] if isinstance(e, TaskStarted)] == []
    assert result.hosts[HOST].succeeded
    in_flight = "nvidia_container_toolkit : Give the Docker client the registry credentials"
    assert (result.hosts[HOST].last_task or "").startswith(in_flight)
    merged = [e for e in events[:ack] if isinstance(e, HostTaskResult) and STOPPED_AFTER in e.task]
    assert [e.status for e in merged] == ["changed"]


def test_board_and_summary_of_a_stopped_deploy() -> None:
    raws = raw_events("deploy_stopped")
    result, events = replay(raws)
    board = HostBoard(title="sparkfleet deploy (site.yml)", started=events[0].time)
    for event in events:
        board.update(event)
    console = Console(record=True, width=160, color_system=None)
    console.print(board.render(now=events[-1].time))
    live = console.export_text()
    assert HOST in live and "running" in live and "Give the Docker client" in live
    board.finish(result)
    console.print(board.render(now=events[-1].time))
    print_summary(console, result)
    final = console.export_text()
    assert final.count("stopped") >= 2  # the host's state in the table and in the summary
    assert "test (playbooks/site.yml): stopped in 1.0 s; 1 stopped" in final


def test_plain_lines_of_the_mixed_preflight(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    view = PlainView(sys.stdout)
    for raw in raw_events("preflight_mixed"):
        for event in parse_event(raw):
            view.on_event(event)
    lines = capsys.readouterr().out.splitlines()
    failed = [ln for ln in lines if f" {BAD} " in ln and " failed " in ln]
    assert len(failed) == 1
    assert failed[0].endswith(
        f"spark_preflight : Stop on unmet requirements: {BAD} is not ready (1 problem(s)): "
        "architecture is x86_64, expected spark_preflight_expected_arch=aarch64"
    )
    assert any(f" {GONE} " in ln and " unreachable " in ln for ln in lines)
    assert not any("skipped" in ln for ln in lines)
    assert any("spark_preflight : validate the arguments" in ln for ln in lines)


def test_the_table_computes_a_rate_from_two_reports_without_one() -> None:
    board = HostBoard(title="t")
    board.update(DownloadProgress(host=HOST, bytes_done=1_000, bytes_total=4_000, time=10.0))
    board.update(DownloadProgress(host=HOST, bytes_done=3_000, bytes_total=4_000, time=12.0))
    latest = board.rows[HOST].download
    assert latest is not None and latest.rate_bps == 1_000.0 and latest.fraction == 0.75
    assert DownloadProgress(host="h", bytes_done=5, bytes_total=0).fraction is None


@pytest.mark.parametrize(
    ("res", "message"),
    [
        ({"msg": "plain"}, "plain"),
        ({"msg": "non-zero return code", "rc": 2, "stderr": "a\nb\n", "stdout": ""}, "rc=2: a\nb"),
        ({"rc": 1, "stdout": "only stdout"}, "only stdout"),
        ({"results": [{"failed": False}, {"failed": True, "msg": "item two"}]}, "item two"),
        ({"module_stderr": "Trace\nBoom", "exception": "(traceback unavailable)"}, "Trace\nBoom"),
        ({"msg": "\x1b[0;31mcoloured\x1b[0m"}, "coloured"),
        ({}, ""),
    ],
)  # fmt: skip
def test_failure_message(res: dict[str, Any], message: str) -> None:
    assert failure_message(res) == message


def test_summary_line_names_the_os_of_a_report_that_maps_os_release() -> None:
    """The preflight report holds /etc/os-release's fields; the line shows its pretty name."""
    report = {
        "arch": "aarch64",
        "os": {"id": "ubuntu", "version_id": "24.04", "pretty_name": "Ubuntu 24.04.3 LTS"},
        "gpu": {"name": "NVIDIA GB10", "driver_version": "580.95.05"},
        "docker": {"server_version": "28.5.1"},
        "disk": {"free_bytes": 3.2e12, "path": "/opt/huggingface/models/M"},
    }
    host = HostResult("spark-01", ok=5, facts={"spark_preflight_report": report})
    assert host_detail(host) == (
        "aarch64, Ubuntu 24.04.3 LTS, GPU NVIDIA GB10 (driver 580.95.05), Docker 28.5.1, "
        "3.2 TB free on /opt/huggingface/models/M"
    )


def test_a_check_mode_health_result_is_not_a_serving_endpoint() -> None:
    """In check mode the health role sends no request (``healthy: none, checked: false``): the
    summary says so, instead of claiming the endpoint serves the model."""
    fact = {"endpoint": "http://127.0.0.1:8000/v1", "client_endpoint": "http://10.0.0.11:8000/v1",
            "model": "M", "healthy": None, "checked": False}  # fmt: skip
    host = HostResult("spark-01", ok=5, facts={"vllm_health_result": fact})
    assert host.health is not None and not host.health.checked and not host.health.healthy
    assert (
        host_detail(host)
        == "endpoint http://10.0.0.11:8000/v1 not checked (check mode sends no request)"
    )
    unhealthy = {**fact, "checked": True, "healthy": False}
    failed = HostResult("spark-01", ok=5, facts={"vllm_health_result": unhealthy})
    assert "does not serve M" in host_detail(failed)


def test_an_error_keeps_its_further_lines() -> None:
    """ansible-core 2.19 prints an error's lines as separate verbose events, up to a blank one:
    the error keeps them (the path it could not read), and nothing after the blank line."""
    collector = RunCollector()
    lines = [
        "\x1b[1;35m[WARNING]: No inventory was parsed\x1b[0m",
        "\x1b[0;31m[ERROR]: Unable to retrieve file contents.\x1b[0m",
        "\x1b[0;31mCould not find or access '/tmp/x/missing.yml' on the Ansible Controller.\x1b[0m",
        "\x1b[0;31m\x1b[0m",
        "PLAY RECAP",
    ]
    for line in lines:
        collector.add_raw({"event": "verbose", "stdout": line})
    assert collector.errors == [
        "Unable to retrieve file contents. Could not find or access '/tmp/x/missing.yml' on the "
        "Ansible Controller."
    ]
