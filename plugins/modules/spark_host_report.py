#!/usr/bin/python
"""Ansible module: read-only readiness report of a DGX Spark host, with the problems found."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: spark_host_report
short_description: Report architecture, OS, GPU, driver, Docker, disk and port of a DGX Spark host
version_added: 0.1.0
description:
  - Reads the host's state without changing anything and lists every requirement not met, each
    with the numbers and the variable that sets the requirement. The role decides to fail.
  - "GPU name and driver version come from C(nvidia-smi --query-gpu). Memory figures are read but
    never judged: on GB10 memory is unified and they read C([N/A]) or C(Not Supported)."
  - Docker counts as running when C(docker.service) is active (the socket alone is not enough,
    and the module never starts Docker through it) and the engine answers C(docker version).
  - "Disk: what the model fetch still needs is the size of the files listed in the model dir's
    C(.sparkfleet-manifest.json) that are missing or of another size; without a manifest it is
    O(model_size_bytes) less what the model dir already holds. When something must be fetched,
    O(disk_margin_bytes) more must be free."
options:
  expected_arch:
    description: Architecture the host must have (C(uname -m)).
    type: str
    required: true
  os_releases:
    description: Accepted C(ID VERSION_ID) prefixes from os-release, e.g. C(ubuntu 24.04); empty accepts any.
    type: list
    elements: str
    default: []
  gpu_name:
    description: Text the GPU name must contain.
    type: str
    required: true
  min_driver_version:
    description: Lowest driver version accepted (dotted numbers, e.g. C(580.0)).
    type: str
    required: true
  model_dir:
    description: Directory the model is fetched to.
    type: path
    required: true
  model_size_bytes:
    description: Size of the whole model, used when the model dir has no manifest.
    type: int
    required: true
  disk_margin_bytes:
    description: Free space required on top of what the fetch still needs.
    type: int
    default: 0
  port:
    description: TCP port the service will listen on.
    type: int
    required: true
  container_name:
    description: Container that may own the port.
    type: str
    required: true
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Gather the host report
  sparkfleet.spark.spark_host_report:
    expected_arch: aarch64
    os_releases:
      - ubuntu 24.04
    gpu_name: NVIDIA GB10
    min_driver_version: "580.0"
    model_dir: /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4
    model_size_bytes: "{{ (99 * 1e9) | int }}"
    disk_margin_bytes: "{{ (5 * 1e9) | int }}"
    port: 8000
    container_name: minimax
  register: host_report

- name: Fail when a requirement is not met
  ansible.builtin.fail:
    msg: "{{ host_report.report.problems }}"
  when: not host_report.report.ok
"""

