"""The lab's network and the stand-in services the simulated hosts reach.

All of them listen on the lab network's gateway address (the registry on all addresses, so that
the outer engine can push to it over loopback):
- a static file server (``LabConfig.files_port``, 38081): the stand-in NVIDIA apt repository
  (``/nvidia/``: flat, like nvidia.github.io/libnvidia-container, ``stable/deb/<arch>/``, toolkit
  ``LabConfig.nvidia_repo_versions``), the stand-in DGX OS repository (``/dgx/``: a Debian archive,
  suite ``noble``, component ``common``, its own key and ``Origin: sparklab-nvidia-dgx``, toolkit
  ``LabConfig.dgx_repo_versions``; used by ``tests/lab/flavours/dgx_os.yml``), each with
  ``gpgkey`` (armored), ``keyring.gpg`` (binary) and ``fingerprint``, and a wheelhouse of the
  Python packages roles install on hosts (``/wheels/``), so hosts need no index at converge time;
- the stand-in Hugging Face Hub (``tests/standins/hf_hub_standin``) with the synthetic repo;
- Debian's ``docker-registry``, holding the stand-in vLLM image under its production name, which
  the hosts use as their Docker Hub mirror.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.lab.config import HF_REPO_ID, REPO_ROOT, VLLM_IMAGE, LabConfig, log
from tests.lab.images import recipe_hash

STANDINS = REPO_ROOT / "tests" / "standins"
HUB_DIR = STANDINS / "hf_hub_standin"
APT_DIR = STANDINS / "nvidia_apt_standin"
# The stand-in DGX repository's identity: what its Release file and key say (apt pins match
# ``Pin: release o=DGX_ORIGIN``).
DGX_ORIGIN = "sparklab-nvidia-dgx"
DGX_LABEL = "sparklab stand-in NVIDIA DGX OS"
DGX_KEY_UID = "sparkfleet lab stand-in NVIDIA DGX repo <lab-dgx@invalid>"
# Python packages the roles install on hosts, pinned as the role defaults pin them.
WHEELHOUSE_PACKAGES = ["huggingface_hub==2.4.0"]


def ensure_network(cfg: LabConfig) -> None:
    """Create the lab's bridge network with its fixed subnet."""
    res = subprocess.run(["docker", "network", "inspect", cfg.network], capture_output=True)
    if res.returncode == 0:
        return
    subprocess.run(
        [
            "docker", "network", "create", "--driver", "bridge",
            "--subnet", cfg.subnet, "--gateway", cfg.gateway,
            "--label", "sparklab=1", cfg.network,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _stamp_ok(stamp: Path, value: str) -> bool:
    return stamp.is_file() and stamp.read_text() == value


def build_hub_fixture(cfg: LabConfig) -> Path:
    """The synthetic model repo the stand-in Hub serves (rebuilt when its recipe changes)."""
    out = cfg.state_dir / "hub" / "repo"
    key = recipe_hash([HUB_DIR / "fixture.py", str(cfg.shard_size)])
    stamp = cfg.state_dir / "hub" / "repo.stamp"
    if not _stamp_ok(stamp, key):
        log(f"building the synthetic model repo (20 shards of {cfg.shard_size} bytes)")
        subprocess.run(["rm", "-rf", str(out)], check=True)
        out.mkdir(parents=True)
        subprocess.run(
            [sys.executable, str(HUB_DIR / "fixture.py"), "--out", str(out),
             "--shard-size", str(cfg.shard_size)],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        stamp.write_text(key)
    return out


def _build_repo(cfg: LabConfig, name: str, args: list[str], what: str) -> Path:
    out = cfg.state_dir / "www" / name
    key = recipe_hash([APT_DIR, *args])
    stamp = cfg.state_dir / "www" / f"{name}.stamp"
    if not _stamp_ok(stamp, key):
        log(f"building the stand-in {what} apt repository")
        subprocess.run(["rm", "-rf", str(out)], check=True)
        out.mkdir(parents=True)
        subprocess.run(
            [sys.executable, str(APT_DIR / "build_repo.py"), "--out", str(out), *args],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        stamp.write_text(key)
    return out


def build_apt_repo(cfg: LabConfig) -> Path:
    """The stand-in NVIDIA apt repository with a throwaway signing key."""
    versions = dict.fromkeys([*cfg.nvidia_repo_versions, cfg.toolkit_version])
    args = [arg for v in versions for arg in ("--version", v)]
    return _build_repo(cfg, "nvidia", args, "NVIDIA")


def build_dgx_repo(cfg: LabConfig) -> Path:
    """The stand-in DGX OS apt repository: own key, own Origin/Label, archive layout."""
    args = [arg for v in cfg.dgx_repo_versions for arg in ("--version", v)]
    args += ["--origin", DGX_ORIGIN, "--label", DGX_LABEL, "--key-uid", DGX_KEY_UID,
             "--suite", cfg.dgx_repo_suite, "--component", cfg.dgx_repo_component]  # fmt: skip
    return _build_repo(cfg, "dgx", args, "DGX OS")


def wheel_target_args(python: str, machine: str, glibc_minor: int = 41) -> list[str]:
    """``pip download`` options that select wheels for another interpreter and machine.

    ``python`` is ``X.Y``, ``machine`` what ``platform.machine()`` prints there (``x86_64``,
    ``aarch64``); wheels tagged manylinux up to glibc 2.``glibc_minor`` (Debian 13 has 2.41,
    Ubuntu 24.04 2.39), abi3 and pure wheels included (pip's ``--platform``/``--abi`` options).
    """
    nodot = python.replace(".", "")
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(17, glibc_minor + 1)]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    return [
        "--python-version", python, "--implementation", "cp",
        "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none",
        *[arg for p in platforms for arg in ("--platform", p)],
    ]  # fmt: skip


def build_wheelhouse(cfg: LabConfig, python: str, machine: str) -> Path:
    """Wheels of the packages roles pip-install on hosts (for the hosts' Python and machine,
    not the controller's), for an index-free install."""
    out = cfg.state_dir / "www" / "wheels"
    target = wheel_target_args(python, machine)
    key = recipe_hash([*WHEELHOUSE_PACKAGES, *target])
    stamp = cfg.state_dir / "www" / "wheels.stamp"
    if not _stamp_ok(stamp, key):
        log(f"downloading wheels for Python {python} on {machine}: {' '.join(WHEELHOUSE_PACKAGES)}")
        subprocess.run(["rm", "-rf", str(out)], check=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "-d", str(out),
             "--only-binary=:all:", *target, *WHEELHOUSE_PACKAGES],
            check=True,
        )  # fmt: skip
        stamp.write_text(key)
    return out


def _pidfile(cfg: LabConfig, name: str) -> Path:
    return cfg.state_dir / "run" / f"{name}.pid"


def _alive(cfg: LabConfig, name: str) -> bool:
    pidfile = _pidfile(cfg, name)
    if not pidfile.is_file():
        return False
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def _wait_port(host: str, port: int, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"lab service {name} did not listen on {host}:{port} within {timeout:.0f} s")


def _stamp(argv: list[str], sources: list[Path]) -> str:
    """A digest of a service's command line and source files: a change restarts the service.
    Paths are taken relative to the checkout, so that another clone of the same code (a worktree,
    CI's fresh clone) does not restart a service others use."""
    digest = hashlib.sha256("\0".join(a.replace(str(REPO_ROOT), "") for a in argv).encode())
    for source in sorted(sources):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _start(
    cfg: LabConfig,
    name: str,
    argv: list[str],
    host: str,
    port: int,
    sources: list[Path] | None = None,
) -> None:
    """Start a service unless it runs already from the same command line and ``sources``; one
    that runs from an older version is stopped and started again (its in-memory state, such as
    the Hub's fault switches and counters, starts afresh)."""
    stampfile = cfg.state_dir / "run" / f"{name}.stamp"
    stamp = _stamp(argv, sources or [])
    if _alive(cfg, name):
        if stampfile.is_file() and stampfile.read_text() == stamp:
            return
        log(f"{name} runs an older version: restarting it")
        _stop(cfg, name)
    logfile = cfg.state_dir / "log" / f"{name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    _pidfile(cfg, name).parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _pidfile(cfg, name).write_text(str(proc.pid))
    stampfile.write_text(stamp)
    _wait_port(host, port, name)
    log(f"{name} listening on {host}:{port} (log {logfile})")


def start_services(cfg: LabConfig, host_python: tuple[str, str]) -> None:
    """Build what the services serve and start the ones not running.

    ``host_python`` is the hosts' (``X.Y``, machine), for the wheelhouse.
    """
    build_apt_repo(cfg)
    build_dgx_repo(cfg)
    www = cfg.state_dir / "www"
    build_wheelhouse(cfg, *host_python)
    repo = build_hub_fixture(cfg)
    _start(
        cfg,
        "files",
        [sys.executable, "-m", "http.server", "--bind", cfg.gateway, "--directory", str(www),
         str(cfg.files_port)],
        cfg.gateway,
        cfg.files_port,
    )  # fmt: skip
    _start(
        cfg,
        "hub",
        [sys.executable, str(HUB_DIR / "server.py"), "--repo", f"{HF_REPO_ID}={repo}",
         "--host", cfg.gateway, "--port", str(cfg.hub_port)],
        cfg.gateway,
        cfg.hub_port,
        sources=list(HUB_DIR.glob("*.py")),
    )  # fmt: skip
    regdir = cfg.state_dir / "registry"
    regdir.mkdir(parents=True, exist_ok=True)
    regconf = regdir / "config.yml"
    regconf.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {regdir / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 0.0.0.0:{cfg.registry_port}\n"
    )
    _start(
        cfg,
        "registry",
        ["docker-registry", "serve", str(regconf)],
        "127.0.0.1",
        cfg.registry_port,
    )


def push_vllm_image(cfg: LabConfig, standin_ref: str, name: str = VLLM_IMAGE) -> None:
    """Publish a stand-in image in the lab registry under ``name`` (by default the production
    image name)."""
    target = f"{cfg.registry_push}/{name}"
    subprocess.run(["docker", "tag", standin_ref, target], check=True)
    subprocess.run(["docker", "push", "-q", target], check=True, stdout=subprocess.DEVNULL)
    log(f"{name} (stand-in {standin_ref}) published in the lab registry")


def _stop(cfg: LabConfig, name: str, timeout: float = 30.0) -> None:
    """Stop a service's process group (SIGTERM) and wait until it has gone."""
    pidfile = _pidfile(cfg, name)
    if _alive(cfg, name):
        pid = int(pidfile.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(cfg, name) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
    pidfile.unlink(missing_ok=True)


def stop_services(cfg: LabConfig) -> None:
    """Stop the lab's service processes."""
    for name in ("files", "hub", "registry"):
        _stop(cfg, name)


def hub_stats(cfg: LabConfig) -> dict[str, object]:
    """The stand-in Hub's byte counters."""
    url = f"http://{cfg.gateway}:{cfg.hub_port}/_standin/stats"
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: dict[str, object] = json.load(resp)
    return data
