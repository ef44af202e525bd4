"""Verify host preparation on the scenario's simulated DGX Sparks (see ../molecule.yml).

The plays reach the hosts over SSH as a sudo user (../../shared/inventory); these checks read the
hosts with `docker exec` (quicker, and independent of what the plays did). The failing and
check-mode runs are ansible-playbook runs of ../converge.yml (json callback) against the
scenario's inventory. Every converge run leaves
begin/end markers in the host's journal, so the Docker restarts, reloads and systemd
daemon-reloads of each run are counted from the journal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]
LAB = Path(os.environ.get("SPARKLAB_DIR", "/var/lib/sparklab"))
LAB_FPR = (LAB / "www" / "nvidia" / "fingerprint").read_text().strip()
BAD_KEY_DIR = LAB / "www" / "tk-badkey"
VERSION = "1.19.0-1"
PACKAGES = [
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
]
IMAGE = "avarok/dgx-vllm-nvfp4-kernel:v23"
OWN_SOURCE = "/etc/apt/sources.list.d/nvidia-container-toolkit.sources"
OWN_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.asc"
CONVERGED = ["tk-bare", "tk-source", "tk-installed", "tk-daemon"]
MODEL_DIR = "/opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4"
# What a second look at a host must find unchanged: apt config, keys, package lists (names,
# sizes, times), Docker's config, installed packages, CDI specs, dockerd's PID.
SNAPSHOT = (
    "find /etc/apt /usr/share/keyrings /etc/docker /var/run/cdi -type f -print0 2>/dev/null"
    " | sort -z | xargs -0 -r sha256sum;"
    " ls -l --time-style=+%s /var/lib/apt/lists;"
    " dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n';"
    " systemctl show -p MainPID docker.service;"
    " systemctl is-enabled nvidia-cdi-refresh.path || true"
)


def sh(host: str, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", "exec", host, "sh", "-c", cmd],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, f"{host}: {cmd}\n{result.stdout}{result.stderr}"
    return result


@dataclass
class Run:
    """One ansible-playbook run, parsed from the json callback."""

    rc: int
    stats: dict[str, dict[str, int]]
    tasks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (name, host results)
    output: str = ""

    def results(self, host: str, task: str) -> list[dict[str, Any]]:
        """Results of ``host`` for the tasks whose name contains ``task``."""
        return [r[host] for name, r in self.tasks if task in name and host in r]

    def report(self, host: str) -> dict[str, Any]:
        facts = self.results(host, "Keep the report as a fact")[0]["ansible_facts"]
        return dict(facts["spark_preflight_report"])

    def failure(self, host: str) -> str:
        failed = [r[host].get("msg", "") for _n, r in self.tasks if r.get(host, {}).get("failed")]
        assert failed, f"{host} did not fail:\n{self.output[-3000:]}"
        return str(failed[-1])


def playbook(hosts: list[str], check: bool = False, tags: str = "", **extra: Any) -> Run:
    """Run converge.yml on ``hosts``."""
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "")
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent if ephemeral else None
    assert inventory and inventory.is_dir(), "run by `molecule verify -s hostprep`"
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_PIPELINING": "True",
        }
    )
    cmd = ["ansible-playbook", "-i", str(inventory), str(SCENARIO / "converge.yml")]
    cmd += ["-e", json.dumps({"hostprep_hosts": ",".join(hosts), **extra})]
    if check:
        cmd += ["--check", "--diff"]
    if tags:
        cmd += ["--tags", tags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=900)
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{") :])
    except ValueError:
        pytest.fail(f"no json from ansible-playbook (rc {proc.returncode}):\n{proc.stderr}")
    tasks = [(t["task"]["name"], t["hosts"]) for play in data["plays"] for t in play["tasks"]]
    return Run(proc.returncode, data["stats"], tasks, proc.stdout + proc.stderr)


@dataclass
class DockerActivity:
    """What happened to docker.service (and systemd) during one marked converge run."""

    starts: int = 0
    stops: int = 0
    reloads: int = 0
    daemon_reloads: int = 0
    pid_begin: str = ""
    pid_end: str = ""


def runs_in_journal(host: str) -> list[DockerActivity]:
    """Docker activity of each converge run, in order, from the host's journal."""
    out = sh(
        host,
        "journalctl -o json --no-pager _PID=1 + SYSLOG_IDENTIFIER=sparkfleet-converge",
    ).stdout
    runs: list[DockerActivity] = []
    current: DockerActivity | None = None
    for line in out.splitlines():
        entry = json.loads(line)
        message = str(entry.get("MESSAGE", ""))
        if entry.get("SYSLOG_IDENTIFIER") == "sparkfleet-converge":
            kind, _, pid = message.partition(" docker=")
            if kind == "begin":
                current = DockerActivity(pid_begin=pid)
                runs.append(current)
            elif kind == "end" and current is not None:
                current.pid_end = pid
                current = None
            continue
        if current is None:
            continue
        if message == "Reloading.":
            current.daemon_reloads += 1
        if entry.get("UNIT") == "docker.service" and entry.get("JOB_RESULT") == "done":
            job = entry.get("JOB_TYPE")
            current.starts += job == "start"
            current.stops += job in ("stop", "restart")
            current.reloads += job == "reload"
    return runs


