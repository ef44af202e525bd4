"""The gateway unit's reload (``_fleet_gateway_reload_command``, the ExecReload between
``haproxy -c`` and recording the loaded digest) against a stand-in HAProxy master.

The stand-in does what HAProxy's master (``-Ws``, 2.6-3.0) does on SIGUSR2, as observed with
HAProxy 2.8.0 on this machine: with a configuration it can apply, it forks new workers beside the
old ones; with one it cannot (a port another process holds, an address the host lacks; ``haproxy
-c`` passes both) it keeps the old workers and forks none. The command runs as systemd runs it:
``$$`` unescaped to ``$``, MAINPID in the environment (systemd.service(5), "Command lines").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.plays import check_play

pytestmark = pytest.mark.nolab

ROLE = Path(__file__).resolve().parents[2] / "roles/fleet_gateway"
MASTER = """
import os, signal, sys, time
applies = sys.argv[1] == "applies"
workers = []
def worker():
    pid = os.fork()
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    workers.append(pid)
def usr2(*_):
    if applies:
        worker()
def term(*_):
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    os._exit(0)
signal.signal(signal.SIGUSR2, usr2)
signal.signal(signal.SIGTERM, term)
worker()  # the worker of the configuration loaded before
print("ready", flush=True)
while True:
    time.sleep(0.2)
"""


def reload_with(master_mode: str) -> subprocess.CompletedProcess[str]:
    command = yaml.safe_load((ROLE / "vars/main.yml").read_text())["_fleet_gateway_reload_command"]
    unit = (ROLE / "templates/sparkfleet-gateway.service.j2").read_text()
    assert "ExecReload={{ _fleet_gateway_reload_command }}" in unit
    master = subprocess.Popen(
        [sys.executable, "-c", MASTER, master_mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert master.stdout is not None and master.stdout.readline() == "ready\n"
        return subprocess.run(
            ["/bin/sh", "-c", command.replace("$$", "$")],
            env={**os.environ, "MAINPID": str(master.pid)},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        alive = master.poll() is None  # the reload signals the master, never ends it
        master.send_signal(signal.SIGTERM)
        assert alive
        master.wait(timeout=30)


def test_a_reload_that_forks_new_workers_succeeds() -> None:
    done = reload_with("applies")
    assert done.returncode == 0, done.stderr


def test_a_reload_that_forks_none_fails_and_says_so() -> None:
    done = reload_with("refuses")
    assert done.returncode == 1
    assert "HAProxy started no new worker within 30 s of the reload" in done.stderr


def test_the_failure_names_haproxys_reason_past_a_busy_access_log(tmp_path: Path) -> None:
    """The unit's journal as the role reads it on a failed reload (its last 500 lines): HAProxy's
    alert and the reload's own line are kept even with access-log lines before and after them;
    a journal without such lines gives its last lines."""
    access = ["10.0.0.1:51000 [01/Dec/2026:01:00:00.000] fleet fleet/s-1 0/0/1/2/3 200 120 - -"]
    reason = [
        "[ALERT]    (12) : Binding [haproxy.cfg:40] for frontend metrics: cannot bind socket"
        " (Cannot assign requested address) for [192.0.2.77:8405]",
        "HAProxy started no new worker within 30 s of the reload: the old configuration still"
        " serves (the error is above)",
        "Reload failed for sparkfleet-gateway.service - HAProxy gateway.",
    ]
    task = {
        "ansible.builtin.debug": {"msg": "{{ _fleet_gateway_journal_reason }}"},
        "loop": [access * 30 + reason + access * 20, ["a", "b"]],
        "vars": {"_fleet_gateway_journal": {"stdout_lines": "{{ item }}"}},
    }
    play = [{"hosts": "localhost", "gather_facts": False,
             "vars_files": [str(ROLE / "vars/main.yml")], "tasks": [task]}]  # fmt: skip
    rc, out = check_play(
        tmp_path, {"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}},
        yaml.safe_dump(play), env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"},
    )  # fmt: skip
    assert rc == 0, out
    said = [json.loads(m) for m in re.findall(r'"msg": ("(?:[^"\\]|\\.)*")', out)]
    assert said == [" | ".join(reason), "a | b"], out
