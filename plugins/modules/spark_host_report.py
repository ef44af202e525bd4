#!/usr/bin/python
"""Ansible module: read-only readiness report of a DGX Spark host, with the problems found."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: spark_host_report
short_description: Report architecture, OS, GPU, driver, Docker, unified memory, disk and port of a DGX Spark host
version_added: 0.1.0
description:
  - Reads the host's state without changing anything and lists every requirement not met, each
    with the numbers and the variable that sets the requirement. The role decides to fail.
  - "GPU name and driver version come from C(nvidia-smi --query-gpu). Its C(memory.total) is read
    but not judged: on GB10 memory is unified and it reads C([N/A]) or C(Not Supported); the
    unified memory is judged from the host's figures (below)."
  - Docker counts as running when C(docker.service) is active (the socket alone is not enough,
    and the module never starts Docker through it) and the engine answers C(docker version).
  - "Unified memory (GB10: the CPU, the page cache and the GPU share one pool): C(MemTotal),
    C(MemFree) and C(MemAvailable) from O(meminfo_path) and the GPU's compute processes
    (C(nvidia-smi --query-compute-apps)) against O(gpu_memory_util) x C(MemTotal), what vLLM asks
    for at start-up. Free is C(MemAvailable) when the page cache is dropped before each start
    (O(drop_caches)), C(MemFree) when it is not (the page cache then counts as used, as
    C(cudaMemGetInfo) counts it on GB10). Processes of O(container_name) (found by their cgroup)
    are our own server: their memory counts as free for it, so a serving host passes a re-run.
    Not judged when C(nvidia-smi) gives the GPU a memory of its own (not unified)."
  - "Disk: what the model fetch still needs is the size of the files listed in the model dir's
    C(.sparkfleet-manifest.json) that are missing or of another size; without a manifest it is
    O(model_size_bytes) less what the model dir already holds. The serving image O(image), when
    Docker does not hold it, needs O(image_size_bytes) in Docker's data root (C(docker info);
    with Docker stopped, C(data-root) of C(/etc/docker/daemon.json) or C(/var/lib/docker);
    C(/var/lib/containerd) when Docker stores images in containerd). Each filesystem something
    lands on must have its needs plus O(disk_margin_bytes) free; nothing to put there, no margin."
  - Reads /proc/meminfo itself rather than Ansible's memory facts, which have no C(MemAvailable)
    (vLLM 0.16's free figure on unified memory) and are not gathered by every play.
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
    description: Container that may own the port; its GPU processes are our own server's.
    type: str
    required: true
  proxy_config:
    description: >-
      Configuration file of the service's authenticating proxy (HAProxy); a process started with
      it may own the port too. Empty for none.
    type: str
    default: ""
  gpu_memory_util:
    description: Fraction of the unified memory vLLM asks for at start-up (its C(--gpu-memory-utilization)).
    type: float
    required: true
  drop_caches:
    description:
      - Whether the page cache is dropped right before each start of the server; C(auto) is true
        when the GPU's name contains C(GB10). Decides whether C(MemAvailable) or C(MemFree) is free.
    type: str
    choices: [auto, "true", "false"]
    default: auto
  meminfo_path:
    description: File in the format of C(/proc/meminfo) to read the memory figures from.
    type: path
    default: /proc/meminfo
  image:
    description: The serving image (reference as C(docker image inspect) takes it); empty to leave it out.
    type: str
    default: ""
  image_size_bytes:
    description: Bytes the serving image takes in Docker's data root once pulled, when Docker does not hold it.
    type: int
    default: 0
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
    image: avarok/dgx-vllm-nvfp4-kernel:v23
    image_size_bytes: "{{ (26 * 1e9) | int }}"
    port: 8000
    container_name: minimax
    gpu_memory_util: 0.93
    drop_caches: auto
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
      description: >-
        What the model fetch and the serving image need, against the free space of the
        filesystems they land on. C(path), C(free_bytes) and C(required_bytes) are the model dir's
        filesystem's; RV(report.disk.filesystems) has each filesystem.
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
          description: Bytes free for an unprivileged user on the model dir's filesystem.
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
          description: >-
            Bytes that must be free on the model dir's filesystem: everything landing there (the
            model, and the image when Docker's data root shares it) plus O(disk_margin_bytes); 0
            when nothing lands there.
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
        image:
          description: The serving image and what it needs.
          type: dict
          returned: always
          contains:
            ref:
              description: O(image).
              type: str
              returned: always
            present:
              description: Whether Docker holds it (false when Docker does not answer).
              type: bool
              returned: always
            size_bytes:
              description: Its size as Docker reports it when present, else O(image_size_bytes).
              type: int
              returned: always
            needed_bytes:
              description: Bytes its pull needs (0 when present or O(image) is empty).
              type: int
              returned: always
            store:
              description: Directory Docker pulls images into (the data root, or containerd's root); "" without O(image).
              type: str
              returned: always
              sample: /var/lib/docker
            store_source:
              description: Where that directory was read (C(docker info), C(daemon.json), C(default)).
              type: str
              returned: always
        filesystems:
          description: Each filesystem something lands on, with its free space and needs.
          type: list
          elements: dict
          returned: always
          contains:
            mount:
              description: Mount point of the filesystem.
              type: str
              returned: always
            paths:
              description: The directories measured on it (model dir, image store).
              type: list
              elements: str
              returned: always
            free_bytes:
              description: Bytes free for an unprivileged user.
              type: int
              returned: always
            needs:
              description: What lands there, C(what) and C(bytes) each.
              type: list
              elements: dict
              returned: always
            required_bytes:
              description: The needs plus O(disk_margin_bytes) (0 with no need).
              type: int
              returned: always
            ok:
              description: Whether C(free_bytes) is at least C(required_bytes).
              type: bool
              returned: always
    memory:
      description: Unified memory against what vLLM asks for at start-up (all figures in bytes).
      type: dict
      returned: always
      contains:
        checked:
          description: Whether the figures were judged (false when the GPU has a memory of its own or none was read).
          type: bool
          returned: always
        source:
          description: O(meminfo_path).
          type: str
          returned: always
        error:
          description: Why the figures could not be read ("" when they were).
          type: str
          returned: always
        total_bytes:
          description: C(MemTotal).
          type: int
          returned: always
        free_bytes:
          description: C(MemFree).
          type: int
          returned: always
        available_bytes:
          description: C(MemAvailable).
          type: int
          returned: always
        page_cache_bytes:
          description: C(Buffers) + C(Cached) - C(Shmem), what dropping the page cache can free.
          type: int
          returned: always
        util:
          description: O(gpu_memory_util).
          type: float
          returned: always
        needed_bytes:
          description: O(gpu_memory_util) x C(MemTotal).
          type: int
          returned: always
        drop_caches:
          description: Whether the page cache is dropped before each start (O(drop_caches) resolved).
          type: bool
          returned: always
        basis:
          description: C(MemAvailable) when the page cache is dropped, C(MemFree) when not.
          type: str
          returned: always
        own_bytes:
          description: GPU memory of our own server's processes (O(container_name)), free for it on a restart.
          type: int
          returned: always
        usable_bytes:
          description: The basis figure plus RV(report.memory.own_bytes).
          type: int
          returned: always
        apps:
          description: >-
            The GPU's compute processes, each with C(pid), C(name), C(used_bytes) (null when
            C(nvidia-smi) gives none) and C(own).
          type: list
          elements: dict
          returned: always
        apps_error:
          description: Why the compute processes could not be listed ("" when they were).
          type: str
          returned: always
        others_bytes:
          description: GPU memory of the other processes.
          type: int
          returned: always
        rest_bytes:
          description: What the kernel and the processes not on the GPU hold, of what is not usable.
          type: int
          returned: always
        ok:
          description: Whether RV(report.memory.usable_bytes) reaches RV(report.memory.needed_bytes) (true when not checked).
          type: bool
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
          description: C(free), C(ours) (published by O(container_name), or held by the proxy started with O(proxy_config)) or C(taken).
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
from typing import Any, Callable

from ansible.module_utils.basic import AnsibleModule

MANIFEST = ".sparkfleet-manifest.json"
GB = 1e9
GIB = 1024.0**3
MIB = 1024**2
# GPUs whose memory is the host's (page cache dropped before each start by drop_caches=auto)
UNIFIED_MEMORY_GPUS = ("GB10",)
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_DEFAULT_ROOT = "/var/lib/docker"
CONTAINERD_ROOT = "/var/lib/containerd"
NOT_A_NUMBER = ("[N/A]", "N/A", "[Not Supported]", "Not Supported", "")


def _run(argv, timeout=60):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def gb(value):
    return "%.1f GB" % (value / GB)


def gib(value: float) -> str:
    return "%.1f GiB" % (value / GIB)


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


def model_need(model_dir: str, model_size_bytes: int) -> dict[str, Any]:
    """What the model fetch still needs under ``model_dir`` (manifest, or size less present)."""
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
    return {"model_dir": model_dir, "present_bytes": present, "needed_bytes": needed,
            "basis": basis, "detail": detail}


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding ``path`` (an existing path)."""
    path = os.path.realpath(path)
    dev = os.stat(path).st_dev
    while path != "/":
        parent = os.path.dirname(path)
        if os.stat(parent).st_dev != dev:
            break
        path = parent
    return path