def snapshot(host: str) -> str:
    return sh(host, SNAPSHOT).stdout


# --- the converge and idempotence runs molecule made ---------------------------------------


@pytest.mark.parametrize("host", CONVERGED)
def test_docker_restarted_only_when_needed_and_never_on_the_second_run(host: str) -> None:
    runs = runs_in_journal(host)
    assert len(runs) >= 2, runs
    first, second = runs[0], runs[1]
    if host == "tk-installed":
        # toolkit and runtime already there: the registry mirror was added by a reload, the CDI
        # units enabled without a systemd daemon-reload
        assert (first.starts, first.stops, first.reloads) == (0, 0, 1), first
        assert first.daemon_reloads == 0
        assert first.pid_begin == first.pid_end
    else:
        # the toolkit was installed: dockerd must restart to offer --gpus
        assert (first.starts, first.stops, first.reloads) == (1, 1, 0), first
        assert first.pid_begin != first.pid_end
    assert second == DockerActivity(pid_begin=first.pid_end, pid_end=first.pid_end), second


def test_operator_daemon_json_kept_byte_for_byte() -> None:
    original = sh("tk-daemon", "cat /root/operator-daemon.json").stdout
    current = sh("tk-daemon", "cat /etc/docker/daemon.json").stdout
    assert current == (SCENARIO / "files" / "operator-daemon.expected.json").read_text()
    before, after = json.loads(original), json.loads(current)
    for key, value in before.items():
        if key not in ("registry-mirrors", "runtimes"):
            assert after[key] == value, key
            # the key's line(s) are in the file exactly as the operator wrote them
            line = next(ln for ln in original.splitlines() if ln.startswith(f'  "{key}"'))
            assert line.rstrip(",") in current
    assert after["registry-mirrors"] == ["http://127.0.0.1:35999", "http://172.29.78.1:35000"]
    assert after["runtimes"]["operator-runc"] == before["runtimes"]["operator-runc"]
    backups = sh("tk-daemon", "cat /etc/docker/daemon.json.*~").stdout
    assert backups == original
    info = json.loads(sh("tk-daemon", "docker info --format '{{json .}}'").stdout)
    assert info["DockerRootDir"] == "/var/lib/docker/operator-root"
    assert set(info["Runtimes"]) >= {"operator-runc", "nvidia", "runc"}
    assert info["RegistryConfig"]["Mirrors"] == [
        "http://127.0.0.1:35999/",
        "http://172.29.78.1:35000/",
    ]


