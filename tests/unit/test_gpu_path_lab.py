"""The GPU path of a simulated DGX Spark, end to end on lab hosts of our own (no roles involved).

Host ``gpu-sim-1`` gets the stand-in toolkit 1.19.0-1 from the stand-in NVIDIA repository, Docker
restarted, and the CDI spec generated. In the stand-in vLLM image (Debian python3) it shows:

- a CDI container (``--device nvidia.com/gpu=all``) passes ``nvidia-smi -L`` and the cuInit check
  that the vllm_service role runs;
- a legacy-hook container (``--gpus all``, Docker 26) passes both before ``systemctl
  daemon-reload`` and fails both after it ("Failed to initialize NVML: Unknown Error", exit 255;
  cuInit 999), while the CDI container still passes; restarting the container brings its GPU back;
- a spec generated before a driver update (``sparklab-driver-version``, with
  ``nvidia-cdi-refresh.path`` stopped) still gives a working ``nvidia-smi -L`` but cuInit 803;
  the regenerated spec works again.

Host ``gpu-sim-2`` is made a shipped DGX Spark by ``tests/lab/flavours/dgx_os.yml`` (variant
``default-runtime``) and shows the flavour's state and a working CDI container; a second run
changes nothing (Docker not restarted); a run with variant ``none`` leaves only CDI.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.lab import access, hosts
from tests.lab.config import REPO_ROOT, VLLM_IMAGE, LabConfig, venv_tool
from tests.lab.hosts import sh

pytestmark = pytest.mark.lab

CFG = LabConfig(host_prefix="gpu-sim", host_label="sparklab.gpu")
FILES = f"http://{CFG.gateway}:{CFG.files_port}"
IMAGE = f"{CFG.registry_push}/{VLLM_IMAGE}"  # the stand-in, as the lab registry holds it
CUINIT_CHECK = (
    "import ctypes, sys; r = ctypes.CDLL('libcuda.so.1').cuInit(0); "
    "print('cuInit(0) =', r); sys.exit(0 if r == 0 else 1)"
)
# How long the loss after a daemon-reload may take to show (it is synchronous here: a systemd
# generator), a liveness limit rather than a bound.
LOSS_WITHIN_S = 10
PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)


def load_image(host: str) -> None:
    """The stand-in vLLM image from the outer engine into the host's own Docker."""
    save = subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "exec", "-i", host, "docker", "load", "-q"],
        stdin=save.stdout,
        check=True,
        capture_output=True,
    )
    assert save.wait() == 0


