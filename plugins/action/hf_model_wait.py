# Action plugin of the hf_model role: wait for an async hf_model_fetch job, reporting progress.
"""Wait for an asynchronous hf_model_fetch job and show its progress while it runs.

Every I(interval) seconds it asks the host for the job's status (async_status) and for the
progress file the module writes, prints one line (bytes done/total, rate, time left) in Ansible's
output, and mirrors the progress to I(progress_dir)/<inventory_hostname>.json on the controller
for wrappers. Returns the module's own result when the job ends.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

ASYNC_KEYS = (
    "ansible_job_id",
    "started",
    "finished",
    "results_file",
    "stdout",
    "stderr",
    "stdout_lines",
    "stderr_lines",
    "_ansible_suppress_tmpdir_delete",
)


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def human_seconds(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(progress: dict[str, Any]) -> str:
    total = progress.get("bytes_total") or 0
    done = progress.get("bytes_done") or 0
    pct = 100.0 * done / total if total else 0.0
    line = f"{human_bytes(done)}/{human_bytes(total)} ({pct:.1f}%)"
    rate = progress.get("rate_bps") or 0
    if rate:
        line += f" at {human_bytes(rate)}/s"
    if progress.get("eta_s"):
        line += ", {} left".format(human_seconds(progress["eta_s"]))
    active = progress.get("active") or []
    if active:
        line += f", {len(active)} file(s) in flight"
    line += " [{}, {}]".format(progress.get("source", "?"), progress.get("phase", "?"))
    if progress.get("message"):
        line += ": {}".format(progress["message"])
    return line


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("jid", "progress_file", "progress_dir", "interval", "timeout"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        args = self._task.args
        jid = args.get("jid")
        if not jid:
            raise AnsibleActionFail("jid is required")
        interval = max(1.0, float(args.get("interval", 10)))
        timeout = float(args.get("timeout", 86400))
        progress_file = args.get("progress_file") or ""
        progress_dir = os.path.expanduser(args.get("progress_dir") or "")
        host = task_vars.get("inventory_hostname", "?")
        async_dir = self._remote_expand_user(
            self.get_shell_option("async_dir", default="~/.ansible_async")
        )

        deadline = time.monotonic() + timeout + 60
        status: dict[str, Any] = {}
        progress: dict[str, Any] | None = None
        last = None
        try:
            while True:
                status = self._execute_module(
                    module_name="ansible.legacy.async_status",
                    module_args={"jid": jid, "mode": "status", "_async_dir": async_dir},
                    task_vars=task_vars,
                )
                finished = bool(status.get("finished")) or (
                    status.get("failed")
                    and status.get("_ansible_parsed", True)
                    and not status.get("started")
                )
                progress = self._progress(progress_file, task_vars)
                if progress is not None:
                    progress["host"] = host
                    self._mirror(progress_dir, host, progress)
                    line = progress_line(progress)
                    if line != last and not finished:
                        display.display(f"hf_model [{host}]: {line}")
                        last = line
                if finished:
                    break
                if time.monotonic() > deadline:
                    result.update(
                        failed=True,
                        msg=f"the fetch did not finish within {timeout:.0f}s "
                        "(hf_model_fetch_timeout_s)",
                    )
                    return result
                time.sleep(interval)
        finally:
            self._execute_module(
                module_name="ansible.legacy.async_status",
                module_args={"jid": jid, "mode": "cleanup", "_async_dir": async_dir},
                task_vars=task_vars,
            )
            self._remove_tmp_path(self._connection._shell.tmpdir)

        for key in ASYNC_KEYS:
            status.pop(key, None)
        result.update(status)
        if result.get("failed") and not result.get("msg"):
            result["msg"] = "the fetch job failed without a message"
        if progress is not None:
            display.vv(f"hf_model [{host}]: {progress_line(progress)}")
        return result

    def _progress(self, path: str, task_vars: dict[str, Any]) -> dict[str, Any] | None:
        if not path:
            return None
        found = self._execute_module(
            module_name="ansible.legacy.slurp", module_args={"src": path}, task_vars=task_vars
        )
        if found.get("failed") or "content" not in found:
            return None
        try:
            progress = json.loads(base64.b64decode(found["content"]))
        except (TypeError, ValueError):
            return None
        return progress if isinstance(progress, dict) else None

    @staticmethod
    def _mirror(directory: str, host: str, progress: dict[str, Any]) -> None:
        if not directory:
            return
        try:
            os.makedirs(directory, exist_ok=True)
            target = os.path.join(directory, f"{host}.json")
            tmp = f"{target}.{os.getpid()}.tmp"
            with open(tmp, "w") as handle:
                json.dump(progress, handle, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, target)
        except OSError as exc:
            display.warning(f"hf_model: cannot write progress to {directory}: {exc}")