@pytest.mark.parametrize("host", CONVERGED)
def test_apt_has_one_nvidia_source_and_the_pinned_packages(host: str) -> None:
    update = sh(host, "apt-get update 2>&1")
    assert "Conflicting values" not in update.stdout
    assert "172.29.78.1:38081/nvidia" in update.stdout
    versions = sh(host, "dpkg-query -W -f '${Package} ${Version}\\n' " + " ".join(PACKAGES))
    assert sorted(versions.stdout.split("\n")[:-1]) == sorted(f"{p} {VERSION}" for p in PACKAGES)
    own = sh(host, f"cat {OWN_SOURCE}", check=False)
    if host in ("tk-bare", "tk-daemon"):
        assert own.stdout.endswith(
            "Types: deb\nURIs: http://172.29.78.1:38081/nvidia/stable/deb/$(ARCH)\n"
            f"Suites: /\nSigned-By: {OWN_KEYRING}\n"
        )
        colons = sh(host, f"gpg --show-keys --with-colons {OWN_KEYRING}").stdout
        assert f"fpr:::::::::{LAB_FPR}:" in colons
    else:
        # the host's own source was adopted: none added, no keyring written
        assert own.returncode != 0
        assert sh(host, f"test -e {OWN_KEYRING}", check=False).returncode != 0
        theirs = {
            "tk-source": "/etc/apt/sources.list.d/nvidia-container-toolkit.list",
            "tk-installed": "/etc/apt/sources.list.d/nvidia-ctk.sources",
        }[host]
        assert "172.29.78.1:38081/nvidia/stable/deb/" in sh(host, f"cat {theirs}").stdout


@pytest.mark.parametrize("host", CONVERGED)
def test_gpus_all_and_cdi(host: str) -> None:
    runtimes = json.loads(sh(host, "docker info --format '{{json .Runtimes}}'").stdout)
    assert "nvidia" in runtimes
    gpu = sh(host, f"docker run --rm --gpus all --entrypoint nvidia-smi {IMAGE} -L").stdout
    assert gpu.startswith("GPU 0: NVIDIA GB10")
    assert "nvidia.com/gpu=all" in sh(host, "nvidia-ctk cdi list").stdout
    assert sh(host, "systemctl is-enabled nvidia-cdi-refresh.path").stdout.strip() == "enabled"


# --- two more runs driven from here ----------------------------------------------------------
# A: check mode on every host (pf-fail with spark_preflight_fail=false, so that the toolkit role
#    also runs there, on a host that has none of it).
# B: a real run on tk-badkey, pf-fail, tk-bare, on tk-installed while it serves (a container
#    publishing port 8000) and on tk-source after it gained a clashing copy of the role's source;
#    with a CDI minimum above the installed toolkit's version.

ALL = [*CONVERGED, "tk-badkey", "pf-fail"]
RUN_B = ["tk-badkey", "pf-fail", "tk-bare", "tk-installed", "tk-source"]
PREFLIGHT_PROBLEMS = [
    "architecture is x86_64, expected spark_preflight_expected_arch=aarch64",
    "OS is debian 13 (Debian GNU/Linux 13 (trixie)), expected one of "
    "spark_preflight_os_releases=ubuntu 24.04",
    "driver 535.104.05 is older than spark_preflight_min_driver_version=580.0",
    "Docker engine not running: docker.service is inactive (dead, masked)",
    re.compile(
        r"disk: [0-9.]+ GB free on /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4, but the"
        r" model fetch needs 200000.0 GB under /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4"
        r" \(20 of 21 files listed in .sparkfleet-manifest.json missing\) plus"
        r" spark_preflight_disk_margin_gb=1: [0-9.]+ GB short"
    ),
    re.compile(
        r"port 8000 \(spark_preflight_port\) is taken by .*python3 -m http.server 8000 \(pid \d+\),"
        r" not by container minimax"
    ),
]


@dataclass
class Driven:
    run: Run
    before: dict[str, str]
    after: dict[str, str]


@pytest.fixture(scope="module")
def run_a() -> Driven:
    before = {h: snapshot(h) for h in ALL}
    run = playbook(ALL, check=True, spark_preflight_fail=False)
    return Driven(run, before, {h: snapshot(h) for h in ALL})