def in_container(host: str, container: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return sh(host, f"docker exec {container} {' '.join(cmd)}", check=False)


def smi(host: str, container: str) -> subprocess.CompletedProcess[str]:
    return in_container(host, container, "nvidia-smi", "-L")


def cuinit(host: str, container: str) -> int:
    result = in_container(host, container, "python3", "-c", f'"{CUINIT_CHECK}"')
    assert result.stdout.startswith("cuInit(0) = "), result.stdout + result.stderr
    code = int(result.stdout.split("=")[1])
    assert result.returncode == (0 if code == 0 else 1)
    return code


def run_gpu_container(host: str, name: str, gpu: str) -> None:
    sh(host, f"docker run -d --name {name} {gpu} --entrypoint sleep {IMAGE} infinity")


@pytest.fixture(scope="module")
def lab_hosts() -> Iterator[list[str]]:
    with hosts.own_hosts(CFG, count=2) as started:
        for host in started:
            load_image(host)
        yield started


@pytest.fixture(scope="module")
def toolkit_host(lab_hosts: list[str]) -> str:
    """gpu-sim-1 with the stand-in toolkit 1.19.0-1 installed, Docker restarted, spec written."""
    host = lab_hosts[0]
    keyring = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
    arch = sh(host, "dpkg --print-architecture").stdout.strip()
    sh(
        host,
        f"curl -fsS -o {keyring} {FILES}/nvidia/keyring.gpg"
        f" && echo 'deb [signed-by={keyring}] {FILES}/nvidia/stable/deb/{arch} /'"
        " > /etc/apt/sources.list.d/nvidia-container-toolkit.list"
        " && apt-get update -qq"
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        + " ".join(f"{p}=1.19.0-1" for p in PACKAGES)
        + " && systemctl restart docker && docker info >/dev/null"
        " && nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml",
    )
    return host


def test_cdi_and_legacy_containers_and_daemon_reload(toolkit_host: str) -> None:
    host = toolkit_host
    spec = sh(host, "cat /var/run/cdi/nvidia.yaml").stdout
    assert "libcuda.so.580.95.05" in spec
    listed = sh(host, "nvidia-ctk cdi list").stdout.split()
    assert "nvidia.com/gpu=all" in listed
    run_gpu_container(host, "cdi", "--device nvidia.com/gpu=all")
    run_gpu_container(host, "legacy", "--gpus all")
    for container in ("cdi", "legacy"):
        assert smi(host, container).stdout.startswith("GPU 0: NVIDIA GB10 (UUID: GPU-")
        assert cuinit(host, container) == 0
    records = sh(host, "ls /run/nvidia-container-standin/hook-containers").stdout.split()
    legacy_id = sh(host, "docker inspect -f '{{.Id}}' legacy").stdout.strip()
    assert records == [f"{legacy_id}.json"], "only the --gpus container is recorded"

    sh(host, "systemctl daemon-reload")
    deadline = time.monotonic() + LOSS_WITHIN_S
    while smi(host, "legacy").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    lost = smi(host, "legacy")
    assert (lost.returncode, lost.stdout) == (255, "Failed to initialize NVML: Unknown Error\n")
    assert cuinit(host, "legacy") == 999
    assert smi(host, "cdi").returncode == 0, "the CDI container lost its GPU too"
    assert cuinit(host, "cdi") == 0

    sh(host, "docker restart -t 0 legacy")  # a restarted container gets its devices again
    assert smi(host, "legacy").returncode == 0
    assert cuinit(host, "legacy") == 0
    sh(host, "docker rm -f cdi legacy")


def test_stale_spec_after_a_driver_update(toolkit_host: str) -> None:
    host = toolkit_host
    sh(host, "systemctl stop nvidia-cdi-refresh.path")
    try:
        sh(host, "nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml")
        out = sh(host, "sparklab-driver-version 580.159.03").stdout
        assert "580.95.05 -> 580.159.03" in out
        assert sh(host, "nvidia-smi --query-gpu=driver_version --format=csv,noheader").stdout == (
            "580.159.03\n"
        )
        assert "libcuda.so.580.95.05" in sh(host, "cat /var/run/cdi/nvidia.yaml").stdout
        run_gpu_container(host, "stale", "--device nvidia.com/gpu=all")
        assert smi(host, "stale").returncode == 0
        assert cuinit(host, "stale") == 803  # CUDA_ERROR_SYSTEM_DRIVER_MISMATCH

        sh(host, "nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml")
        spec = sh(host, "cat /var/run/cdi/nvidia.yaml").stdout
        assert "libcuda.so.580.159.03" in spec
        assert "libcuda.so.580.95.05" not in spec
        run_gpu_container(host, "fresh", "--device nvidia.com/gpu=all")
        assert cuinit(host, "fresh") == 0
        sh(host, "docker rm -f stale fresh")
    finally:
        sh(host, "sparklab-driver-version 580.95.05", check=False)
        sh(host, "systemctl start nvidia-cdi-refresh.path", check=False)


def test_dgx_os_flavour(lab_hosts: list[str], tmp_path: Path) -> None:
    host = lab_hosts[1]
    group_vars = yaml.safe_load((REPO_ROOT / "inventory/lab/group_vars/spark.yml").read_text())
    ssh = access.ansible_host_vars(CFG, hosts.host_address(CFG, host), sudo_password=True)
    inventory = {
        "all": {
            "children": {
                "dgx_os": {
                    "vars": {"sparklab_gateway": group_vars["sparklab_gateway"]},
                    "hosts": {host: {**ssh, "sparklab_dgx_daemon_json": "default-runtime"}},
                }
            }
        }
    }
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    playbook = [
        venv_tool("ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
        "--vault-password-file", str(access.vault_password_file(CFG)),
        str(REPO_ROOT / "tests/lab/flavours/dgx_os.yml"),
    ]  # fmt: skip
    first = subprocess.run(playbook, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    started = sh(host, "systemctl show -p ActiveEnterTimestampMonotonic docker").stdout

    versions = sh(host, "dpkg-query -W -f '${Package} ${Version}\\n' " + " ".join(PACKAGES))
    assert sorted(versions.stdout.splitlines()) == sorted(f"{p} 1.20.0-1" for p in PACKAGES)
    policy = sh(host, "apt-cache policy nvidia-container-toolkit").stdout
    assert "Candidate: 1.20.1-1" in policy  # an OS update would move it on
    assert f"600 {FILES}/dgx noble/common" in policy
    assert sh(host, "systemctl is-enabled nvidia-cdi-refresh.path").stdout.strip() == "enabled"
    assert "libcuda.so.580.95.05" in sh(host, "cat /var/run/cdi/nvidia.yaml").stdout
    assert 'DGX_NAME="DGX Spark"' in sh(host, "cat /etc/dgx-release").stdout
    assert sh(host, "ls /etc/apt/sources.list.d").stdout.split() == ["dgx.sources"]
    daemon = json.loads(sh(host, "cat /etc/docker/daemon.json").stdout)
    assert daemon == {
        "default-runtime": "nvidia",
        "features": {"cdi": True},
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    }
    info = sh(host, "docker info --format '{{.DefaultRuntime}} {{json .Runtimes}}'").stdout
    assert info.startswith("nvidia ")
    run_gpu_container(host, "cdi", "--device nvidia.com/gpu=all")
    assert cuinit(host, "cdi") == 0

    second = subprocess.run(playbook, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "changed=0" in second.stdout, second.stdout[-3000:]
    assert sh(host, "systemctl show -p ActiveEnterTimestampMonotonic docker").stdout == started

    none = subprocess.run(
        [*playbook, "-e", "sparklab_dgx_daemon_json=none"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert none.returncode == 0, none.stdout[-3000:]
    assert json.loads(sh(host, "cat /etc/docker/daemon.json").stdout) == {"features": {"cdi": True}}
    assert sh(host, "docker info --format '{{.DefaultRuntime}}'").stdout.strip() == "runc"
