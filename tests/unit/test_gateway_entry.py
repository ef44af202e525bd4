"""The gateway's key and port rotation (roles/fleet_gateway/files/gateway_entry.py) against a
stand-in of HAProxy's runtime API on a unix socket.

The stand-in answers as HAProxy 2.8.0 answered on this machine (its management guide, "Unix Socket
commands"; the same on 2.6 and 3.0): ``show map FILE`` as ``0xADDR KEY VALUE`` lines,
``show servers state BACKEND`` as version 1 with its ``# be_id ...`` header, "Can't find backend."
for an unknown one, "entry not found." for ``set map`` of an absent entry, "Unknown map
identifier..." for an unknown map, "No such server." and the "... port changed from 'A' to 'B' by
'stats socket command'" answer of ``set server``, "Unknown command: ..." otherwise. It un-escapes
words as HAProxy's CLI parser does (backslash escapes, ``;`` separates commands unless escaped),
so an unescaped ``;`` in a key splits the command, as it would on HAProxy.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.nolab

SCRIPT = Path(__file__).resolve().parents[2] / "roles/fleet_gateway/files/gateway_entry.py"
HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
    "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "
    "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
)


def words(line: str) -> list[list[str]]:
    """Commands of one CLI line, split as HAProxy's parser does (backslash escapes, ``;``)."""
    commands: list[list[str]] = [[]]
    word, escaped, started = "", False, False
    for ch in line:
        if escaped:
            word, escaped, started = word + ch, False, True
        elif ch == "\\":
            escaped = True
        elif ch == ";":
            if started:
                commands[-1].append(word)
            commands.append([])
            word, started = "", False
        elif ch == " ":
            if started:
                commands[-1].append(word)
            word, started = "", False
        else:
            word, started = word + ch, True
    if started:
        commands[-1].append(word)
    return [c for c in commands if c]


class RuntimeApi:
    """HAProxy's admin socket for one map file and the per-host ``listen host-NAME`` sections."""

    def __init__(self, path: Path, mapfile: str, servers: dict[str, int]) -> None:
        self.path, self.mapfile = path, mapfile
        self.map: dict[str, str] = {}
        self.ports = dict(servers)
        self.commands: list[list[str]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                line = conn.makefile().readline().rstrip("\n")
                answer = "".join(self.answer(cmd) for cmd in words(line))
                conn.sendall(answer.encode())

    def answer(self, cmd: list[str]) -> str:
        self.commands.append(cmd)
        match cmd:
            case ["show", "map", name] if name == self.mapfile:
                return (
                    "".join(
                        f"0x55651{i:07x} {k} {v}\n" for i, (k, v) in enumerate(self.map.items())
                    )
                    + "\n"
                )
            case ["set" | "add", "map", name, _, _] if name != self.mapfile:
                return "Unknown map identifier. Please use #<id> or <file>.\n\n"
            case ["set", "map", _, key, value]:
                if key not in self.map:
                    return "entry not found.\n\n"
                self.map[key] = value
                return "\n"
            case ["add", "map", _, key, value]:
                self.map[key] = value
                return "\n"
            case ["show", "servers", "state", backend]:
                name = backend.removeprefix("host-")
                if not backend.startswith("host-") or name not in self.ports:
                    return "Can't find backend.\n\n"
                port = self.ports[name]
                row = (
                    f"4 {backend} 1 {name} 10.0.0.11 2 0 1 1 35 1 0 2 0 0 0 0 - {port} - 0 0 - - 0"
                )
                return f"1\n{HEADER}\n{row}\n\n"
            case ["set", "server", target, "addr", _, "port", port]:
                backend, _, name = target.partition("/")
                if backend != f"host-{name}" or name not in self.ports:
                    return "No such server.\n\n"
                old, self.ports[name] = self.ports[name], int(port)
                change = (
                    "no need to change the port"
                    if old == int(port)
                    else f"port changed from '{old}' to '{port}'"
                )
                return f"no need to change the addr, {change} by 'stats socket command'\n\n"
        return (
            f"Unknown command: '{cmd[0]}', but maybe one of the following ones is a better match:\n"
        )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RuntimeApi]:
    mapfile = tmp_path / "host-keys.map"
    mapfile.write_text("s-1 old-key-1\ns-2 key-2\n")
    mapfile.chmod(0o644)
    runtime = RuntimeApi(tmp_path / "admin.sock", str(mapfile), {"s-1": 8000, "s-2": 8000})
    runtime.map = {"s-1": "old-key-1", "s-2": "key-2"}
    yield runtime
    runtime.sock.close()