RETURN = r"""
report:
  description: What was found on the host, with the problems.
  returned: always
  type: dict
  contains:
    arch:
      description: Architecture of the host (C(uname -m)).
      type: str
      returned: always
      sample: aarch64
    os:
      description: The host's os-release.
      type: dict
      returned: always
      contains:
        id:
          description: C(ID) from os-release.
          type: str
          returned: always
          sample: ubuntu
        version_id:
          description: C(VERSION_ID) from os-release.
          type: str
          returned: always
          sample: "24.04"
        pretty_name:
          description: C(PRETTY_NAME) from os-release.
          type: str
          returned: always
          sample: Ubuntu 24.04.3 LTS
    gpu:
      description: What C(nvidia-smi) reports.
      type: dict
      returned: always
      contains:
        present:
          description: Whether C(nvidia-smi) answered with a GPU.
          type: bool
          returned: always
        name:
          description: Name of the first GPU.
          type: str
          returned: always
          sample: NVIDIA GB10
        driver_version:
          description: Driver version.
          type: str
          returned: always
          sample: 580.95.05
        count:
          description: Number of GPUs.
          type: int
          returned: always
          sample: 1
        memory_total:
          description: C(memory.total) as C(nvidia-smi) prints it (C([N/A]) on unified memory).
          type: str
          returned: always
        memory_total_mib:
          description: C(memory.total) in MiB, or null when it is not a number.
          type: int
          returned: always
        error:
          description: Why no GPU is usable ("" when one is).
          type: str
          returned: always
    docker:
      description: State of the Docker engine.
      type: dict
      returned: always
      contains:
        present:
          description: Whether the C(docker) command is installed.
          type: bool
          returned: always
        running:
          description: Whether the service is active and the engine answers.
          type: bool
          returned: always
        service:
          description: C(docker.service) state, e.g. C(active (running, enabled)); "" without systemd.
          type: str
          returned: always
        server_version:
          description: Engine version ("" when not running).
          type: str
          returned: always
        error:
          description: Why the engine counts as not running ("" when it runs).
          type: str
          returned: always
    disk:
      description: Free space against what the model fetch still needs.
      type: dict
      returned: always
      contains:
        path:
          description: The nearest existing directory of O(model_dir), where free space is measured.
          type: str
          returned: always
        model_dir:
          description: O(model_dir).
          type: str
          returned: always
        free_bytes:
          description: Bytes free for an unprivileged user on that filesystem.
          type: int
          returned: always
        present_bytes:
          description: Bytes of the model already present.
          type: int
          returned: always
        needed_bytes:
          description: Bytes the fetch still needs.
          type: int
          returned: always
        required_bytes:
          description: Bytes that must be free (needed plus O(disk_margin_bytes); 0 when nothing is needed).
          type: int
          returned: always
        basis:
          description: How the need was computed.
          type: str
          returned: always
          sample: manifest
        detail:
          description: One line explaining that computation.
          type: str
          returned: always
    port:
      description: Who listens on O(port).
      type: dict
      returned: always
      contains:
        number:
          description: O(port).
          type: int
          returned: always
        state:
          description: C(free), C(ours) (published by O(container_name)) or C(taken).
          type: str
          returned: always
        owner:
          description: The container or process listening ("" when free).
          type: str
          returned: always
    problems:
      description: The requirements not met, one message each.
      type: list
      elements: str
      returned: always
    ok:
      description: Whether every requirement is met (RV(report.problems) is empty).
      type: bool
      returned: always
"""

import json
import os
import platform
import re
import shutil
import subprocess

from ansible.module_utils.basic import AnsibleModule

MANIFEST = ".sparkfleet-manifest.json"
GB = 1e9
NOT_A_NUMBER = ("[N/A]", "N/A", "[Not Supported]", "Not Supported", "")


def _run(argv, timeout=60):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def gb(value):
    return "%.1f GB" % (value / GB)


def version_tuple(text):
    """(580, 95, 5) for "580.95.05"; None when it is not dotted numbers."""
    if not re.match(r"^\d+(\.\d+)*$", text.strip()):
        return None
    return tuple(int(part) for part in text.strip().split("."))


def os_release(path="/etc/os-release"):
    fields = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep:
                    fields[key] = value.strip().strip('"')
    except OSError:
        pass
    return {"id": fields.get("ID", ""), "version_id": fields.get("VERSION_ID", ""),
            "pretty_name": fields.get("PRETTY_NAME", "")}


def parse_memory(text):
    """MiB as an int, or None for the unified-memory answers ([N/A], Not Supported)."""
    value = text.strip()
    if value in NOT_A_NUMBER:
        return None
    match = re.match(r"^(\d+)(\s*MiB)?$", value)
    return int(match.group(1)) if match else None


def gpu_report():
    if shutil.which("nvidia-smi") is None:
        return {"present": False, "name": "", "driver_version": "", "count": 0,
                "memory_total": "", "memory_total_mib": None, "error": "nvidia-smi not found"}
    rc, out, err = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if rc != 0 or not lines or "," not in lines[0]:
        msg = " ".join((err or out).split()) or "nvidia-smi exited %d" % rc
        return {"present": False, "name": "", "driver_version": "", "count": 0,
                "memory_total": "", "memory_total_mib": None,
                "error": "nvidia-smi exited %d: %s" % (rc, msg)}
    name, _sep, driver = lines[0].rpartition(",")
    report = {"present": True, "name": name.strip(), "driver_version": driver.strip(),
              "count": len(lines), "memory_total": "", "memory_total_mib": None, "error": ""}
    rc, out, _err = _run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader"])
    first = out.splitlines()[0].strip() if rc == 0 and out.strip() else ""
    report["memory_total"] = first or "unknown"
    report["memory_total_mib"] = parse_memory(first)
    return report