def statfs(path: str) -> dict[str, Any]:
    """Device, mount point and unprivileged free bytes of the filesystem of ``path`` (existing)."""
    st = os.statvfs(path)
    return {"device": os.stat(path).st_dev, "mount": mount_point(path),
            "free_bytes": st.f_bavail * st.f_frsize}


def plan_filesystems(needs: list[dict[str, Any]], fs_of: dict[str, dict[str, Any]],
                     margin_bytes: int) -> list[dict[str, Any]]:
    """Group ``needs`` ({path, what, bytes}) by the filesystem ``fs_of[path]`` they land on.

    Each filesystem gets its paths, its needs (those of 0 bytes left out), the sum plus the
    margin as required (0 when nothing lands there) and whether it has that much free.
    """
    found: list[dict[str, Any]] = []
    by_device: dict[Any, dict[str, Any]] = {}
    for need in needs:
        fs = fs_of[need["path"]]
        entry = by_device.get(fs["device"])
        if entry is None:
            entry = {"mount": fs["mount"], "paths": [], "free_bytes": fs["free_bytes"],
                     "needs": [], "required_bytes": 0, "ok": True}
            by_device[fs["device"]] = entry
            found.append(entry)
        if need["path"] not in entry["paths"]:
            entry["paths"].append(need["path"])
        if need["bytes"] > 0:
            entry["needs"].append({"what": need["what"], "bytes": need["bytes"]})
    for entry in found:
        total = sum(n["bytes"] for n in entry["needs"])
        entry["required_bytes"] = total + margin_bytes if total else 0
        entry["ok"] = entry["free_bytes"] >= entry["required_bytes"]
    return found


