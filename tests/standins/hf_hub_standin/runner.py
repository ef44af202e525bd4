"""Stand-in for the Hugging Face Hub, used only by the project's tests and benchmarks: a runner.

Builds fixtures with ``fixture.py`` and starts ``server.py`` as a child process on a chosen
address, then drives its control API (faults, stats, reset). Standard library only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STANDIN_DIR = Path(__file__).resolve().parent
FIXTURE_PY = STANDIN_DIR / "fixture.py"
SERVER_PY = STANDIN_DIR / "server.py"


def build_fixture(
    out: Path, shard_size: int, shards: int = 20, seed: int = 0, python: str = sys.executable
) -> dict[str, Any]:
    """Build (or reuse, when its parameters match) a synthetic repo in ``out``; its repo.json."""
    meta_path = out / "repo.json"
    wanted = {"shard_size": shard_size, "shards": shards, "seed": seed}
    if meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if meta.get("generator") == wanted:
            return meta
    subprocess.run(
        [
            *(python, str(FIXTURE_PY), "--out", str(out)),
            *("--shard-size", str(shard_size), "--shards", str(shards), "--seed", str(seed)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    built: dict[str, Any] = json.loads(meta_path.read_text())
    return built


@dataclass
class StandinHub:
    """A running stand-in Hub serving fixture repos; stop() ends it."""

    repos: dict[str, Path]
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    cdn: bool = True  # LFS files 302 to a second origin, as on huggingface.co
    url: str = ""
    log: Path = field(default_factory=Path)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StandinHub:
        port_file = self.workdir / f"hub-{id(self)}.port"
        port_file.unlink(missing_ok=True)
        self.log = self.workdir / f"hub-{id(self)}.log"
        args = [sys.executable, str(SERVER_PY), "--host", self.host, "--port", str(self.port)]
        for repo_id, directory in self.repos.items():
            args += ["--repo", f"{repo_id}={directory}"]
        if self.token:
            args += ["--token", self.token]
        if not self.cdn:
            args.append("--no-cdn")
        args += ["--port-file", str(port_file)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"stand-in Hub exited: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in Hub did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.url = f"http://{self.host}:{self.port}"
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/_standin/{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.control("GET", "stats")
        return stats

    def clean(self) -> None:
        """Clear the fault switches and zero the stats."""
        self.control("DELETE", "faults")
        self.control("POST", "reset")

    def faults(self, **switches: Any) -> None:
        self.control("POST", "faults", switches)