@pytest.fixture(scope="module")
def run_b(run_a: Driven) -> Driven:
    for path in (OWN_SOURCE, OWN_KEYRING):  # as if the role had run before NVIDIA's setup
        content = sh("tk-bare", f"cat {path}").stdout
        subprocess.run(
            ["docker", "exec", "-i", "tk-source", "sh", "-c", f"cat > {path}"],
            input=content,
            text=True,
            check=True,
        )
    broken = sh("tk-source", "apt-get update 2>&1", check=False)
    assert broken.returncode != 0
    assert "Conflicting values set for option Signed-By" in broken.stdout
    sh("tk-installed", f"docker run -d --name minimax -p 8000:8000 --entrypoint sleep {IMAGE} 600")
    started = "docker inspect -f '{{.State.Running}} {{.State.StartedAt}}' minimax"
    serving = sh("tk-installed", started).stdout
    before = {h: snapshot(h) for h in RUN_B}
    try:
        # a toolkit older than the CDI minimum: no CDI tasks (the version is compared)
        run = playbook(RUN_B, nvidia_container_toolkit_cdi_min_version="1.100.0")
        after = {h: snapshot(h) for h in RUN_B}
        assert serving.startswith("true ")
        assert sh("tk-installed", started).stdout == serving  # never restarted
    finally:
        sh("tk-installed", "docker rm -f minimax", check=False)
    return Driven(run, before, after)


def assert_no_docker_activity(host: str) -> None:
    last = runs_in_journal(host)[-1]
    assert (last.starts, last.stops, last.reloads, last.daemon_reloads) == (0, 0, 0, 0), last


def test_check_mode_changes_nothing(run_a: Driven) -> None:
    assert run_a.after == run_a.before
    for host in ALL:
        assert_no_docker_activity(host)


def test_check_mode_on_converged_hosts_reports_no_change(run_a: Driven) -> None:
    for host in CONVERGED:
        assert run_a.run.stats[host]["changed"] == 0, host
        assert run_a.run.stats[host]["failures"] == 0, host


def test_check_mode_on_a_bare_host_reports_what_a_run_would_do(run_a: Driven) -> None:
    run = run_a.run
    assert run.stats["pf-fail"]["failures"] == 0
    assert run.stats["pf-fail"]["changed"] >= 6
    key = run.results("pf-fail", "Install NVIDIA's signing key")[0]
    assert key["changed"] and key["diff"]["after"] == f"key {LAB_FPR}\n"
    source = run.results("pf-fail", "Write NVIDIA's apt source")[0]
    assert "Signed-By: " + OWN_KEYRING in source["diff"][0]["after"]
    assert run.results("pf-fail", "Refresh the apt cache")[0]["changed"]
    would = run.results("pf-fail", "Report the packages a real run installs")[0]
    assert would["changed"] and VERSION in would["msg"]
    daemon = run.results("pf-fail", "Merge the nvidia runtime into Docker's daemon.json")[0]
    # the host's daemon.json as the image ships it (CDI on, as Docker >= 28.2 has it by default)
    assert daemon["changed"] and json.loads(daemon["diff"]["before"]) == {"features": {"cdi": True}}
    assert json.loads(daemon["diff"]["after"]) == {
        "features": {"cdi": True},
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
        "registry-mirrors": ["http://172.29.78.1:35000"],
    }
    assert run.results("pf-fail", "Apply the Docker configuration")[0]["changed"]
    assert run.results("pf-fail", "Check that a container started with --gpus")[0]["skipped"]


def test_check_mode_reports_preflight_problems(run_a: Driven) -> None:
    assert_preflight_problems(run_a.run)


def test_check_mode_refuses_the_wrong_key(run_a: Driven) -> None:
    assert_wrong_key_refused(run_a.run)


def assert_preflight_problems(run: Run) -> None:
    report = run.report("pf-fail")
    assert report["ok"] is False
    problems = report["problems"]
    assert len(problems) == len(PREFLIGHT_PROBLEMS), problems
    for problem, expected in zip(problems, PREFLIGHT_PROBLEMS, strict=True):
        if isinstance(expected, str):
            assert problem == expected
        else:
            assert expected.fullmatch(problem), problem
    assert (report["gpu"]["memory_total"], report["gpu"]["memory_total_mib"]) == ("[N/A]", None)
    shown = run.results("pf-fail", "Show the host report")[0]["msg"]
    assert "PROBLEMS:" in shown and f"  - {problems[0]}" in shown


