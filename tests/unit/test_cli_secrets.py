"""``-e``, vault ids and the become password as Ansible users expect them, without the lab.

The CLI runs ``data/echo_project`` (``--project-dir``): its ``site.yml`` publishes the extra
variables that reached the play, on a host reached with the ``local`` connection, and with
``echo_become=true`` runs a command with become through a stand-in sudo (``fake-sudo``) that runs
it only when Ansible typed the right password at its prompt. Passwords are piped on stdin, as a
script would; encrypted files are made with the venv's ``ansible-vault``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import yaml

import sparkfleet.fleet
from sparkfleet import (
    Credentials,
    ExecutionEnvironment,
    ExitCode,
    Fleet,
    FleetError,
    VaultId,
)

pytestmark = pytest.mark.nolab

DATA = Path(__file__).resolve().parent / "data"
PROJECT = DATA / "echo_project"
VAULT_BIN = Path(sys.executable).parent / "ansible-vault"
SRC = Path(sparkfleet.__file__).resolve().parents[1]


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """A directory with an inventory of one local host whose become goes through fake-sudo."""
    shutil.copy(PROJECT / "fake-sudo", tmp_path / "fake-sudo")
    (tmp_path / "expected-password").write_text("sudo pass 'quoted' $HOME\n")
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become_exe": str(tmp_path / "fake-sudo"),
        # another user than the one running the test, or Ansible skips become altogether
        "ansible_become_user": "nobody",
    }
    inventory = {"spark": {"hosts": {"one": host}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return tmp_path


def password_file(where: Path, name: str, password: str) -> Path:
    path = where / name
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def encrypt(path: Path, data: dict[str, Any], vault_id: str) -> Path:
    """Write ``data`` as YAML to ``path``, encrypted with ``--vault-id vault_id``."""
    path.write_text(yaml.safe_dump(data))
    subprocess.run(
        [VAULT_BIN, "encrypt", "--vault-id", vault_id, path], check=True, capture_output=True
    )
    assert path.read_text().startswith("$ANSIBLE_VAULT;")
    return path


def cli(
    here: Path, *args: str, stdin: str = "", cwd: Path | None = None
) -> tuple[int, dict[str, Any], str]:
    """``sparkfleet preflight --json`` on the echo project in a new process (stdin piped): the
    exit code, the JSON result and stderr."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sparkfleet.cli", "preflight", "-i", str(here / "hosts.yml"),
         "--project-dir", str(PROJECT), "--json", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=cwd,
    )  # fmt: skip
    out = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc.returncode, out, proc.stderr


def echo(out: dict[str, Any]) -> dict[str, Any]:
    fact: dict[str, Any] = out["hosts"]["one"]["facts"]["echo"]
    return fact


# -- -e as ansible-playbook parses it ---------------------------------------------------------


def test_extra_vars_are_parsed_by_ansible_encrypted_file_and_password_file(here: Path) -> None:
    pw = password_file(here, "vault-pw", "correct horse")
    vaulted = encrypt(here / "vault.yml", {"secret": "s3cret", "n": 2}, f"{pw}")
    code, out, err = cli(
        here, "-e", 'msg="a b" n=1', "-e", f"@{vaulted}", "-e", '{"c": {"d": true}}',
        "--vault-password-file", str(pw),
    )  # fmt: skip
    assert code == ExitCode.OK, err
    # quotes kept a value with a space; the encrypted file was decrypted and, coming later,
    # overrode n; JSON kept its types
    assert echo(out) == {"msg": "a b", "n": 2, "c": {"d": True}, "secret": "s3cret"}


def test_relative_files_are_found_where_the_user_typed_them(here: Path) -> None:
    """``-e @vault.yml`` and ``--vault-password-file pw`` relative to the working directory, as
    with ansible-playbook (ansible-runner itself runs from the project's playbook directory)."""
    password_file(here, "pw", "relative horse")
    encrypt(here / "vault.yml", {"secret": "relative"}, str(here / "pw"))
    code, out, err = cli(here, "-e", "@vault.yml", "--vault-password-file", "pw", cwd=here)
    assert code == ExitCode.OK, err
    assert echo(out)["secret"] == "relative"