def _systemd_running():
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def docker_report():
    report = {"present": shutil.which("docker") is not None, "running": False,
              "service": "", "server_version": "", "error": ""}
    if _systemd_running():
        _rc, out, _err = _run(["systemctl", "show", "docker.service", "--property",
                               "LoadState,ActiveState,SubState,UnitFileState"])
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        state = props.get("ActiveState", "unknown")
        report["service"] = "%s (%s, %s)" % (state, props.get("SubState", "?"),
                                             props.get("UnitFileState") or props.get("LoadState", "?"))
        if props.get("LoadState") == "not-found":
            report["error"] = "docker.service is not installed"
            return report
        if state != "active":
            report["error"] = "docker.service is %s" % report["service"]
            return report
    if not report["present"]:
        report["error"] = "the docker command is not installed"
        return report
    rc, out, err = _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30)
    if rc != 0:
        report["error"] = " ".join((err or out).split()) or "docker version exited %d" % rc
        return report
    report["running"] = True
    report["server_version"] = out.strip()
    return report


def _nearest_existing(path):
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _file_size(path):
    try:
        return os.lstat(path).st_size
    except OSError:
        return None


def read_manifest(model_dir):
    """{relative path: size} from the model dir's manifest, or None."""
    try:
        with open(os.path.join(model_dir, MANIFEST), encoding="utf-8") as handle:
            files = json.load(handle).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(files, dict):
        return None
    sizes = {}
    for name, meta in files.items():
        size = meta.get("size") if isinstance(meta, dict) else None
        if not isinstance(size, int) or isinstance(size, bool):
            return None
        sizes[name] = size
    return sizes


def disk_report(model_dir, model_size_bytes, margin_bytes):
    path = _nearest_existing(model_dir)
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    manifest = read_manifest(model_dir)
    if manifest is not None:
        missing = {n: s for n, s in manifest.items()
                   if _file_size(os.path.join(model_dir, n)) != s}
        needed = sum(missing.values())
        present = sum(manifest.values()) - needed
        basis = "manifest"
        detail = "%d of %d files listed in %s missing" % (len(missing), len(manifest), MANIFEST)
    else:
        present = 0
        if os.path.isdir(model_dir):
            for root, dirs, files in os.walk(model_dir):
                dirs[:] = [d for d in dirs if not (root == model_dir and d == ".cache")]
                present += sum(_file_size(os.path.join(root, f)) or 0 for f in files)
        needed = max(model_size_bytes - present, 0)
        basis = "model_size"
        detail = "spark_preflight_model_size_gb=%g less %s present" % (
            model_size_bytes / GB, gb(present))
    required = needed + margin_bytes if needed else 0
    return {"path": path, "model_dir": model_dir, "free_bytes": free, "present_bytes": present,
            "needed_bytes": needed, "required_bytes": required, "basis": basis, "detail": detail}


def _listen_inodes(port):
    inodes = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.append(fields[9])
    return inodes


def _socket_owner(inodes):
    """'NAME (pid N)' of a process holding one of the socket inodes, or ''."""
    wanted = {"socket:[%s]" % inode for inode in inodes}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) in wanted:
                    with open("/proc/%s/cmdline" % pid, "rb") as handle:
                        argv = handle.read().split(b"\0")
                    cmd = " ".join(a.decode(errors="replace") for a in argv if a)[:120]
                    return "%s (pid %s)" % (cmd or "?", pid)
            except OSError:
                continue
    return ""


def _container_publishing(port):
    """Names of running containers that publish ``port`` on the host."""
    rc, out, _err = _run(["docker", "ps", "--format", "{{.Names}}\t{{.Ports}}"], timeout=30)
    if rc != 0:
        return []
    found = []
    for line in out.splitlines():
        name, _sep, ports = line.partition("\t")
        if re.search(r":%d->" % port, ports):
            found.append(name)
    return found


