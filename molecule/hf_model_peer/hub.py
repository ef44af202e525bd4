"""Start, stop or query the hf_model_peer scenario's stand-in Hub (tests/standins/hf_hub_standin).

python hub.py start STATE_DIR HOST PORT   build the fixture repo once, start the server
python hub.py stop STATE_DIR              stop it
python hub.py stats STATE_DIR             print its stats (JSON)
python hub.py kill-when STATE_DIR WATCHED MIN_BYTES VICTIM UNIT
                                          in the background: once host WATCHED's fetch has
                                          received MIN_BYTES, SIGKILL unit UNIT on host VICTIM
                                          (a peer dying mid-transfer); writes STATE_DIR/killed.json
python hub.py interrupt STATE_DIR PLAYBOOK WATCHED MIN_BYTES [ARG...]
                                          run ansible-playbook PLAYBOOK [ARG...] and interrupt it
                                          as Ctrl-C does (SIGINT to its process group) once host
                                          WATCHED's fetch has received MIN_BYTES; writes
                                          STATE_DIR/interrupted.json
python hub.py lift-when STATE_DIR WATCHED HOST...
                                          in the background: once host WATCHED fetches in a run
                                          other than the one interrupted.json names, remove the
                                          tc qdisc of each HOST; writes STATE_DIR/lifted.json
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.standins.hf_hub_standin.runner import SERVER_PY, build_fixture  # noqa: E402

REPO_ID = "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
SHARD_SIZE = 2_000_000


def url(state: Path) -> str:
    return (state / "hub.url").read_text().strip()


def start(state: Path, host: str, port: int) -> None:
    state.mkdir(parents=True, exist_ok=True)
    stop(state)
    build_fixture(state / "repo", SHARD_SIZE)
    port_file = state / "hub.port"
    port_file.unlink(missing_ok=True)
    with open(state / "hub.log", "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, str(SERVER_PY), "--repo", f"{REPO_ID}={state / 'repo'}"),
                *("--host", host, "--port", str(port), "--port-file", str(port_file)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"stand-in Hub did not start: {(state / 'hub.log').read_text()}")
        time.sleep(0.05)
    (state / "hub.pid").write_text(f"{proc.pid}\n")
    (state / "hub.url").write_text(f"http://{host}:{port}\n")
    print(json.dumps({"url": url(state), "pid": proc.pid}))


def stop(state: Path) -> None:
    pid_file = state / "hub.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    pid_file.unlink()


def stats(state: Path) -> None:
    with urllib.request.urlopen(f"{url(state)}/_standin/stats", timeout=10) as response:
        print(response.read().decode())


PROGRESS = "/run/sparkfleet/hf_model-progress.json"


def watched_progress(watched: str) -> dict[str, Any]:
    proc = subprocess.run(
        ["docker", "exec", watched, "cat", PROGRESS], capture_output=True, text=True
    )
    try:
        progress = json.loads(proc.stdout) if proc.returncode == 0 else {}
    except ValueError:
        progress = {}
    return progress if isinstance(progress, dict) else {}


def kill_when(state: Path, watched: str, min_bytes: int, victim: str, unit: str) -> None:
    """Watch WATCHED's progress file (docker exec, as the tests read hosts) for up to 10 min."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        progress = watched_progress(watched)
        if progress.get("phase") == "fetching" and progress.get("bytes_fetched", 0) >= min_bytes:
            subprocess.run(
                ["docker", "exec", victim, "systemctl", "kill", "--signal=SIGKILL", unit],
                check=True,
            )
            (state / "killed.json").write_text(
                json.dumps({"victim": victim, "unit": unit, "watched_bytes": progress})
            )
            return
        time.sleep(0.2)


def interrupt(state: Path, playbook: str, watched: str, min_bytes: int, args: list[str]) -> None:
    """A play interrupted mid-fetch: its fetch jobs and rsync daemons are left on the hosts."""
    state.mkdir(parents=True, exist_ok=True)
    play = subprocess.Popen(
        [str(Path(sys.executable).parent / "ansible-playbook"), playbook, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    progress: dict[str, Any] = {}
    while play.poll() is None and time.monotonic() < deadline:
        progress = watched_progress(watched)
        if progress.get("phase") == "fetching" and progress.get("bytes_fetched", 0) >= min_bytes:
            break
        time.sleep(0.2)
    os.killpg(play.pid, signal.SIGINT)
    rc = play.wait(timeout=300)
    (state / "interrupted.json").write_text(json.dumps({"rc": rc, "watched": progress}))
    if progress.get("phase") != "fetching":
        raise SystemExit(f"{watched}'s fetch was not interrupted mid-transfer: {progress}")


def lift_when(state: Path, watched: str, hosts: list[str]) -> None:
    """Once the next run's fetch runs on WATCHED (up to 10 min), give HOSTs their full rate."""
    interrupted = json.loads((state / "interrupted.json").read_text())["watched"]["run_id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        progress = watched_progress(watched)
        if progress.get("phase") == "fetching" and progress.get("run_id") != interrupted:
            for host in hosts:
                subprocess.run(
                    ["docker", "exec", host, "tc", "qdisc", "del", "dev", "eth0", "root"]
                )
            (state / "lifted.json").write_text(json.dumps({"watched": progress}))
            return
        time.sleep(0.2)


def in_background(command: str, state: Path, result: str) -> None:
    """Run `hub.py COMMAND-run` with this run's arguments, detached; forget its last result."""
    state.mkdir(parents=True, exist_ok=True)
    (state / result).unlink(missing_ok=True)
    subprocess.Popen(
        [sys.executable, __file__, command + "-run", *sys.argv[2:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main() -> None:
    command, state = sys.argv[1], Path(sys.argv[2])
    if command == "start":
        start(state, sys.argv[3], int(sys.argv[4]))
    elif command == "stop":
        stop(state)
    elif command == "stats":
        stats(state)
    elif command == "kill-when":
        in_background(command, state, "killed.json")
    elif command == "kill-when-run":
        kill_when(state, sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
    elif command == "interrupt":
        interrupt(state, sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6:])
    elif command == "lift-when":
        in_background(command, state, "lifted.json")
    elif command == "lift-when-run":
        lift_when(state, sys.argv[3], sys.argv[4:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