def test_encrypted_file_with_a_labelled_vault_id(here: Path) -> None:
    pw = password_file(here, "prod-pw", "prod password")
    vaulted = encrypt(here / "vault.yml", {"secret": "labelled"}, f"prod@{pw}")
    assert "prod" in vaulted.read_text().splitlines()[0]  # $ANSIBLE_VAULT;1.2;AES256;prod
    code, out, err = cli(here, "-e", f"@{vaulted}", "--vault-id", f"prod@{pw}")
    assert code == ExitCode.OK, err
    assert echo(out)["secret"] == "labelled"
    # without the vault id Ansible refuses the file: bad input, nothing ran
    code, out, _ = cli(here, "-e", f"@{vaulted}")
    assert code == ExitCode.USAGE
    assert any("vault" in e.lower() for e in out["errors"]), out["errors"]


def test_vault_password_from_a_prompt_on_stdin(here: Path) -> None:
    pw = password_file(here, "pw", "typed at the prompt")
    vaulted = encrypt(here / "vault.yml", {"secret": "prompted"}, f"ops@{pw}")
    pw.unlink()  # the password now exists only in what the test types
    code, out, err = cli(
        here, "-e", f"@{vaulted}", "--vault-id", "ops@prompt", stdin="typed at the prompt\n"
    )
    assert code == ExitCode.OK, err
    assert echo(out)["secret"] == "prompted"
    code, _, _ = cli(here, "-e", f"@{vaulted}", "--vault-id", "ops@prompt", stdin="wrong\n")
    assert code != ExitCode.OK


# -- the become password ----------------------------------------------------------------------


def test_become_password_from_a_prompt_on_stdin(here: Path) -> None:
    expected = (here / "expected-password").read_text().rstrip("\n")
    code, out, err = cli(here, "-e", "echo_become=true", "-K", stdin=expected + "\n")
    assert code == ExitCode.OK, err + json.dumps(out)
    # the same run without the password: the stand-in sudo refuses, the host fails
    code, out, _ = cli(here, "-e", "echo_become=true")
    assert code == ExitCode.FAILED
    assert out["hosts"]["one"]["failed_task"] == "Run a command as root"
    code, out, _ = cli(here, "-e", "echo_become=true", "-K", stdin="not it\n")
    assert code == ExitCode.FAILED


def test_become_password_from_vault(here: Path) -> None:
    expected = (here / "expected-password").read_text().rstrip("\n")
    pw = password_file(here, "vault-pw", "vault password")
    vaulted = encrypt(here / "become.yml", {"ansible_become_password": expected}, f"{pw}")
    code, out, err = cli(
        here, "-e", "echo_become=true", "-e", f"@{vaulted}", "--vault-password-file", str(pw)
    )
    assert code == ExitCode.OK, err + json.dumps(out)


def test_stdin_that_ends_before_the_password_is_bad_usage(here: Path) -> None:
    code, _, err = cli(here, "-K", stdin="")
    assert code == ExitCode.USAGE and "stdin ended" in err


# -- what a run leaves on disk ----------------------------------------------------------------


