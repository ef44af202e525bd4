"""The ``sparkfleet`` command against the lab: become passwords as Ansible users give them, and
``sparkfleet status`` as a table.

The host is a spark-sim container of our own, ``cli-sim-1``, labelled ``sparklab.cli`` so that no
other test or the lab's inventory sees it. It is reached over SSH as ``sparkadmin``, whose sudo
asks for a password; unlike ``make lab``'s inventory, this one does not give Ansible that password:
each test hands it over the way it is testing (typed at ``-K``'s prompt, or from an encrypted
``-e @file``). The password is read from the lab's vault (``become-password.vault``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import sparkfleet
from sparkfleet import Credentials, ExitCode, Fleet
from tests.lab import access, hosts
from tests.lab.config import REPO_ROOT, LabConfig, venv_tool

pytestmark = pytest.mark.lab

CFG = LabConfig(host_prefix="cli-sim", host_label="sparklab.cli")
SRC = Path(sparkfleet.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli_host() -> Iterator[str]:
    """A fresh simulated host of our own, removed afterwards."""
    with hosts.own_hosts(CFG) as started:
        yield started[0]


@pytest.fixture(scope="module")
def become_password() -> str:
    """sparkadmin's sudo password, decrypted from the lab's vault."""
    proc = subprocess.run(
        [venv_tool("ansible-vault"), "view", "--vault-password-file",
         str(access.vault_password_file(CFG)), str(CFG.ssh_dir / access.VAULT_FILE)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def inventory(cli_host: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host with the lab's group vars, reached as sparkadmin, no become password given."""
    group_vars = yaml.safe_load((REPO_ROOT / "inventory/lab/group_vars/spark.yml").read_text())
    ssh = access.ansible_host_vars(CFG, hosts.host_address(CFG, cli_host), sudo_password=True)
    ssh.pop("ansible_become_password")
    path = tmp_path_factory.mktemp("cli") / "hosts.yml"
    inv = {"all": {"children": {"spark": {"vars": group_vars, "hosts": {cli_host: ssh}}}}}
    path.write_text(yaml.safe_dump(inv))
    return path


def sparkfleet_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``sparkfleet ARGS`` in a new process, stdin piped, not a terminal."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "sparkfleet.cli", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip


def test_become_password_typed_at_the_prompt(
    cli_host: str, inventory: Path, become_password: str
) -> None:
    base = ["preflight", "-i", str(inventory), "--json"]
    without = sparkfleet_cli(*base)
    assert without.returncode != ExitCode.OK, "sudo should have asked for a password"
    out = json.loads(without.stdout)
    assert "password" in out["hosts"][cli_host]["message"].lower(), out["hosts"][cli_host]
    typed = sparkfleet_cli(*base, "-K", stdin=become_password + "\n")
    assert typed.returncode == ExitCode.OK, typed.stdout + typed.stderr
    report = json.loads(typed.stdout)["hosts"][cli_host]["facts"]["spark_preflight_report"]
    assert report["gpu"]["name"] == "NVIDIA GB10"
    assert become_password not in typed.stdout + typed.stderr


def test_become_password_from_an_encrypted_extra_vars_file(
    cli_host: str, inventory: Path, become_password: str, tmp_path: Path
) -> None:
    pw = tmp_path / "ops-vault-pw"
    pw.write_text("a vault password of the test's own\n")
    pw.chmod(0o600)
    secrets = tmp_path / "become.yml"
    secrets.write_text(yaml.safe_dump({"ansible_become_password": become_password}))
    subprocess.run(
        [venv_tool("ansible-vault"), "encrypt", "--vault-id", f"ops@{pw}", str(secrets)],
        check=True, capture_output=True,
    )  # fmt: skip
    proc = sparkfleet_cli(
        "preflight", "-i", str(inventory), "--plain", "-e", f"@{secrets}", "--vault-id", f"ops@{pw}"
    )
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert f"  {cli_host} " in proc.stdout and "GPU NVIDIA GB10" in proc.stdout


@pytest.fixture(scope="module")
def deployed(cli_host: str, inventory: Path, become_password: str) -> dict[str, Any]:
    """The host deployed through the API (become password given as a credential)."""
    fleet = Fleet(inventory, credentials=Credentials(become_password=become_password))
    result = fleet.deploy()
    assert result.ok, result.to_json()
    manifest = result.hosts[cli_host].model_manifest
    assert manifest is not None
    return manifest


@pytest.mark.long
def test_status_table(
    cli_host: str, inventory: Path, become_password: str, deployed: dict[str, Any]
) -> None:
    addr = hosts.host_address(CFG, cli_host)
    proc = sparkfleet_cli("status", "-i", str(inventory), "--plain", "-K",
                          stdin=become_password + "\n")  # fmt: skip
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"│ {cli_host}")]
    assert len(rows) == 1, proc.stdout
    cells = [c.strip() for c in rows[0].strip("│").split("│")]
    header = next(ln for ln in proc.stdout.splitlines() if ln.startswith("┃ host"))
    columns = [c.strip() for c in header.strip("┃").split("┃")]
    row = dict(zip(columns, cells, strict=True))
    assert row["unit"] == "active/running"
    assert row["model"] == deployed["commit"][:12]
    assert row["endpoint"] == f"http://{addr}:8000/v1"
    assert re.fullmatch(r"\d+/\d+", row["run/wait"])
    assert re.fullmatch(r"\d+\.\d %", row["KV"])
    assert row["tokens out"].isdigit() and int(row["tokens out"]) > 0  # the health check's chat
    assert row["note"] == ""
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"  {cli_host} "))
    assert f"ok          serving at http://{addr}:8000/v1" in line, proc.stdout
    # the same figures as JSON, typed
    as_json = sparkfleet_cli("status", "-i", str(inventory), "--json", "-K",
                             stdin=become_password + "\n")  # fmt: skip
    report = json.loads(as_json.stdout)["hosts"][cli_host]["status_report"]
    assert report["serving"] is True and report["endpoint"] == row["endpoint"]
    assert report["generation_tokens"] == int(row["tokens out"])


@pytest.mark.long
def test_status_of_a_stopped_host(
    cli_host: str, inventory: Path, become_password: str, deployed: dict[str, Any]
) -> None:
    """A host whose unit was stopped: the run itself succeeds, but ``status`` says the host does
    not serve, in its line, its JSON and its exit code (4), so that a script can act on it."""
    hosts.sh(cli_host, "systemctl stop vllm.service")
    proc = sparkfleet_cli("status", "-i", str(inventory), "--plain", "-K",
                          stdin=become_password + "\n")  # fmt: skip
    assert proc.returncode == ExitCode.NOT_SERVING, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"  {cli_host} "))
    assert "NOT serving: unit inactive/dead, container not running" in line, proc.stdout
    as_json = sparkfleet_cli("status", "-i", str(inventory), "--json", "-K",
                             stdin=become_password + "\n")  # fmt: skip
    assert as_json.returncode == ExitCode.NOT_SERVING, as_json.stdout + as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["exit_code"] == ExitCode.NOT_SERVING
    assert document["not_serving_hosts"] == [cli_host]
    report = document["hosts"][cli_host]["status_report"]
    assert report["serving"] is False and report["container_running"] is False
