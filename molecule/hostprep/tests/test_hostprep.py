"""Verify host preparation on the scenario's simulated DGX Sparks (see ../molecule.yml).

The plays reach the hosts over SSH as a sudo user (../../shared/inventory); these checks read the
hosts with `docker exec` (quicker, and independent of what the plays did). The failing and
check-mode runs are ansible-playbook runs of ../converge.yml (json callback) against the
scenario's inventory. Every converge run leaves
begin/end markers in the host's journal, so the Docker restarts, reloads and systemd
daemon-reloads of each run are counted from the journal.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab.hosts import sh

SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]
LAB = Path(os.environ.get("SPARKLAB_DIR", "/var/lib/sparklab"))
LAB_FPR = (LAB / "www" / "nvidia" / "fingerprint").read_text().strip()
BAD_KEY_DIR = LAB / "www" / "tk-badkey"
NVIDIA_VERSION = "1.19.0-1"  # the newest in the stand-in NVIDIA repository
DGX_VERSION = "1.20.0-1"  # what the stand-in DGX OS ships (tests/lab/flavours/dgx_os.yml)
DGX_UPDATE = "1.20.1-1"  # what a later DGX OS update brings
PACKAGES = [
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
]
IMAGE = "avarok/dgx-vllm-nvfp4-kernel:v23"
OWN_SOURCE = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
OWN_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
OWN_LINE = f"deb [signed-by={OWN_KEYRING}] http://172.29.78.1:38081/nvidia/stable/deb/$(ARCH) /\n"
DGX = ["dgx-runtime", "dgx-default", "dgx-none", "dgx-pinned"]
CONVERGED = ["tk-bare", "tk-source", "tk-installed", "tk-daemon", *DGX]
VERSIONS = {h: NVIDIA_VERSION for h in CONVERGED} | {
    "dgx-runtime": DGX_VERSION,
    "dgx-default": DGX_VERSION,
    "dgx-none": DGX_VERSION,
}
# hosts whose toolkit the role installed (the others kept what they had)
INSTALLED_BY_ROLE = ["tk-bare", "tk-source", "tk-daemon", "dgx-pinned"]
FRESH_INSTALL = ["tk-bare", "tk-source", "tk-daemon"]  # no toolkit at all before the role
CUDA_CHECK = (
    "nvidia-smi -L && python3 -c \"import ctypes, sys; r = ctypes.CDLL('libcuda.so.1').cuInit(0);"
    " print('cuInit(0) =', r); sys.exit(0 if r == 0 else 1)\""
)
MODEL_DIR = "/opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4"
PENDING = "/var/lib/sparkfleet/docker-restart-pending.json"
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


def gpu_check(host: str, device: str, name: str = "") -> subprocess.CompletedProcess[str]:
    """nvidia-smi -L and CUDA's cuInit in a new container (or in container ``name``)."""
    if name:
        cmd = f"docker exec {name} sh -c {shlex.quote(CUDA_CHECK)}"
    else:
        cmd = f"docker run --rm {device} --entrypoint sh {IMAGE} -c {shlex.quote(CUDA_CHECK)}"
    return sh(host, cmd, check=False)


@pytest.mark.parametrize("host", CONVERGED)
def test_docker_restarted_only_for_a_first_hook_on_an_idle_host_and_never_twice(host: str) -> None:
    runs = runs_in_journal(host)
    assert len(runs) >= 2, runs
    first, second = runs[0], runs[1]
    if host in FRESH_INSTALL:
        # the role installed the hook after dockerd started and no container runs: one restart,
        # so that `docker run --gpus` works too (the service itself uses CDI where it can)
        assert (first.starts, first.stops, first.reloads) == (1, 1, 0), first
        assert first.pid_begin != first.pid_end
    else:
        # the hook was on PATH when dockerd started (dgx-pinned's downgrade replaced it, which is
        # no reason to restart): the lab's registry mirror, a reloadable key, is applied by one
        # reload and the same dockerd keeps running
        assert (first.starts, first.stops, first.reloads) == (0, 0, 1), first
        assert first.pid_begin == first.pid_end
    if host not in INSTALLED_BY_ROLE:
        assert first.daemon_reloads == 0, first  # units enabled with --no-reload
    assert second == DockerActivity(pid_begin=first.pid_end, pid_end=first.pid_end), second