def entry(
    api: RuntimeApi, name: str, key: str | None, port: int, apply: bool, mapfile: str = ""
) -> tuple[int, dict[str, object], str]:
    request = {
        "socket": str(api.path),
        "map": mapfile or api.mapfile,
        "name": name,
        "key": key,
        "port": port,
        "apply": apply,
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.read_text()], input=json.dumps(request),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert key is None or key not in proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr


def test_a_rotated_key_is_seen_then_set_in_haproxy_and_the_file(api: RuntimeApi) -> None:
    mapfile = Path(api.mapfile)
    rc, out, err = entry(api, "s-1", "new;key\\1", 8000, apply=False)
    assert (rc, out) == (0, {"key_differs": True, "port_differs": False, "changed": False}), err
    assert api.map["s-1"] == "old-key-1" and mapfile.read_text() == "s-1 old-key-1\ns-2 key-2\n"
    rc, out, err = entry(api, "s-1", "new;key\\1", 8000, apply=True)
    assert (rc, out) == (0, {"key_differs": True, "port_differs": False, "changed": True}), err
    # the running map has the key as given (escaped on the wire), the file too, in place, 0600
    assert api.map == {"s-1": "new;key\\1", "s-2": "key-2"}
    assert mapfile.read_text() == "s-1 new;key\\1\ns-2 key-2\n"
    assert stat.S_IMODE(os.stat(mapfile).st_mode) == 0o600
    rc, out, _ = entry(api, "s-1", "new;key\\1", 8000, apply=False)
    assert out == {"key_differs": False, "port_differs": False, "changed": False}


def test_a_changed_port_is_set_on_the_hosts_server(api: RuntimeApi) -> None:
    rc, out, err = entry(api, "s-2", "key-2", 8001, apply=True)
    assert (rc, out) == (0, {"key_differs": False, "port_differs": True, "changed": True}), err
    assert api.ports["s-2"] == 8001
    assert ["set", "server", "host-s-2/s-2", "addr", "10.0.0.11", "port", "8001"] in api.commands


def test_a_host_without_key_or_not_served_yet_is_left_alone(api: RuntimeApi) -> None:
    rc, out, _ = entry(api, "s-1", None, 8000, apply=True)
    assert (rc, out) == (0, {"key_differs": False, "port_differs": False, "changed": False})
    rc, out, _ = entry(api, "s-9", "key-9", 8000, apply=True)
    assert (rc, out) == (
        0,
        {"key_differs": False, "port_differs": False, "changed": False, "absent": True},
    )
    assert "s-9" not in api.map


def test_a_refused_command_fails_without_showing_the_key(api: RuntimeApi, tmp_path: Path) -> None:
    # HAProxy loaded another file than the one the role names
    other = str(tmp_path / "other.map")
    rc, out, _ = entry(api, "s-1", "secret-key-0123", 8000, apply=True, mapfile=other)
    assert rc == 1 and out["failed"] is True
    assert "Unknown map identifier" in str(out["msg"])
    assert api.map["s-1"] == "old-key-1" and not Path(other).exists()


def test_a_runtime_api_that_does_not_answer_is_named(api: RuntimeApi, tmp_path: Path) -> None:
    request = {"socket": str(tmp_path / "gone.sock"), "map": api.mapfile, "name": "s-1",
               "key": "secret-key-0123", "port": 8000, "apply": True}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.read_text()], input=json.dumps(request),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    said = json.loads(proc.stdout)
    assert (
        said["msg"]
        == f"HAProxy's runtime API at {tmp_path / 'gone.sock'}: No such file or directory"
    )
    assert "secret-key-0123" not in proc.stdout + proc.stderr
