"""Images of the lab, each built once and reused until its recipe changes.

- ``sparklab/debian13``: Debian 13 (trixie) from debootstrap (Debian mirror only), systemd as PID 1,
  python3, sshd and sudo. Debian 13 is the nearest to DGX OS 7 (Ubuntu 24.04) that these machines
  can install: systemd 257 (Ubuntu 255), apt 3 (2.7), deb822 sources, Python 3.13 (3.12).
- ``sparklab/spark-sim``: the simulated DGX Spark host (see ``spark-sim/Dockerfile``), with the
  lab's SSH key and users (``tests/lab/access.py``) and the stand-in driver: ``nvidia-smi``, its
  config (driver version ``LabConfig.driver_version``) and ``libcuda.so.<driver version>``
  compiled here with the controller's gcc (``tests/standins/nvidia_smi_standin/build_libcuda.py``).
- ``sparklab/vllm-standin``: the stand-in for ``avarok/dgx-vllm-nvfp4-kernel:v23``
  (``tests/standins/vllm_standin``); the lab pushes it to its registry under the production name.
- ``sparklab/vllm-standin-ray``: the same plus real Ray with its dashboard (``ray[default]``
  from PyPI, ``tests/standins/vllm_standin_ray``), for two-Spark pairs; the lab pushes it under
  its own tag (``LabConfig.vllm_pair_image``), so single-host hosts do not carry Ray.

Each image is tagged with a hash of its recipe (the files it is built from and its base), so a
changed recipe builds a new image and an unchanged one is reused. ``sparklab/spark-sim:latest``,
which the molecule scenarios run, is pointed at this checkout's recipe each time, built or reused
(several checkouts share one Docker engine).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tests.lab import access
from tests.lab.config import REPO_ROOT, LabConfig, log
from tests.standins.nvidia_smi_standin import build_libcuda

DEBIAN_MIRROR = os.environ.get("SPARKLAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBOOTSTRAP_ARGS = [
    "--variant=minbase",
    "--include=systemd,systemd-sysv,python3,dbus,ca-certificates,openssh-server,sudo",
    "trixie",
]
SIM_DIR = Path(__file__).parent / "spark-sim"
NVIDIA_SMI = REPO_ROOT / "tests" / "standins" / "nvidia_smi_standin" / "nvidia-smi"
LIBCUDA_SOURCES = [build_libcuda.SOURCE, Path(build_libcuda.__file__)]
VLLM_STANDIN_DIR = REPO_ROOT / "tests" / "standins" / "vllm_standin"
# Wheels unpacked into the stand-in vLLM image (pure or abi3 wheels for the image's python3).
VLLM_STANDIN_WHEELS = ["tokenizers==0.23.3"]
VLLM_STANDIN_RAY_DIR = REPO_ROOT / "tests" / "standins" / "vllm_standin_ray"
# Installed offline into the pair stand-in with the pip wheel, for the image's python3 and machine.
VLLM_STANDIN_RAY_WHEELS = ["ray[default]==2.60.0", "pip"]
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")


def _docker_env() -> dict[str, str]:
    # The classic builder: the lab's engine may have no buildx, and the builds need no registry.
    return dict(os.environ, DOCKER_BUILDKIT="0")


def recipe_hash(parts: Iterable[str | Path]) -> str:
    """Hash of strings and file contents (files in sorted order for directories)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                if "__pycache__" in f.parts:
                    continue
                digest.update(f.name.encode())
                digest.update(f.read_bytes())
        else:
            digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def image_exists(ref: str) -> bool:
    """True when the engine holds an image by that reference."""
    res = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False)
    return res.returncode == 0


def _tag_latest(ref: str) -> None:
    repo = ref.rsplit(":", 1)[0]
    subprocess.run(["docker", "tag", ref, f"{repo}:latest"], check=True)


def build_base(cfg: LabConfig) -> str:
    """Debian 13 rootfs from debootstrap, imported as an image that boots systemd."""
    ref = f"{cfg.base_image}:{recipe_hash([*DEBOOTSTRAP_ARGS, DEBIAN_MIRROR])}"
    if image_exists(ref):
        return ref
    log(f"building {ref} with debootstrap (about a minute)")
    work = cfg.state_dir / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", *DEBOOTSTRAP_ARGS, str(rootfs), DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (rootfs / "etc" / "machine-id").write_text("")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [
                "docker", "import",
                "-c", 'CMD ["/lib/systemd/systemd"]',
                "-c", "ENV container=docker",
                "-", ref,
            ],
            stdin=tar.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if tar.wait() != 0:
            raise SystemExit("tar of the debootstrap rootfs failed")
    _tag_latest(ref)
    return ref


