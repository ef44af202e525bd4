"""Verify a converged simulated DGX Spark: unit, container, model files, endpoint."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import model_profile

PROFILE = model_profile.load()  # the card's settings, as the roles read them
CARD_ENV = PROFILE.container_env()
MODEL_DIR = PROFILE.model_dir
SERVED = PROFILE.served_model_name
LAB_USER = "ansible"  # the user molecule/shared/inventory logs in as (passwordless sudo)
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
INVENTORY = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


def _json(host: Any, cmd: str) -> Any:
    return json.loads(host.check_output(cmd))


def _env(entries: list[str]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in entries)


def test_unit_enabled_and_active(host: Any) -> None:
    svc = host.service("vllm")
    assert svc.is_enabled
    assert svc.is_running
    text = host.file("/etc/systemd/system/vllm.service").content_string
    assert text.startswith("#\n# Ansible managed")
    exec_start = " ".join(text.split("ExecStart=", 1)[1].split("\n#", 1)[0].split())
    exec_start = exec_start.replace(" \\ ", " ")
    labels = _json(host, "docker inspect -f '{{json .Config.Labels}}' minimax")
    label = labels["sparkfleet.config"]
    assert re.fullmatch(r"[0-9a-f]{64}", label)  # the keyed configuration digest
    cache = "/var/cache/sparkfleet/vllm"
    assert exec_start.startswith(
        "/usr/bin/docker run --rm --name minimax --pull=never "
        f"--label sparkfleet.config={label} "
        "--device nvidia.com/gpu=all --ipc=host "
        f"-v {MODEL_DIR}:{PROFILE.model_mount}:ro -v {cache}/vllm:/root/.cache/vllm "
        f"-v {cache}/flashinfer:/root/.cache/flashinfer -v {cache}/triton:/root/.triton "
        "--network host --env-file /etc/vllm/vllm.env "
        "--log-driver json-file --log-opt max-size=50m --log-opt max-file=3 "
    )
    assert exec_start.endswith(" " + PROFILE.image)
    assert "127.0.0.1:18000/health" in exec_start  # Docker's health probe, on vLLM's own port
    # started = serving: the unit waits for vLLM's own port, on the loopback only
    assert "http://127.0.0.1:18000/health" in text.split("ExecStartPost=", 1)[1].split("\n", 1)[0]
    # clients reach it through the authenticating proxy on port 8000
    assert host.service("vllm-proxy").is_running
    assert host.socket("tcp://0.0.0.0:8000").is_listening
    for line in ["Restart=always", "TimeoutStartSec=900", "SuccessExitStatus=130 143"]:
        assert f"\n{line}\n" in text
    assert host.run("systemd-analyze verify /etc/systemd/system/vllm.service").rc == 0


def test_env_file_is_private(host: Any) -> None:
    env_file = host.file("/etc/vllm/vllm.env")
    assert env_file.mode == 0o600
    assert env_file.user == "root"
    entries = [line for line in env_file.content_string.splitlines() if not line.startswith("#")]
    assert dict(e.split("=", 1) for e in entries) == CARD_ENV  # no API key configured


def test_image_is_recorded(host: Any) -> None:
    record = json.loads(host.file("/etc/vllm/vllm.image.json").content_string)
    running = host.check_output("docker inspect -f '{{.Image}}' minimax")
    assert record == {
        "current": {"ref": PROFILE.image, "id": running},
        "previous": None,
    }


def test_container_runs_with_exactly_the_card_environment(host: Any) -> None:
    info = _json(host, "docker inspect minimax")[0]
    assert info["State"]["Running"]
    image_env = _env(
        _json(host, "docker image inspect " + shlex.quote(info["Image"]))[0]["Config"]["Env"] or []
    )
    container_env = _env(info["Config"]["Env"])
    added = {k: v for k, v in container_env.items() if image_env.get(k) != v}
    assert added == CARD_ENV
    assert info["Config"]["Image"] == PROFILE.image
    assert info["HostConfig"]["IpcMode"] == "host"
    assert "127.0.0.1:18000/health" in info["Config"]["Healthcheck"]["Test"][1]
    # the host's network, vLLM on its loopback: no container address a LAN neighbour could route to
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert host.socket("tcp://127.0.0.1:18000").is_listening
    assert not host.socket("tcp://0.0.0.0:18000").is_listening
    # the GPU through CDI (the toolkit's spec), which a systemd daemon-reload cannot take away
    requests = [(r["Driver"], r["DeviceIDs"]) for r in info["HostConfig"]["DeviceRequests"]]
    assert requests == [("cdi", ["nvidia.com/gpu=all"])]


def test_model_mounted_read_only_and_the_caches_kept_on_the_host(host: Any) -> None:
    mounts = _json(host, "docker inspect minimax")[0]["Mounts"]
    cache = "/var/cache/sparkfleet/vllm"
    assert sorted((m["Source"], m["Destination"], m["RW"]) for m in mounts) == sorted(
        [
            (MODEL_DIR, PROFILE.model_mount, False),
            (f"{cache}/vllm", "/root/.cache/vllm", True),
            (f"{cache}/flashinfer", "/root/.cache/flashinfer", True),
            (f"{cache}/triton", "/root/.triton", True),
        ]
    )
    assert host.file(cache).mode == 0o700


def test_model_files_present(host: Any) -> None:
    manifest = json.loads(host.file(f"{MODEL_DIR}/.sparkfleet-manifest.json").content_string)
    assert manifest["repo_id"] == PROFILE.repo_id
    assert len(manifest["commit"]) == 40
    shards = [f"model-{i:05d}-of-00020.safetensors" for i in range(1, 21)]
    for name in [*shards, "config.json", "model.safetensors.index.json", "tokenizer.json"]:
        f = host.file(f"{MODEL_DIR}/{name}")
        assert f.is_file, name
        assert f.size == manifest["files"][name]["size"], name


def test_docker_keeps_the_nvidia_runtime_dgx_os_registered(host: Any) -> None:
    assert "nvidia" in _json(host, "docker info --format '{{json .Runtimes}}'")


AS_SHIPPED = (
    "dpkg-query -W -f '${Package} ${Version}\\n' nvidia-container-toolkit"
    " nvidia-container-toolkit-base libnvidia-container-tools libnvidia-container1;"
    " find /etc/apt/sources.list.d /etc/apt/preferences.d /usr/share/keyrings /etc/apt/keyrings"
    " -type f -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum;"
    " systemctl show -p MainPID -p ExecMainStartTimestamp docker.service"
)


def test_dgx_os_toolkit_sources_and_docker_untouched_by_two_site_runs(host: Any) -> None:
    """prepare.yml recorded the host as DGX OS shipped it; converge and idempotence ran site.yml."""
    shipped = host.file("/root/as-shipped.txt").content_string
    now = host.run("bash -c " + shlex.quote("set -o pipefail; " + AS_SHIPPED))
    assert now.rc == 0, now.stderr
    assert now.stdout == shipped
    assert "nvidia-container-toolkit 1.20.0-1" in shipped  # the DGX repository's, kept
    assert "nvidia-container-toolkit.list" not in shipped + now.stdout  # no second source


def test_endpoint_answers_the_cards_curl_example(host: Any) -> None:
    models = _json(host, "curl -fsS http://localhost:8000/v1/models")
    assert [m["id"] for m in models["data"]] == [SERVED]
    assert models["data"][0]["max_model_len"] == PROFILE.max_model_len
    body = json.dumps(PROFILE.chat_request("Hello! What can you do?"))
    answer = _json(
        host,
        "curl -fsS http://localhost:8000/v1/chat/completions "
        "-H 'Content-Type: application/json' -d " + shlex.quote(body),
    )
    content = answer["choices"][0]["message"]["content"]
    assert content.startswith("<think>")
    assert content.split("</think>", 1)[1].strip()


def test_reached_over_ssh_as_a_non_root_sudo_user(host: Any) -> None:
    # testinfra logs in as the play did (this scenario's inventory) and runs commands with sudo
    assert host.check_output("id -un") == "root"
    assert host.check_output("printenv SUDO_USER") == LAB_USER
    assert host.user(LAB_USER).uid != 0
    # the runs logged in over SSH with the lab's key, as that user (one multiplexed connection)
    log = host.check_output("journalctl --no-pager -o cat -u ssh.service")
    assert f"Accepted publickey for {LAB_USER} from " in log


def test_files_the_roles_write_are_root_owned(host: Any) -> None:
    for path in [
        "/etc/systemd/system/vllm.service",
        "/etc/vllm/vllm.env",
        "/etc/docker/daemon.json",
        f"{MODEL_DIR}/.sparkfleet-manifest.json",
        f"{MODEL_DIR}/config.json",
    ]:
        f = host.file(path)
        assert (f.user, f.group) == ("root", "root"), path


@pytest.mark.parametrize(
    ("playbook", "skip"),
    [("site.yml", []), ("site.yml", ["--skip-tags", "preflight"]), ("status.yml", []),
     ("uninstall.yml", []), ("rolling_restart.yml", []), ("benchmark.yml", [])],
)  # fmt: skip
def test_without_become_every_playbook_stops_before_any_change(
    host: Any, playbook: str, skip: list[str]
) -> None:
    unit = host.file("/etc/systemd/system/vllm.service")
    before = (unit.mtime, host.check_output("systemctl show -p ActiveEnterTimestamp vllm"))
    proc = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(PROJECT / "playbooks" / playbook),
         "-e", "ansible_become=false", *skip],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out[-3000:]
    assert f"Tasks run as '{LAB_USER}' on spark-sim-molecule, not root" in out
    assert "the roles need become" in out
    recap = out.rsplit("PLAY RECAP", 1)[1]
    assert "changed=0" in recap and "failed=1" in recap
    after = (unit.mtime, host.check_output("systemctl show -p ActiveEnterTimestamp vllm"))
    assert after == before


def test_rolling_upgrade_in_check_mode_changes_nothing(host: Any) -> None:
    # a preview of an upgrade (another tag, a changed setting): it says what would change and
    # goes through the restart's steps without pulling, writing, stopping or rolling back
    unit = host.file("/etc/systemd/system/vllm.service")
    record = host.file("/etc/vllm/vllm.image.json")
    new_image = f"{PROFILE.image.rsplit(':', 1)[0]}:v99"

    def state() -> tuple[Any, ...]:
        return (unit.mtime, record.content_string,
                host.check_output("systemctl show -p ActiveEnterTimestamp -p NRestarts vllm"),
                host.check_output("docker inspect -f '{{.Id}}' minimax"))  # fmt: skip

    before = state()
    proc = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(PROJECT / "playbooks" / "rolling_restart.yml"),
         "--check", "--diff", "-e", f"vllm_image={new_image}",
         "-e", "vllm_gpu_memory_util=0.92"],
        capture_output=True, text=True, check=False, timeout=1800,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "rolled back" not in out and "Remember why the host failed" not in out, out[-4000:]
    # it says what would change: the pull, and the unit's image in the unit's diff (its line)
    # (the task's result: the first line after its header that names the host, whatever
    # callback plugins print between them)
    pull = out.index("TASK [vllm_service : Pull the image when missing, while the host still")
    result = next((ln for ln in out[pull:].splitlines()[1:] if "[spark-sim-molecule]" in ln), "")
    assert result == "changed: [spark-sim-molecule]", out[pull:][:800]
    assert f"+    {new_image}" in out.splitlines(), out[-4000:]
    assert state() == before