def docker_image_store(docker_running: bool, daemon_json: str = DOCKER_DAEMON_JSON
                       ) -> tuple[str, str]:
    """(directory Docker pulls images into, where that was read)."""
    if docker_running:
        rc, out, _err = _run(["docker", "info", "--format",
                              "{{.DockerRootDir}}\t{{json .DriverStatus}}"], timeout=30)
        root, _sep, status = out.strip().partition("\t")
        if rc == 0 and root.startswith("/"):
            if "io.containerd.snapshotter" in status:
                return CONTAINERD_ROOT, "docker info (containerd image store)"
            return root, "docker info"
    try:
        with open(daemon_json, encoding="utf-8") as handle:
            root = json.load(handle).get("data-root")
        if isinstance(root, str) and root.startswith("/"):
            return root, "daemon.json"
    except (OSError, ValueError, AttributeError):
        pass
    return DOCKER_DEFAULT_ROOT, "default"


def image_report(image: str, size_bytes: int, docker_running: bool) -> dict[str, Any]:
    """Whether Docker holds ``image``, its size and what its pull still needs."""
    if not image:
        return {"ref": "", "present": False, "size_bytes": 0, "needed_bytes": 0, "store": "",
                "store_source": ""}
    store, source = docker_image_store(docker_running)
    report = {"ref": image, "present": False, "size_bytes": size_bytes, "needed_bytes": 0,
              "store": store, "store_source": source}
    if docker_running:
        rc, out, _err = _run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                             timeout=30)
        if rc == 0 and out.strip().isdigit():
            report.update(present=True, size_bytes=int(out.strip()))
            return report
    report["needed_bytes"] = size_bytes
    return report