@pytest.mark.parametrize("host", CONVERGED)
def test_toolkit_kept_or_installed_and_one_source(host: str) -> None:
    update = sh(host, "apt-get update 2>&1")
    assert "Conflicting values" not in update.stdout
    versions = sh(host, "dpkg-query -W -f '${Package} ${Version}\\n' " + " ".join(PACKAGES))
    expected = sorted(f"{p} {VERSIONS[host]}" for p in PACKAGES)
    assert sorted(versions.stdout.split("\n")[:-1]) == expected
    own = sh(host, f"cat {OWN_SOURCE}", check=False)
    if host in ("tk-bare", "tk-daemon", "dgx-pinned", "tk-source"):
        # NVIDIA's guide's names: written by the role, or (tk-source) by the operator
        assert own.stdout == OWN_LINE
        colons = sh(host, f"gpg --show-keys --with-colons {OWN_KEYRING}").stdout
        assert f"fpr:::::::::{LAB_FPR}:" in colons
    else:
        assert own.returncode != 0
        assert sh(host, f"test -e {OWN_KEYRING}", check=False).returncode != 0
    if host in DGX:
        assert (
            "/etc/apt/sources.list.d/dgx.sources" in sh(host, "ls /etc/apt/sources.list.d/*").stdout
        )


def test_dgx_hosts_keep_what_they_shipped_with() -> None:
    for host in ("dgx-runtime", "dgx-default", "dgx-none"):
        daemon = json.loads(sh(host, "cat /etc/docker/daemon.json").stdout)
        assert daemon.get("features", {}).get("cdi") is True, host
        assert ("nvidia" in daemon.get("runtimes", {})) == (host != "dgx-none"), host
        assert (daemon.get("default-runtime") == "nvidia") == (host == "dgx-default"), host
        assert daemon["registry-mirrors"] == ["http://172.29.78.1:35000"]  # the lab's option
        assert sh(host, "systemctl is-enabled nvidia-cdi-refresh.path").stdout.strip() == "enabled"
        assert "nvidia.com/gpu=all" in sh(host, "nvidia-ctk cdi list").stdout


@pytest.mark.parametrize("host", CONVERGED)
def test_a_container_gets_the_gpu_up_to_cuda(host: str) -> None:
    device = "--gpus all" if host == "tk-daemon" else "--device nvidia.com/gpu=all"
    result = gpu_check(host, device)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("GPU 0: NVIDIA GB10")
    assert "cuInit(0) = 0" in result.stdout


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
    assert sh(
        "tk-daemon", "test -e /var/lib/sparkfleet/docker-restart-pending.json", False
    ).returncode


# --- what systemd, the driver and DGX OS updates do to a prepared host ------------------------


def _wait_for(predicate: Callable[[], bool], what: str, tries: int = 60) -> None:
    for _ in range(tries):
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_daemon_reload_takes_the_gpu_from_hook_containers_not_from_cdi_ones() -> None:
    host = "tk-bare"
    start = "docker run -d --name {} {} --entrypoint sleep " + IMAGE + " 600"
    sh(host, start.format("gpu-hook", "--gpus all"))
    sh(host, start.format("gpu-cdi", "--device nvidia.com/gpu=all"))
    try:
        for name in ("gpu-hook", "gpu-cdi"):
            before = gpu_check(host, "", name)
            assert before.returncode == 0 and "cuInit(0) = 0" in before.stdout, before.stdout
        sh(host, "systemctl daemon-reload")
        # negative control: the container whose GPU came through the legacy hook loses it
        _wait_for(lambda: gpu_check(host, "", "gpu-hook").returncode != 0, "the hook GPU loss")
        lost = gpu_check(host, "", "gpu-hook")
        assert "Failed to initialize NVML: Unknown Error" in lost.stdout + lost.stderr
        kept = gpu_check(host, "", "gpu-cdi")
        assert kept.returncode == 0 and "cuInit(0) = 0" in kept.stdout, kept.stdout + kept.stderr
    finally:
        sh(host, "docker rm -f gpu-hook gpu-cdi", check=False)