def assert_wrong_key_refused(run: Run) -> None:
    assert run.stats["tk-badkey"]["failures"] == 1
    bad_fpr = (BAD_KEY_DIR / "fingerprint").read_text().strip()
    assert bad_fpr != LAB_FPR
    assert run.failure("tk-badkey") == (
        f"the key from http://172.29.78.1:38081/tk-badkey/gpgkey has fingerprint(s) {bad_fpr},"
        f" expected nvidia_container_toolkit_gpg_fingerprint={LAB_FPR}; the key was not installed"
    )


def test_unready_host_fails_with_every_problem_and_its_numbers(run_b: Driven) -> None:
    run = run_b.run
    assert run.stats["pf-fail"]["failures"] == 1 and run.stats["pf-fail"]["changed"] == 0
    assert_preflight_problems(run)
    message = run.failure("pf-fail")
    assert message.startswith("pf-fail is not ready (6 problem(s)): ")
    assert all(p in message for p in run.report("pf-fail")["problems"])
    assert not run.results("pf-fail", "Find NVIDIA apt sources")  # stopped before the toolkit
    assert run_b.after["pf-fail"] == run_b.before["pf-fail"]


def test_wrong_key_fails_again_and_changes_nothing(run_b: Driven) -> None:
    assert_wrong_key_refused(run_b.run)
    assert run_b.after["tk-badkey"] == run_b.before["tk-badkey"]
    assert sh("tk-badkey", f"test -e {OWN_KEYRING} || test -e {OWN_SOURCE}", False).returncode
    assert_no_docker_activity("tk-badkey")


def test_serving_host_keeps_serving(run_b: Driven) -> None:
    run = run_b.run
    assert (run.stats["tk-installed"]["changed"], run.stats["tk-installed"]["failures"]) == (0, 0)
    assert run.report("tk-installed")["port"] == {
        "number": 8000,
        "state": "ours",
        "owner": "container minimax",
    }
    assert run_b.after["tk-installed"] == run_b.before["tk-installed"]
    assert_no_docker_activity("tk-installed")


def test_third_run_on_a_bare_host_is_still_a_no_op(run_a: Driven, run_b: Driven) -> None:
    run = run_b.run
    assert (run.stats["tk-bare"]["changed"], run.stats["tk-bare"]["failures"]) == (0, 0)
    assert run_b.after["tk-bare"] == run_b.before["tk-bare"]
    assert_no_docker_activity("tk-bare")
    cdi = "Read whether the CDI refresh units are enabled"
    assert run.results("tk-bare", cdi)[0].get("skipped") is True  # 1.19.0 < 1.100.0
    assert run_a.run.results("tk-bare", cdi)[0]["stdout"] == "enabled\nenabled"  # 1.19.0 >= 1.18.0
    report = run.report("tk-bare")
    assert report["ok"] is True and report["problems"] == []
    assert report["port"] == {"number": 8000, "state": "free", "owner": ""}
    assert (report["arch"], report["os"]["id"], report["os"]["version_id"]) == (
        "x86_64",
        "debian",
        "13",
    )
    assert (report["gpu"]["name"], report["gpu"]["driver_version"]) == ("NVIDIA GB10", "580.95.05")
    assert report["gpu"]["memory_total"] == "[N/A]"
    assert report["docker"]["running"] is True
    assert report["docker"]["server_version"].startswith("26.1")
    disk = report["disk"]
    assert (disk["model_dir"], disk["basis"]) == (MODEL_DIR, "model_size")
    assert (disk["needed_bytes"], disk["required_bytes"]) == (100_000_000, 1_100_000_000)
    assert disk["free_bytes"] > disk["required_bytes"]


def test_a_clashing_source_of_its_own_is_removed(run_b: Driven) -> None:
    run = run_b.run
    assert run.stats["tk-source"]["failures"] == 0
    assert run.results("tk-source", "Remove the role's own source")[0]["changed"]
    assert not run.results("tk-source", "Refresh the apt cache")[0].get("skipped")
    assert sh("tk-source", f"test -e {OWN_SOURCE}", check=False).returncode != 0
    assert "Conflicting" not in sh("tk-source", "apt-get update 2>&1").stdout
    assert_no_docker_activity("tk-source")