def disk_report(model_dir: str, model_size_bytes: int, margin_bytes: int,
                image: dict[str, Any] | None = None,
                fs: Callable[[str], dict[str, Any]] = statfs) -> dict[str, Any]:
    """The model's and the image's needs on the filesystems they land on."""
    report = model_need(model_dir, model_size_bytes)
    report["path"] = _nearest_existing(model_dir)
    report["image"] = image or {"ref": "", "present": False, "size_bytes": 0, "needed_bytes": 0,
                                "store": "", "store_source": ""}
    needs = [{"path": report["path"], "what": "model", "bytes": report["needed_bytes"]}]
    if report["image"]["store"]:
        needs.append({"path": _nearest_existing(report["image"]["store"]), "what": "image",
                      "bytes": report["image"]["needed_bytes"]})
    fs_of = {need["path"]: fs(need["path"]) for need in needs}
    report["filesystems"] = plan_filesystems(needs, fs_of, margin_bytes)
    model_fs = report["filesystems"][0]
    report["free_bytes"] = model_fs["free_bytes"]
    report["required_bytes"] = model_fs["required_bytes"]
    return report


# --- unified memory ----------------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """Bytes by field from /proc/meminfo text (``MemTotal:  127601216 kB``)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit():
            continue
        value = int(parts[0])
        fields[key.strip()] = value * 1024 if parts[1:2] == ["kB"] else value
    return fields


def parse_compute_apps(text: str) -> list[dict[str, Any]]:
    """Rows of ``--query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits``.

    ``used_bytes`` is None where nvidia-smi prints no number ([N/A]); lines that are not rows
    ("No running processes found") are left out.
    """
    apps = []
    for line in text.splitlines():
        pid, _sep, rest = line.partition(",")
        name, _sep, used = rest.rpartition(",")
        if not pid.strip().isdigit() or not _sep:
            continue
        mib = parse_memory(used)
        apps.append({"pid": int(pid), "name": name.strip(),
                     "used_bytes": None if mib is None else mib * MIB})
    return apps


def in_container(cgroup_text: str, container_id: str) -> bool:
    """Whether a process whose /proc/PID/cgroup is ``cgroup_text`` runs in ``container_id``."""
    return bool(container_id) and any(container_id in line for line in cgroup_text.splitlines())


def compute_apps() -> tuple[list[dict[str, Any]], str]:
    """The GPU's compute processes from nvidia-smi, and why they could not be listed ('' if so)."""
    if shutil.which("nvidia-smi") is None:
        return [], "nvidia-smi not found"
    rc, out, err = _run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                         "--format=csv,noheader,nounits"])
    if rc != 0:
        return [], "nvidia-smi exited %d: %s" % (rc, " ".join((err or out).split()))
    return parse_compute_apps(out), ""


def container_id(name: str, docker_running: bool) -> str:
    """Full ID of the running container ``name``, '' when there is none."""
    if not docker_running:
        return ""
    rc, out, _err = _run(["docker", "inspect", "--type", "container", "--format",
                          "{{.Id}} {{.State.Running}}", name], timeout=30)
    cid, _sep, running = out.strip().partition(" ")
    return cid if rc == 0 and running == "true" else ""


