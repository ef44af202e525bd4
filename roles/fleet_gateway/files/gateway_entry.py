"""One backend host's entry at a running gateway: its key in the host-keys map and its port.

Run on the gateway host as root by the role's rotate.yml and undrain.yml (python3 -c, the request
as JSON on stdin, so no key reaches argv):
``{"socket": str, "map": str, "name": str, "key": str | null, "port": int, "apply": bool}``.
Prints ``{"key_differs": bool, "port_differs": bool, "changed": bool}`` (and ``"absent": true``
for a host the gateway does not serve yet: nothing to compare); exits 1 with a message
(never a key) when the runtime API refuses a command.

It reads what the running HAProxy uses through its runtime API (``show map FILE``, ``show servers
state host-NAME``; management guide, "Unix Socket commands", HAProxy 2.6-3.0) and, with apply,
puts the host's current key and port there (``set map``/``add map``, ``set server ... addr A
port P``) and rewrites the host's line of the map file (0600, replaced atomically), so a
reload keeps it.
A key of null (a host without vllm_api_key) is not compared: its hop sends no key.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from typing import NoReturn


def fail(message: str) -> NoReturn:
    print(json.dumps({"failed": True, "msg": message}))
    sys.exit(1)


def cli(path: str, command: str) -> str:
    """One runtime API command; returns its answer (the socket closes after it). Fails (exit 1,
    the message naming the socket and the error, not the command, which may hold a key) when the
    socket cannot be used: absent, not root, HAProxy not answering."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(path)
            conn.sendall(command.encode() + b"\n")
            chunks: list[bytes] = []
            while True:
                data = conn.recv(65536)
                if not data:
                    return b"".join(chunks).decode(errors="replace")
                chunks.append(data)
    except OSError as err:
        denied = isinstance(err, PermissionError)
        hint = " (the runtime API is root's: run with become)" if denied else ""
        fail(f"HAProxy's runtime API at {path}: {err.strerror or err}{hint}")


def arg(value: str) -> str:
    """A word of a runtime API command: backslash and ';' escaped (keys are printable, no space)."""
    return value.replace("\\", "\\\\").replace(";", "\\;")


def report(**result: bool) -> None:
    print(json.dumps(result))


def main() -> None:
    req = json.load(sys.stdin)
    sock, mapfile, name = req["socket"], req["map"], req["name"]
    backend = "host-" + name
    current_key = None
    for line in cli(sock, "show map " + mapfile).splitlines():
        fields = line.split(" ", 2)
        if len(fields) == 3 and fields[1] == name:
            current_key = fields[2]
    state = cli(sock, "show servers state " + backend).splitlines()
    header = next((line[2:].split() for line in state if line.startswith("# be_id")), None)
    rows = [line.split() for line in state if not line.startswith("#")]
    row = next((r for r in rows if header is not None and len(r) == len(header)), None)
    if header is None or row is None:
        # not behind this gateway (yet): its play adds it
        report(key_differs=False, port_differs=False, changed=False, absent=True)
        return
    server = dict(zip(header, row, strict=False))
    key_differs = req["key"] is not None and current_key != req["key"]
    port_differs = server.get("srv_port") != str(req["port"])
    changed = False
    if req["apply"] and key_differs:
        verb = "set" if current_key is not None else "add"
        answer = cli(sock, f"{verb} map {mapfile} {name} {arg(req['key'])}").strip()
        if answer:
            fail(f"{verb} map {mapfile} {name}: {answer[:200]}")
        entry, lines = f"{name} {req['key']}", list[str]()
        if os.path.exists(mapfile):
            with open(mapfile) as f:
                lines = f.read().splitlines()
        mine = [i for i, line in enumerate(lines) if line.split(" ", 1)[0] == name]
        if mine:  # in place: the file stays as the role writes it
            lines[mine[0]] = entry
        else:
            lines.append(entry)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(mapfile), prefix=".host-keys.")
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.chmod(tmp, 0o600)
        os.replace(tmp, mapfile)
        changed = True
    if req["apply"] and port_differs:
        command = f"set server {backend}/{name} addr {server['srv_addr']} port {int(req['port'])}"
        answer = cli(sock, command).strip()
        if "changed" not in answer and "no need" not in answer:
            fail(f"{command}: {answer[:200]}")
        changed = True
    report(key_differs=key_differs, port_differs=port_differs, changed=changed)


main()
