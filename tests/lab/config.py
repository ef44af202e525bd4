"""Lab settings: one place for names, addresses and ports (keep in step with inventory/lab)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HF_REPO_ID = "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
VLLM_IMAGE = "avarok/dgx-vllm-nvfp4-kernel:v23"


def venv_tool(name: str) -> str:
    """The command ``name`` beside this Python (the project's venv), else the one on PATH.

    Raises SystemExit when neither exists.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: run the lab from the project's venv (make setup)")
    return found


def log(msg: str) -> None:
    """Print one lab progress line."""
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LabConfig:
    """Where the lab keeps its state and how its parts are addressed."""

    state_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("SPARKLAB_DIR", "/var/lib/sparklab"))
    )
    network: str = "sparklab"
    subnet: str = "172.29.78.0/24"
    gateway: str = "172.29.78.1"
    files_port: int = 38081
    hub_port: int = 38082
    registry_port: int = 35000
    shard_size: int = int(os.environ.get("SPARKLAB_SHARD_SIZE", str(256 * 1024)))
    host_prefix: str = "spark-sim"
    host_label: str = "sparklab.host"
    base_image: str = "sparklab/debian13"
    sim_image: str = "sparklab/spark-sim"
    vllm_standin_tag: str = "sparklab/vllm-standin"
    vllm_standin_ray_tag: str = "sparklab/vllm-standin-ray"
    # The pair stand-in's name in the lab registry: the production repository with a tag of its
    # own (pairs' inventories name it in vllm_image; single hosts keep VLLM_IMAGE, without Ray).
    vllm_pair_image: str = "avarok/dgx-vllm-nvfp4-kernel:v23-lab-ray"
    toolkit_version: str = "1.19.0-1"
    # Every version the stand-in NVIDIA repository (/nvidia/) serves: an older one too, for
    # explicit version requests.
    nvidia_repo_versions: tuple[str, ...] = ("1.18.1-1", "1.19.0-1")
    # The stand-in DGX OS repository (/dgx/): newer than the NVIDIA one, as on shipped Sparks.
    dgx_repo_versions: tuple[str, ...] = ("1.20.0-1", "1.20.1-1")
    dgx_repo_suite: str = "noble"
    dgx_repo_component: str = "common"
    # The stand-in driver's version (nvidia-smi's config and libcuda.so.<version> on the hosts).
    driver_version: str = "580.95.05"
    # Who the controller logs in as (see tests/lab/access.py): an admin whose sudo asks for a
    # password, as on Ubuntu's first user, and an automation account with passwordless sudo.
    sudo_password_user: str = "sparkadmin"
    sudo_nopasswd_user: str = "ansible"

    @property
    def ssh_dir(self) -> Path:
        """The lab's SSH key pair and the ansible-vault files of the become password."""
        return self.state_dir / "ssh"

    @property
    def registry_push(self) -> str:
        """Registry address as the outer engine pushes to it (loopback needs no TLS)."""
        return f"127.0.0.1:{self.registry_port}"

    @property
    def registry_mirror(self) -> str:
        """Registry address as simulated hosts use it as their Docker Hub mirror."""
        return f"http://{self.gateway}:{self.registry_port}"