def read_cgroup(pid: int) -> str:
    try:
        with open("/proc/%d/cgroup" % pid, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def resolve_drop_caches(setting: str, gpu_name: str) -> bool:
    """drop_caches as given, ``auto``: true where the GPU's memory is the host's (GB10)."""
    if setting == "auto":
        return any(name in gpu_name for name in UNIFIED_MEMORY_GPUS)
    return setting == "true"


def memory_report(meminfo: dict[str, int], apps: list[dict[str, Any]], util: float,
                  drop_caches: bool) -> dict[str, Any]:
    """Unified memory against ``util`` x MemTotal; ``apps`` carry ``own`` (our server's)."""
    total = meminfo.get("MemTotal", 0)
    free = meminfo.get("MemFree", 0)
    available = meminfo.get("MemAvailable", free)
    cache = max(meminfo.get("Buffers", 0) + meminfo.get("Cached", 0) - meminfo.get("Shmem", 0), 0)
    basis_bytes = available if drop_caches else free
    own = sum(a["used_bytes"] or 0 for a in apps if a["own"])
    others = sum(a["used_bytes"] or 0 for a in apps if not a["own"])
    needed = int(util * total)
    usable = basis_bytes + own
    held = total - basis_bytes - own - others - (0 if drop_caches else cache)
    return {"checked": True, "total_bytes": total, "free_bytes": free,
            "available_bytes": available, "page_cache_bytes": cache, "util": util,
            "needed_bytes": needed, "drop_caches": drop_caches,
            "basis": "MemAvailable" if drop_caches else "MemFree", "own_bytes": own,
            "usable_bytes": usable, "apps": apps, "others_bytes": others,
            "rest_bytes": max(held, 0), "ok": usable >= needed}


def host_memory(meminfo_path: str, util: float, drop_caches: bool, unified: bool,
                own_container: str) -> dict[str, Any]:
    """memory_report of this host, or an unchecked report saying why."""
    unchecked = {"checked": False, "source": meminfo_path, "error": "", "util": util,
                 "drop_caches": drop_caches, "apps": [], "apps_error": "", "ok": True}
    if not unified:
        unchecked["error"] = "the GPU has a memory of its own (not unified): not judged"
        return unchecked
    try:
        with open(meminfo_path, encoding="ascii") as handle:
            meminfo = parse_meminfo(handle.read())
    except (OSError, UnicodeDecodeError) as exc:
        meminfo = {}
        unchecked["error"] = "cannot read %s: %s" % (meminfo_path, exc)
    if not meminfo.get("MemTotal") or "MemFree" not in meminfo:
        unchecked["error"] = unchecked["error"] or "no MemTotal/MemFree in %s" % meminfo_path
        unchecked["ok"] = False
        return unchecked
    apps, apps_error = compute_apps()
    for app in apps:
        app["own"] = in_container(read_cgroup(app["pid"]), own_container)
    report = memory_report(meminfo, apps, util, drop_caches)
    report.update(source=meminfo_path, error="", apps_error=apps_error)
    return report


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


def port_report(port, container_name, docker_running, proxy_config=""):
    inodes = _listen_inodes(port)
    if not inodes:
        return {"number": port, "state": "free", "owner": ""}
    containers = _container_publishing(port) if docker_running else []
    if container_name in containers:
        return {"number": port, "state": "ours", "owner": "container %s" % container_name}
    if containers:
        return {"number": port, "state": "taken", "owner": "container %s" % ", ".join(containers)}
    owner = _socket_owner(inodes)
    if proxy_config and re.search(r"(^|\s)-f %s(\s|$)" % re.escape(proxy_config), owner):
        return {"number": port, "state": "ours", "owner": "the service's proxy: %s" % owner}
    return {"number": port, "state": "taken", "owner": owner or "a process this user cannot see"}


def _drop_text(memory: dict[str, Any], p: dict[str, Any]) -> str:
    setting = p.get("drop_caches", "auto")
    if setting == "auto":
        return "vllm_drop_caches=auto, %s" % ("on for a GB10" if memory["drop_caches"]
                                              else "off: no GB10")
    return "vllm_drop_caches=%s" % setting


def memory_problems(memory: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """The unified-memory refusal, with its figures and who holds the memory, or nothing."""
    if memory["ok"]:
        return []
    if not memory["checked"]:
        return ["unified memory: %s; spark_preflight_meminfo_path=%s"
                % (memory["error"], memory["source"])]
    if memory["drop_caches"]:
        free = "%s free (MemAvailable: the page cache is dropped before each start, %s)" % (
            gib(memory["available_bytes"]), _drop_text(memory, p))
    else:
        free = ("%s free (MemFree: the page cache is kept, %s; MemAvailable %s)"
                % (gib(memory["free_bytes"]), _drop_text(memory, p),
                   gib(memory["available_bytes"])))
    if memory["own_bytes"]:
        free += " + %s of our own container %s" % (gib(memory["own_bytes"]), p["container_name"])
    holders = ["%s by GPU process %s (pid %d)" % (
        gib(a["used_bytes"]) if a["used_bytes"] is not None else "an unknown amount",
        a["name"] or "?", a["pid"]) for a in memory["apps"] if not a["own"]]
    if not memory["drop_caches"] and memory["page_cache_bytes"]:
        holders.append("%s by the page cache (vllm_drop_caches=true drops it before each start)"
                       % gib(memory["page_cache_bytes"]))
    holders.append("%s by the kernel and other processes" % gib(memory["rest_bytes"]))
    if memory["apps_error"]:
        holders.append("GPU processes unknown: %s" % memory["apps_error"])
    return [
        "unified memory: spark_preflight_gpu_memory_util=%g (vllm_gpu_memory_util) x MemTotal %s "
        "= %s needed at start-up, %s: %s short; held: %s"
        % (memory["util"], gib(memory["total_bytes"]), gib(memory["needed_bytes"]), free,
           gib(memory["needed_bytes"] - memory["usable_bytes"]), ", ".join(holders))
    ]


def disk_problems(disk: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """One refusal per filesystem short of space, naming what lands there and its variables."""
    problems = []
    image = disk["image"]
    for fs in disk["filesystems"]:
        if fs["ok"]:
            continue
        whats = []
        for need in fs["needs"]:
            if need["what"] == "model":
                whats.append("the model %s under %s (%s)" % (
                    gb(need["bytes"]), disk["model_dir"], disk["detail"]))
            else:
                whats.append("the image %s %s in %s (not on the host: "
                             "spark_preflight_image_size_gb=%g)" % (
                                 image["ref"], gb(need["bytes"]), image["store"],
                                 p["image_size_bytes"] / GB))
        problems.append(
            "disk: %s free on %s (filesystem of %s), but %s plus "
            "spark_preflight_disk_margin_gb=%g need %s: %s short"
            % (gb(fs["free_bytes"]), fs["mount"], " and ".join(fs["paths"]), " + ".join(whats),
               p["disk_margin_bytes"] / GB, gb(fs["required_bytes"]),
               gb(fs["required_bytes"] - fs["free_bytes"])))
    return problems


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
    problems.extend(memory_problems(report["memory"], p))
    problems.extend(disk_problems(report["disk"], p))
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
            "proxy_config": {"type": "str", "default": ""},
            "gpu_memory_util": {"type": "float", "required": True},
            "drop_caches": {"type": "str", "default": "auto",
                            "choices": ["auto", "true", "false"]},
            "meminfo_path": {"type": "path", "default": "/proc/meminfo"},
            "image": {"type": "str", "default": ""},
            "image_size_bytes": {"type": "int", "default": 0},
        },
        supports_check_mode=True,
    )
    p = module.params
    if version_tuple(p["min_driver_version"]) is None:
        module.fail_json(msg="spark_preflight_min_driver_version=%r must be a dotted version such "
                             "as 580.0" % p["min_driver_version"])
    if not 0 < p["gpu_memory_util"] <= 1:
        module.fail_json(msg="spark_preflight_gpu_memory_util=%s must be in (0, 1]"
                             % p["gpu_memory_util"])
    for name in ("model_size_bytes", "disk_margin_bytes", "image_size_bytes"):
        if p[name] < 0:
            module.fail_json(msg="%s=%d must be >= 0" % (name, p[name]))
    docker = docker_report()
    gpu = gpu_report()
    image = image_report(p["image"], p["image_size_bytes"], docker["running"])
    report = {
        "arch": platform.machine(),
        "os": os_release(),
        "gpu": gpu,
        "docker": docker,
        "memory": host_memory(
            p["meminfo_path"], p["gpu_memory_util"],
            resolve_drop_caches(p["drop_caches"], gpu["name"]),
            unified=gpu["memory_total_mib"] is None,
            own_container=container_id(p["container_name"], docker["running"])),
        "disk": disk_report(p["model_dir"], p["model_size_bytes"], p["disk_margin_bytes"], image),
        "port": port_report(p["port"], p["container_name"], docker["running"], p["proxy_config"]),
    }
    report["problems"] = problems_of(report, p)
    report["ok"] = not report["problems"]
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