def _files(root: Path) -> dict[str, int]:
    """Every file under ``root`` (relative path -> mode bits)."""
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def private_dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What the private data dir of each run held when the package handed it to ansible-runner,
    and when ansible-runner was done with it."""
    seen: list[dict[str, Any]] = []
    real = ansible_runner.run

    def spy(**kwargs: Any) -> Any:
        root = Path(kwargs["private_data_dir"])
        before = _files(root)
        runner = real(**kwargs)
        contents = {rel: (root / rel).read_bytes() for rel in _files(root)}
        seen.append({"root": root, "before": before, "after": _files(root), "bytes": contents})
        return runner

    monkeypatch.setattr(ansible_runner, "run", spy)
    yield seen


def test_the_package_writes_no_file_ansible_runner_writes_and_secrets_stay_private(
    here: Path, private_dirs: list[dict[str, Any]]
) -> None:
    expected = (here / "expected-password").read_text().rstrip("\n")
    vault_password = "vault password typed 9f2c"
    pw = password_file(here, "pw", vault_password)
    vaulted = encrypt(here / "vault.yml", {"secret": "from the vault"}, f"ops@{pw}")
    pw.unlink()
    inventory = yaml.safe_load((here / "hosts.yml").read_text())
    fleet = Fleet(inventory, project_dir=PROJECT, extravars={"echo_become": True})
    creds = Credentials(
        vault_ids=(VaultId(label="ops", password=vault_password),), become_password=expected
    )
    result = fleet.preflight(extra_vars_args=[f"@{vaulted}"], credentials=creds)
    assert result.exit_code == ExitCode.OK, result.to_json()
    assert result.hosts["one"].facts["echo"]["secret"] == "from the vault"

    (run,) = private_dirs
    # the package wrote no file of its own: the inventory, the variables, the passwords and
    # the command line were ansible-runner's to write
    assert run["before"] == {}
    after: dict[str, int] = run["after"]
    for name in ("inventory/hosts.json", "env/extravars", "env/passwords", "env/cmdline"):
        assert after[name] == 0o600, name
    # each password is in env/passwords and in no other file, artifacts included
    for secret in (vault_password, expected):
        holders = [rel for rel, data in run["bytes"].items() if secret.encode() in data]
        assert holders == ["env/passwords"], (secret, holders)
    # and the private directory is gone once the run is over
    assert not run["root"].exists()


def test_runner_fact_cache_is_not_readable_on_this_ansible_core(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why facts come from the set_fact results: ansible-runner's ``get_fact_cache`` reads
    nothing from ansible-core 2.19's cache (ansible/ansible-runner#1441). When this fails, the
    installed pair reads it again: take the facts from ``Runner.get_fact_cache`` instead."""
    runners: list[Any] = []
    real = ansible_runner.run

    def keep(**kwargs: Any) -> Any:
        runner = real(**kwargs)
        runners.append((runner, runner.get_fact_cache("one")))
        return runner

    monkeypatch.setattr(ansible_runner, "run", keep)
    play = here / "cacheable.yml"
    play.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.set_fact: {cached: 42, cacheable: true}\n"
    )
    inventory = yaml.safe_load((here / "hosts.yml").read_text())
    result = Fleet(inventory, project_dir=PROJECT).run(play)
    assert result.ok and result.hosts["one"].facts["cached"] == 42
    ((_, cache),) = runners
    assert cache == {}


# -- options the package checks or hands over ------------------------------------------------


def test_graceful_stop_is_refused_on_an_untested_ansible_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Fleet(["a"], graceful_stop=True)  # the installed release is a tested one
    monkeypatch.setattr(sparkfleet.fleet, "ansible_core_release", lambda: "2.21")
    with pytest.raises(FleetError, match=r"tested on ansible-core 2\.19 only.*2\.21"):
        Fleet(["a"], graceful_stop=True)
    Fleet(["a"])  # without it, any release


def test_vault_id_syntax() -> None:
    assert VaultId.parse("prod@prompt", prompt=lambda label: f"pw-{label}") == VaultId(
        label="prod", password="pw-prod"
    )
    assert VaultId.parse("prompt", prompt=str).label == "default"
    with pytest.raises(FleetError, match="does not exist"):
        VaultId.parse("prod@/does/not/exist")
    with pytest.raises(FleetError, match="no way to ask"):
        VaultId.parse("prod@prompt")
    creds = Credentials(vault_ids=(VaultId(label="a", password="x"),), become_password="y")
    assert "x" not in repr(creds) and "y" not in repr(creds)
    with pytest.raises(FleetError, match="two vault passwords"):
        (creds + creds).ansible_args()


def test_execution_environment_reaches_ansible_runners_command(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command ansible-runner builds from what the package hands it for an EE run."""
    from ansible_runner.config.runner import RunnerConfig

    commands: list[list[str]] = []

    def build(**kwargs: Any) -> Any:
        for key in ("event_handler", "cancel_callback", "status_handler"):
            kwargs.pop(key)
        config = RunnerConfig(**kwargs)
        config.prepare()
        commands.append(config.command)
        raise KeyboardInterrupt  # stop here: no container is run

    monkeypatch.setattr(ansible_runner, "run", build)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}")
    ee = ExecutionEnvironment(image="registry.example/sparkfleet-ee:1", engine="docker")
    fleet = Fleet(["spark-01"], execution_environment=ee)
    with pytest.raises(KeyboardInterrupt):
        fleet.deploy(limit="spark-01", credentials=Credentials(become_password="x"))
    (command,) = commands
    assert command[:2] == ["docker", "run"]
    image_at = command.index("registry.example/sparkfleet-ee:1")
    assert command[image_at + 1] == "ansible-playbook"
    assert "sparkfleet.spark.site" in command and "--ask-become-pass" in command
    assert "x" not in command
