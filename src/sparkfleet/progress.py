"""Download progress from the hf_model role's progress files, while a run goes on.

While the role waits for a fetch, the controller mirrors each host's progress file to
``hf_model_progress_dir/<inventory_hostname>.json`` (schema ``sparkfleet/hf_model-progress/1``:
``bytes_done``, ``bytes_total``, ``rate_bps``, ...). A :class:`ProgressPoller` watches such a
directory and turns every new version of a file into a :class:`DownloadProgress` event, naming
the task the host runs at the time (as the run's events reported it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from sparkfleet.events import DownloadProgress, progress_from_mapping


class ProgressPoller:
    """Emits a DownloadProgress for each progress file that changed since the last poll."""

    def __init__(
        self,
        directory: Path,
        emit: Callable[[DownloadProgress], None],
        interval_s: float = 1.0,
        task_of: Callable[[str], str | None] = lambda host: None,
    ) -> None:
        """Watch ``directory``; ``emit`` gets each event, at most one poll per ``interval_s``
        seconds; ``task_of(host)`` names the task the host runs (None when unknown)."""
        self.directory = directory
        self.emit = emit
        self.task_of = task_of
        self.interval_s = interval_s
        self._seen: dict[Path, int] = {}
        self._last: float | None = None  # monotonic time of the last poll; None: never polled

    def poll(self, force: bool = False) -> int:
        """Read the changed files (at most once per interval unless forced); events emitted."""
        now = time.monotonic()
        # time.monotonic() counts from an arbitrary point (boot, on Linux): only differences
        # between two of its readings mean something, so "never polled" cannot be a number
        if not force and self._last is not None and now - self._last < self.interval_s:
            return 0
        self._last = now
        emitted = 0
        for path in sorted(self.directory.glob("*.json")):
            try:
                stamp = path.stat().st_mtime_ns
                if self._seen.get(path) == stamp:
                    continue
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or half written: the next poll reads it
            self._seen[path] = stamp
            event = self._event(path, doc)
            if event is not None:
                self.emit(event)
                emitted += 1
        return emitted

    def _event(self, path: Path, doc: object) -> DownloadProgress | None:
        host = str((doc.get("host") if isinstance(doc, dict) else None) or path.stem)
        return progress_from_mapping({"host": host, "task": self.task_of(host)}, doc)