def test_a_stale_cdi_spec_is_caught_and_regenerated() -> None:
    host = "dgx-none"
    old = sh(host, "nvidia-smi --query-gpu=driver_version --format=csv,noheader").stdout.strip()
    new = "580.173.02"
    assert f"libcuda.so.{old}" in sh(host, "cat /var/run/cdi/nvidia.yaml").stdout
    # a driver update the refresh units did not see: the spec still injects the old libcuda
    sh(host, "systemctl stop nvidia-cdi-refresh.path")
    sh(host, f"sparklab-driver-version {new}")  # the lab's stand-in driver, updated
    stale = gpu_check(host, "--device nvidia.com/gpu=all")
    assert stale.returncode != 0 and stale.stdout.startswith("GPU 0: NVIDIA GB10"), stale.stdout
    assert "cuInit(0) = 803" in stale.stdout  # CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
    run = playbook([host])
    assert run.rc == 0, run.output[-3000:]
    regenerated = run.results(host, "Regenerate the CDI spec")
    assert regenerated and regenerated[0]["changed"], run.output[-3000:]
    why = run.results(host, "Decide whether the CDI spec is stale")[0]["ansible_facts"]
    assert why["_nvidia_container_toolkit_stale"] == (
        f"written for another driver (no libcuda.so.{new} in it)"
    )
    assert f"libcuda.so.{new}" in sh(host, "cat /var/run/cdi/nvidia.yaml").stdout
    fixed = gpu_check(host, "--device nvidia.com/gpu=all")
    assert fixed.returncode == 0 and "cuInit(0) = 0" in fixed.stdout, fixed.stdout
    assert sh(host, "systemctl is-active nvidia-cdi-refresh.path").stdout.strip() == "active"


