"""Docker engine for the lab.

Installs Debian's ``docker.io`` (and the few tools the lab needs) where they are missing, starts
``dockerd`` where none runs, and registers the capability-stripping runc wrapper
(``files/lab-runc``) only where ``--privileged`` containers would fail because this machine's
capability bounding set lacks capabilities that Docker grants them. A Docker engine that is
already running is used as it is: its configuration is never rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.lab.config import LabConfig, log

# Linux capability numbers, as in <linux/capability.h>.
CAP_NAMES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]  # fmt: skip

# Commands the lab needs on the machine, and the Debian packages that provide them.
HOST_TOOLS = {
    "dockerd": "docker.io",
    "containerd": "containerd",
    "runc": "runc",
    "jq": "jq",
    "rsync": "rsync",
    "debootstrap": "debootstrap",
    "docker-registry": "docker-registry",
    "apt-ftparchive": "apt-utils",
    "dpkg-deb": "dpkg",
    "gpg": "gnupg",
    "gpgv": "gpgv",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "openssl": "openssl",
    # the gateway's configuration run by a real HAProxy (tests/unit/test_gateway_haproxy.py)
    "haproxy": "haproxy",
}

RUNTIME_NAME = "sparklab-runc"


def missing_bounding_caps(status_file: Path = Path("/proc/self/status")) -> list[str]:
    """Names (``CAP_*``) of the capabilities the kernel knows but our bounding set lacks."""
    cap_bnd = 0
    for line in status_file.read_text().splitlines():
        if line.startswith("CapBnd:"):
            cap_bnd = int(line.split()[1], 16)
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return [
        f"CAP_{CAP_NAMES[n]}"
        for n in range(min(last_cap, len(CAP_NAMES) - 1) + 1)
        if not cap_bnd & (1 << n)
    ]


def ensure_host_tools() -> None:
    """apt-get install the Debian packages behind any missing lab tool."""
    missing = sorted(
        {pkg for cmd, pkg in HOST_TOOLS.items() if shutil.which(cmd) is None and not _sbin(cmd)}
    )
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )


def _sbin(cmd: str) -> bool:
    return any(Path(d, cmd).exists() for d in ("/usr/sbin", "/sbin"))


def docker_ok() -> bool:
    """True when a Docker engine answers on the default socket."""
    try:
        res = subprocess.run(
            ["docker", "info", "--format", "{{json .ServerVersion}}"],
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _engine_runtimes() -> tuple[str, list[str]]:
    out = subprocess.run(
        ["docker", "info", "--format", "{{json .DefaultRuntime}}|{{json .Runtimes}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    default, runtimes = out.split("|", 1)
    return json.loads(default), sorted(json.loads(runtimes))


def install_wrapper(cfg: LabConfig, drop: list[str]) -> Path:
    """Write the runc wrapper with the capabilities to drop baked in."""
    src = (Path(__file__).parent / "files" / "lab-runc").read_text()
    runc = shutil.which("runc") or "/usr/sbin/runc"
    text = src.replace("@DROP@", json.dumps(drop)).replace("@RUNC@", runc)
    dest = cfg.state_dir / "bin" / "lab-runc"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    dest.chmod(0o755)
    return dest


def start_dockerd(cfg: LabConfig) -> None:
    """Start dockerd in the background, detached, with the wrapper only where needed."""
    args = ["dockerd"]
    drop = missing_bounding_caps()
    if drop:
        wrapper = install_wrapper(cfg, drop)
        log(f"bounding set lacks {', '.join(drop)}: dockerd uses the runc wrapper {wrapper}")
        args += ["--add-runtime", f"{RUNTIME_NAME}={wrapper}", "--default-runtime", RUNTIME_NAME]
    logfile = cfg.state_dir / "dockerd.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as out:
        subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if docker_ok():
            log("dockerd is up")
            return
        time.sleep(0.5)
    raise SystemExit(f"dockerd did not answer within 60 s; see {logfile}")


# Each simulated host runs systemd, journald, udevd, dockerd and containerd, which hold inotify
# instances of their own; privileged containers without a user namespace count them against the
# machine's root (fs.inotify.max_user_instances, 128 by default on Debian and Ubuntu). With the
# test stages side by side (a dozen hosts), a host's path unit (nvidia-cdi-refresh.path) once
# failed to start at 128; systemd needs an inotify instance for each path unit. Raised, never
# lowered.
INOTIFY_LIMITS = {"max_user_instances": 1024, "max_user_watches": 524288}


def raise_inotify_limits(proc: Path = Path("/proc/sys/fs/inotify")) -> None:
    """Raise the machine's inotify limits to INOTIFY_LIMITS where they are lower (needs root)."""
    for name, wanted in INOTIFY_LIMITS.items():
        path = proc / name
        current = int(path.read_text())
        if current < wanted:
            path.write_text(f"{wanted}\n")
            log(f"fs.inotify.{name}: {current} -> {wanted} (the lab's hosts share the limit)")


def ensure_engine(cfg: LabConfig) -> None:
    """Make sure a Docker engine runs that can start privileged containers."""
    ensure_host_tools()
    raise_inotify_limits()
    if not docker_ok():
        start_dockerd(cfg)
        return
    drop = missing_bounding_caps()
    if not drop:
        return
    default, _ = _engine_runtimes()
    if default != RUNTIME_NAME:
        raise SystemExit(
            "A Docker engine is already running, but this machine's capability bounding set "
            f"lacks {', '.join(drop)}, so its --privileged containers will fail. The lab does not "
            "rewrite a running engine's configuration: stop it and run the lab again (the lab "
            f"then starts dockerd with the '{RUNTIME_NAME}' runc wrapper), or register such a "
            "wrapper yourself."
        )
