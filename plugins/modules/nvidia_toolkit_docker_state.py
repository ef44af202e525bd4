#!/usr/bin/python
"""Ansible module: does the running dockerd predate the toolkit's OCI hook?"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_toolkit_docker_state
short_description: Tell whether dockerd must restart to offer --gpus
version_added: 0.1.0
description:
  - Read-only. dockerd registers its GPU device driver (what C(docker run --gpus) needs) only at
    start, and only when C(nvidia-container-runtime-hook) is on its PATH then; a reload does not
    register it. This module compares the start time of the service's main process with the time
    the hook appeared (the package's last fresh install in dpkg's log, else the hook's inode
    change time) and says whether a restart is needed. An upgrade of the package is not one.
options:
  service:
    description: systemd unit of the Docker engine.
    type: str
    default: docker.service
  hook:
    description: The toolkit's OCI prestart hook, looked up on PATH.
    type: str
    default: nvidia-container-runtime-hook
  package:
    description:
      - Package that ships the hook. dpkg's log tells when it was first installed; an upgrade
        replaces the file (a newer change time) but the hook was on PATH all along, and dockerd
        does not need a restart for it.
    type: str
    default: nvidia-container-toolkit
  dpkg_logs:
    description: dpkg's logs, newest first. When none mentions O(package), the hook's change time is used.
    type: list
    elements: path
    default: [/var/log/dpkg.log, /var/log/dpkg.log.1]
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Find whether dockerd started before the toolkit's hook was installed
  sparkfleet.spark.nvidia_toolkit_docker_state:
    service: docker.service
  register: docker_state

- name: Restart Docker so that docker run --gpus works
  ansible.builtin.systemd_service:
    name: docker.service
    state: restarted
  when: docker_state.restart_needed
"""

RETURN = r"""
restart_needed:
  description: Whether dockerd runs and started before the hook was installed.
  returned: always
  type: bool
  sample: false
hook_path:
  description: Where the hook is ("" when not installed).
  returned: always
  type: str
  sample: /usr/bin/nvidia-container-runtime-hook
hook_installed_at:
  description:
    - When the hook appeared (epoch seconds) - the last fresh install of O(package) in dpkg's log,
      or the hook's inode change time when the log does not mention the package; 0 when it is not
      installed or was there before the oldest log entry.
  returned: always
  type: float
  sample: 1735732800.25
dockerd_pid:
  description: Main PID of the service, 0 when it is not running.
  returned: always
  type: int
  sample: 1234
dockerd_started_at:
  description: Start time of that process (epoch seconds), 0 when it is not running.
  returned: always
  type: float
  sample: 1735732900.5
"""

import os
import shutil
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def main_pid(service):
    try:
        out = subprocess.run(["systemctl", "show", "--property", "MainPID", "--value", service],
                             capture_output=True, text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return int(out.strip()) if out.strip().isdigit() else 0


def process_start(pid):
    """Start time of ``pid`` in epoch seconds, from /proc (0 when unknown).

    /proc/PID/stat counts clock ticks since boot; the boot clock read now turns that into an age
    (to 10 ms, unlike /proc/stat's btime, which is rounded to the second).
    """
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0.0
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def first_install(package, logs):
    """(known, epoch) of the last fresh install of ``package`` in dpkg's logs.

    A log line is ``2026-11-30 09:47:59 install nvidia-container-toolkit:amd64 <none> 1.20.0-1``
    for a fresh install and ``... upgrade PKG:ARCH OLD NEW`` for an upgrade or a downgrade
    (dpkg's log format, dpkg(1) "--log"). ``known`` is whether any line names the package.
    """
    known, latest = False, 0.0
    for path in logs:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 4 or parts[3].split(":", 1)[0] != package:
                continue
            known = True
            if parts[2] == "install" and len(parts) >= 5 and parts[4] == "<none>":
                try:
                    stamp = time.mktime(time.strptime(parts[0] + " " + parts[1], "%Y-%m-%d %H:%M:%S"))
                except ValueError:
                    continue
                latest = max(latest, stamp)
    return known, latest


def main():
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "default": "docker.service"},
            "hook": {"type": "str", "default": "nvidia-container-runtime-hook"},
            "package": {"type": "str", "default": "nvidia-container-toolkit"},
            "dpkg_logs": {"type": "list", "elements": "path",
                          "default": ["/var/log/dpkg.log", "/var/log/dpkg.log.1"]},
        },
        supports_check_mode=True,
    )
    hook = shutil.which(module.params["hook"], path=SEARCH_PATH) or ""
    known, installed = first_install(module.params["package"], module.params["dpkg_logs"])
    if hook and not known:
        installed = os.stat(hook).st_ctime
    if not hook:
        installed = 0.0
    pid = main_pid(module.params["service"])
    started = process_start(pid) if pid else 0.0
    module.exit_json(
        changed=False, hook_path=hook, hook_installed_at=installed, dockerd_pid=pid,
        dockerd_started_at=started, restart_needed=bool(hook and started and started < installed),
    )


if __name__ == "__main__":
    main()