def test_a_dgx_os_update_to_a_newer_toolkit_is_kept() -> None:
    host = "dgx-runtime"
    started = "systemctl show -p MainPID -p ExecMainStartTimestamp docker.service"
    docker_before = sh(host, started).stdout
    pins = " ".join(f"{p}={DGX_UPDATE}" for p in PACKAGES)
    sh(host, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {pins}")  # apt full-upgrade
    run = playbook([host])
    assert (run.rc, run.stats[host]["failures"]) == (0, 0), run.output[-3000:]
    versions = sh(host, "dpkg-query -W -f '${Version}\\n' " + " ".join(PACKAGES)).stdout.split()
    assert versions == [DGX_UPDATE] * 4
    assert sh(host, f"test -e {OWN_SOURCE}", check=False).returncode != 0
    assert sh(host, started).stdout == docker_before
    assert_no_docker_activity(host)


# --- more runs driven from here ----------------------------------------------------------------
# A: check mode on every host (pf-fail with spark_preflight_fail=false, so that the toolkit role
#    also runs there, on a host that has none of it).
# B: a real run on tk-badkey, pf-fail and tk-bare.
# C: tk-installed while it serves (a container publishing port 8000), with a daemon.json key
#    that needs a Docker restart: twice without, then once with permission to restart.

ALL = [*CONVERGED, "tk-badkey", "pf-fail"]
RUN_B = ["tk-badkey", "pf-fail", "tk-bare"]
PREFLIGHT_PROBLEMS = [
    "architecture is x86_64, expected spark_preflight_expected_arch=aarch64",
    "OS is debian 13 (Debian GNU/Linux 13 (trixie)), expected one of "
    "spark_preflight_os_releases=ubuntu 24.04",
    "driver 535.104.05 is older than spark_preflight_min_driver_version=580.0",
    "Docker engine not running: docker.service is inactive (dead, masked)",
    # a Spark's figures (tests/unit/data/meminfo/spark-comfyui.txt) and the stand-in driver's
    # compute process, against the card's fraction (prepare.yml, host_vars/pf-fail.yml)
    "unified memory: spark_preflight_gpu_memory_util=0.93 (vllm_gpu_memory_util) x MemTotal"
    " 121.7 GiB = 113.2 GiB needed at start-up, 72.5 GiB free (MemAvailable: the page cache is"
    " dropped before each start, vllm_drop_caches=auto, on for a GB10): 40.7 GiB short; held:"
    " 42.5 GiB by GPU process python3 main.py --listen (pid 4242), 6.7 GiB by the kernel and"
    " other processes",
    # the model dir's filesystem (the host's root) and Docker's data root (a tmpfs), each named
    re.compile(
        r"disk: [0-9.]+ GB free on / \(filesystem of"
        r" /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4\), but the model 200000.0 GB under"
        r" /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4 \(20 of 21 files listed in"
        r" .sparkfleet-manifest.json missing\) plus spark_preflight_disk_margin_gb=1 need"
        r" 200001.0 GB: [0-9.]+ GB short"
    ),
    re.compile(
        r"disk: [0-9.]+ GB free on /var/lib/docker \(filesystem of /var/lib/docker\), but the"
        r" image avarok/dgx-vllm-nvfp4-kernel:v23 100000.0 GB in /var/lib/docker \(not on the"
        r" host: spark_preflight_image_size_gb=100000\) plus spark_preflight_disk_margin_gb=1"
        r" need 100001.0 GB: [0-9.]+ GB short"
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
    before = {h: snapshot(h) for h in RUN_B}
    run = playbook(RUN_B)
    return Driven(run, before, {h: snapshot(h) for h in RUN_B})


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
    assert run.results("pf-fail", "Install the keyring")[0]["changed"]
    source = run.results("pf-fail", "Write NVIDIA's apt source")[0]
    assert source["changed"] and source["diff"][0]["after"] == OWN_LINE
    would = run.results("pf-fail", "Report the packages a real run installs")[0]
    assert would["changed"] and "(newest)" in would["msg"]
    daemon = run.results("pf-fail", "Merge the settings into Docker's daemon.json")[0]
    # the host's daemon.json as the image ships it (CDI on, as Docker >= 28.2 has it by default)
    assert daemon["changed"] and json.loads(daemon["diff"]["before"]) == {"features": {"cdi": True}}
    assert json.loads(daemon["diff"]["after"]) == {
        "features": {"cdi": True},
        "registry-mirrors": ["http://172.29.78.1:35000"],
    }
    assert run.results("pf-fail", "Check that a container gets the GPU")[0]["skipped"]


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
    memory = report["memory"]
    assert (memory["source"], memory["basis"], memory["own_bytes"]) == (
        "/root/spark-meminfo",
        "MemAvailable",
        0,
    )
    assert memory["apps"] == [
        {"pid": 4242, "name": "python3 main.py --listen", "used_bytes": 43520 * 2**20, "own": False}
    ]
    image = report["disk"]["image"]
    # Docker is stopped: its data root is daemon.json's (none there) or Docker's default
    assert (image["present"], image["store"], image["store_source"]) == (
        False,
        "/var/lib/docker",
        "default",
    )
    shown = run.results("pf-fail", "Show the host report")[0]["msg"]
    assert "PROBLEMS:" in shown and f"  - {problems[0]}" in shown


def assert_wrong_key_refused(run: Run) -> None:
    assert run.stats["tk-badkey"]["failures"] == 1
    bad_fpr = (BAD_KEY_DIR / "fingerprint").read_text().strip()
    assert bad_fpr != LAB_FPR
    assert run.failure("tk-badkey") == (
        f"the key from http://172.29.78.1:38081/tk-badkey/gpgkey has fingerprint(s) {bad_fpr},"
        f" expected nvidia_container_toolkit_gpg_fingerprint={LAB_FPR}; nothing was installed"
    )


def test_unready_host_fails_with_every_problem_and_its_numbers(run_b: Driven) -> None:
    run = run_b.run
    assert run.stats["pf-fail"]["failures"] == 1 and run.stats["pf-fail"]["changed"] == 0
    assert_preflight_problems(run)
    message = run.failure("pf-fail")
    assert message.startswith("pf-fail is not ready (8 problem(s)): ")
    assert all(p in message for p in run.report("pf-fail")["problems"])
    assert not run.results("pf-fail", "Ask apt which toolkit")  # stopped before the toolkit
    assert run_b.after["pf-fail"] == run_b.before["pf-fail"]


def test_wrong_key_fails_again_and_changes_nothing(run_b: Driven) -> None:
    assert_wrong_key_refused(run_b.run)
    assert run_b.after["tk-badkey"] == run_b.before["tk-badkey"]
    assert sh("tk-badkey", f"test -e {OWN_KEYRING} || test -e {OWN_SOURCE}", False).returncode
    assert_no_docker_activity("tk-badkey")


def test_third_run_on_a_bare_host_is_still_a_no_op(run_b: Driven) -> None:
    run = run_b.run
    assert (run.stats["tk-bare"]["changed"], run.stats["tk-bare"]["failures"]) == (0, 0)
    assert run_b.after["tk-bare"] == run_b.before["tk-bare"]
    assert_no_docker_activity("tk-bare")
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
    # the serving image, pulled by the toolkit's check in the first run, needs nothing more;
    # Docker's data root is a filesystem of its own here, with nothing to hold
    image = disk["image"]
    assert (image["ref"], image["present"], image["needed_bytes"]) == (IMAGE, True, 0)
    assert (image["store"], image["store_source"]) == ("/var/lib/docker", "docker info")
    assert image["size_bytes"] > 0
    assert [(fs["mount"], fs["required_bytes"], fs["ok"]) for fs in disk["filesystems"]] == [
        ("/", 1_100_000_000, True),
        ("/var/lib/docker", 0, True),
    ]
    # the lab machine's own memory figures, a fifth of them asked for (inventory/lab)
    memory = report["memory"]
    assert (memory["checked"], memory["ok"], memory["source"]) == (True, True, "/proc/meminfo")
    assert (memory["util"], memory["basis"], memory["drop_caches"]) == (0.2, "MemAvailable", True)
    assert memory["needed_bytes"] == int(0.2 * memory["total_bytes"])
    assert memory["usable_bytes"] == memory["available_bytes"] >= memory["needed_bytes"]
    assert (memory["apps"], memory["apps_error"]) == ([], "")


ULIMITS = {"default-ulimits": {"nofile": {"Name": "nofile", "Hard": 4096, "Soft": 2048}}}


def test_a_serving_host_is_restarted_only_when_allowed() -> None:
    host = "tk-installed"
    options = {"nvidia_container_toolkit_docker_daemon_options": ULIMITS}
    sh(host, f"docker run -d --name minimax -p 8000:8000 --entrypoint sleep {IMAGE} 600")
    started = "docker inspect -f '{{.State.Running}} {{.State.StartedAt}}' minimax"
    serving = sh(host, started).stdout
    try:
        for attempt in (
            1,
            2,
        ):  # the second run finds the same work waiting (a record, not a notice)
            run = playbook([host], **options)
            assert (run.rc, run.stats[host]["failures"]) == (0, 0), run.output[-3000:]
            said = run.results(host, "Say that a Docker restart waits")
            assert said and "daemon.json keys default-ulimits" in said[0]["msg"], attempt
            assert "nvidia_container_toolkit_docker_restart_serving=true" in said[0]["msg"]
            assert json.loads(sh(host, f"cat {PENDING}").stdout) == ["default-ulimits"]
            assert sh(host, started).stdout == serving, attempt  # never restarted
            assert_no_docker_activity(host)
        run = playbook([host], nvidia_container_toolkit_docker_restart_serving=True, **options)
        assert (run.rc, run.stats[host]["failures"]) == (0, 0), run.output[-3000:]
        last = runs_in_journal(host)[-1]
        assert (last.starts, last.stops) == (1, 1), last
        assert sh(host, f"test -e {PENDING}", check=False).returncode != 0
        limits = sh(host, f"docker run --rm --entrypoint sh {IMAGE} -c 'ulimit -Sn; ulimit -Hn'")
        assert limits.stdout.split() == ["2048", "4096"]  # the restarted dockerd's default-ulimits
    finally:
        sh(host, "docker rm -f minimax", check=False)


def test_registry_credentials_reach_only_a_0600_file() -> None:
    host = "tk-source"
    secret = "lab-pull-t0ken:not-logged"
    config = sh(host, "stat -c '%a %U' /root/.docker/config.json; cat /root/.docker/config.json")
    mode, _, text = config.stdout.partition("\n")
    assert mode == "600 root"
    auth = json.loads(text)["auths"]["172.29.78.1:35000"]["auth"]
    assert base64.b64decode(auth).decode() == f"sparklab-puller:{secret}"
    run = playbook([host])
    assert (run.rc, run.stats[host]["changed"]) == (0, 0), run.output[-3000:]
    given = run.results(host, "Give the Docker client the registry credentials")[0]
    assert given.get("censored"), given
    assert secret not in run.output and auth not in run.output
    assert_no_docker_activity(host)