def _build(ref: str, context: Path, base: str, *build_args: str) -> None:
    args = [arg for value in (f"BASE_IMAGE={base}", *build_args) for arg in ("--build-arg", value)]
    subprocess.run(
        ["docker", "build", "-q", *args, "-t", ref, str(context)],
        check=True,
        env=_docker_env(),
        stdout=subprocess.DEVNULL,
    )
    _tag_latest(ref)


def build_spark_sim(cfg: LabConfig, base: str) -> str:
    """The simulated DGX Spark host image."""
    certs = sorted(EXTRA_CA_DIR.glob("*.crt")) if EXTRA_CA_DIR.is_dir() else []
    users = [
        f"SUDO_PASSWORD_USER={cfg.sudo_password_user}",
        f"SUDO_NOPASSWD_USER={cfg.sudo_nopasswd_user}",
    ]
    keys = [access.public_key(cfg), access.password_hash(cfg)]
    multiarch = build_libcuda.multiarch()
    driver = [f"MULTIARCH={multiarch}", f"DRIVER_VERSION={cfg.driver_version}"]
    parts: list[str | Path] = [
        base,
        SIM_DIR,
        NVIDIA_SMI,
        *LIBCUDA_SOURCES,
        *driver,
        *certs,
        *users,
        *keys,
    ]
    ref = f"{cfg.sim_image}:{recipe_hash(parts)}"
    if image_exists(ref):
        # molecule's scenarios run ...:latest: make it this checkout's recipe again, even when
        # another checkout's build retagged it since
        _tag_latest(ref)
        return ref
    log(f"building {ref} (Docker and the stand-in nvidia-smi on {base})")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copytree(SIM_DIR, ctx, dirs_exist_ok=True)
        (ctx / "ca-certificates").mkdir()
        for cert in certs:
            shutil.copy(cert, ctx / "ca-certificates" / cert.name)
        shutil.copy(NVIDIA_SMI, ctx / "nvidia-smi")
        settings = {"driver_version": cfg.driver_version}
        (ctx / "nvidia-smi-standin.json").write_text(json.dumps(settings) + "\n")
        build_libcuda.compile_libcuda(ctx / "libcuda", cfg.driver_version)
        (ctx / "lab-access").mkdir()
        (ctx / "lab-access" / "authorized_keys").write_text(keys[0] + "\n")
        (ctx / "lab-access" / "password.sha512").write_text(keys[1] + "\n")
        _build(ref, ctx, base, *users, *driver)
    return ref


def build_vllm_standin(cfg: LabConfig, base: str) -> str:
    """The stand-in for the vLLM image, built from tests/standins/vllm_standin."""
    ref = f"{cfg.vllm_standin_tag}:{recipe_hash([base, VLLM_STANDIN_DIR, *VLLM_STANDIN_WHEELS])}"
    if image_exists(ref):
        return ref
    log(f"building {ref} (stand-in for the vLLM image)")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copytree(VLLM_STANDIN_DIR, ctx, dirs_exist_ok=True, ignore=_ignore_pycache)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "-d", str(ctx / "wheels"), *VLLM_STANDIN_WHEELS],
            check=True,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _build(ref, ctx, base)
    return ref


def build_vllm_standin_ray(cfg: LabConfig, standin: str) -> str:
    """The pair stand-in: ``standin`` (the vLLM stand-in image) plus Ray and its dependencies,
    downloaded from PyPI as wheels for the image's python3 and machine."""
    recipe = recipe_hash([standin, VLLM_STANDIN_RAY_DIR, *VLLM_STANDIN_RAY_WHEELS])
    ref = f"{cfg.vllm_standin_ray_tag}:{recipe}"
    if image_exists(ref):
        return ref
    log(f"building {ref} (the vLLM stand-in with Ray, for pairs)")
    version, machine = python_target(standin)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copytree(VLLM_STANDIN_RAY_DIR, ctx, dirs_exist_ok=True, ignore=_ignore_pycache)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
             "--implementation", "cp", "--python-version", version,
             "--platform", f"manylinux2014_{machine}", "-d", str(ctx / "wheels"),
             *VLLM_STANDIN_RAY_WHEELS],
            check=True,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _build(ref, ctx, standin)
    return ref


def _ignore_pycache(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def python_target(image: str) -> tuple[str, str]:
    """(``X.Y``, machine) of the image's ``python3``: what host-side wheels must be built for."""
    out = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python3", image, "-c",
         "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    return out[0], out[1]


def build_all(cfg: LabConfig) -> dict[str, str]:
    """Build (or reuse) every lab image; returns their references."""
    access.ensure_access(cfg)
    base = build_base(cfg)
    standin = build_vllm_standin(cfg, base)
    return {
        "base": base,
        "spark_sim": build_spark_sim(cfg, base),
        "vllm_standin": standin,
        "vllm_standin_ray": build_vllm_standin_ray(cfg, standin),
    }