def port_report(port, container_name, docker_running):
    inodes = _listen_inodes(port)
    if not inodes:
        return {"number": port, "state": "free", "owner": ""}
    containers = _container_publishing(port) if docker_running else []
    if container_name in containers:
        return {"number": port, "state": "ours", "owner": "container %s" % container_name}
    if containers:
        return {"number": port, "state": "taken", "owner": "container %s" % ", ".join(containers)}
    return {"number": port, "state": "taken",
            "owner": _socket_owner(inodes) or "a process this user cannot see"}


def problems_of(report, p):
    problems = []
    if report["arch"] != p["expected_arch"]:
        problems.append("architecture is %s, expected spark_preflight_expected_arch=%s"
                        % (report["arch"], p["expected_arch"]))
    osr = report["os"]
    release = ("%s %s" % (osr["id"], osr["version_id"])).strip()
    if p["os_releases"] and not any(release == r or release.startswith(r + ".")
                                    or release.startswith(r + " ") for r in p["os_releases"]):
        problems.append("OS is %s (%s), expected one of spark_preflight_os_releases=%s"
                        % (release, osr["pretty_name"], ", ".join(p["os_releases"])))
    gpu = report["gpu"]
    if not gpu["present"]:
        problems.append("no usable GPU: %s" % gpu["error"])
    else:
        if p["gpu_name"] not in gpu["name"]:
            problems.append("GPU is %s, expected a name containing spark_preflight_gpu_name=%s"
                            % (gpu["name"], p["gpu_name"]))
        have, need = version_tuple(gpu["driver_version"]), version_tuple(p["min_driver_version"])
        if have is None:
            problems.append("driver version %r is not a dotted version" % gpu["driver_version"])
        elif have < need:
            problems.append("driver %s is older than spark_preflight_min_driver_version=%s"
                            % (gpu["driver_version"], p["min_driver_version"]))
    if not report["docker"]["running"]:
        problems.append("Docker engine not running: %s" % report["docker"]["error"])
    disk = report["disk"]
    if disk["free_bytes"] < disk["required_bytes"]:
        problems.append(
            "disk: %s free on %s, but the model fetch needs %s under %s (%s) plus "
            "spark_preflight_disk_margin_gb=%g: %s short"
            % (gb(disk["free_bytes"]), disk["path"], gb(disk["needed_bytes"]), disk["model_dir"],
               disk["detail"], p["disk_margin_bytes"] / GB,
               gb(disk["required_bytes"] - disk["free_bytes"])))
    port = report["port"]
    if port["state"] == "taken":
        problems.append("port %d (spark_preflight_port) is taken by %s, not by container %s"
                        % (port["number"], port["owner"], p["container_name"]))
    return problems


def main():
    module = AnsibleModule(
        argument_spec={
            "expected_arch": {"type": "str", "required": True},
            "os_releases": {"type": "list", "elements": "str", "default": []},
            "gpu_name": {"type": "str", "required": True},
            "min_driver_version": {"type": "str", "required": True},
            "model_dir": {"type": "path", "required": True},
            "model_size_bytes": {"type": "int", "required": True},
            "disk_margin_bytes": {"type": "int", "default": 0},
            "port": {"type": "int", "required": True},
            "container_name": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    if version_tuple(p["min_driver_version"]) is None:
        module.fail_json(msg="spark_preflight_min_driver_version=%r must be a dotted version such "
                             "as 580.0" % p["min_driver_version"])
    docker = docker_report()
    report = {
        "arch": platform.machine(),
        "os": os_release(),
        "gpu": gpu_report(),
        "docker": docker,
        "disk": disk_report(p["model_dir"], p["model_size_bytes"], p["disk_margin_bytes"]),
        "port": port_report(p["port"], p["container_name"], docker["running"]),
    }
    report["problems"] = problems_of(report, p)
    report["ok"] = not report["problems"]
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
