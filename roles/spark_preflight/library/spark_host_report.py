#!/usr/bin/python
"""Ansible module: read-only report of a DGX Spark host's readiness."""

from __future__ import annotations

DOCUMENTATION = r"""
module: spark_host_report
short_description: Report GPU, driver, Docker, disk and port state of a DGX Spark host
description:
  - Reads the host's state without changing anything; the role's asserts decide.
  - GPU name and driver version come from C(nvidia-smi --query-gpu); memory fields are not read
    (on GB10 they are C([N/A]) because memory is unified).
options:
  model_dir:
    description: Directory the model is fetched to.
    type: path
    required: true
  port:
    description: TCP port the service will listen on.
    type: int
    required: true
  container_name:
    description: Container that may own the port.
    type: str
    required: true
author: sparkfleet
"""

RETURN = r"""
report:
  description: gpu (present, name, driver_version, error), docker (present, running,
    server_version, error), disk (path, free_bytes, model_dir_bytes), port (state free|ours|taken, owner).
  returned: always
  type: dict
"""

import os
import shutil
import subprocess

from ansible.module_utils.basic import AnsibleModule


def _run(argv):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def gpu_report():
    if shutil.which("nvidia-smi") is None:
        return {"present": False, "name": "", "driver_version": "", "error": "nvidia-smi not found"}
    rc, out, err = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if rc != 0 or not lines:
        msg = (err or out).strip() or "nvidia-smi exited %d" % rc
        return {"present": False, "name": "", "driver_version": "", "error": msg}
    name, _, driver = lines[0].partition(",")
    return {"present": True, "name": name.strip(), "driver_version": driver.strip(), "error": "",
            "count": len(lines)}


def docker_report():
    if shutil.which("docker") is None:
        return {"present": False, "running": False, "server_version": "",
                "error": "docker command not found"}
    rc, out, err = _run(["docker", "version", "--format", "{{.Server.Version}}"])
    if rc != 0:
        return {"present": True, "running": False, "server_version": "",
                "error": (err or out).strip() or "docker version exited %d" % rc}
    return {"present": True, "running": True, "server_version": out.strip(), "error": ""}


def disk_report(model_dir):
    path = model_dir
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    st = os.statvfs(path)
    used = 0
    if os.path.isdir(model_dir):
        for root, _dirs, files in os.walk(model_dir):
            for name in files:
                try:
                    used += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
    return {"path": path, "free_bytes": st.f_bavail * st.f_frsize, "model_dir_bytes": used}


def _listening(port):
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def port_report(port, container_name):
    if not _listening(port):
        return {"state": "free", "owner": ""}
    if shutil.which("docker"):
        rc, out, _err = _run(["docker", "ps", "--filter", "name=^/?%s$" % container_name,
                              "--format", "{{.Ports}}"])
        if rc == 0 and (":%d->" % port) in out:
            return {"state": "ours", "owner": "container %s" % container_name}
    owner = "an unknown process"
    if shutil.which("ss"):
        rc, out, _err = _run(["ss", "-H", "-ltnp", "sport = :%d" % port])
        if rc == 0 and out.strip():
            owner = out.split("users:", 1)[-1].strip() if "users:" in out else out.strip()
    return {"state": "taken", "owner": owner}


def main():
    module = AnsibleModule(
        argument_spec={
            "model_dir": {"type": "path", "required": True},
            "port": {"type": "int", "required": True},
            "container_name": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    report = {
        "gpu": gpu_report(),
        "docker": docker_report(),
        "disk": disk_report(params["model_dir"]),
        "port": port_report(params["port"], params["container_name"]),
    }
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
