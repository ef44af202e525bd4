"""The gateway's configuration run by the machine's own HAProxy (Debian's package, which ``make
lab-prepare`` installs), in front of two stand-in hosts on the loopback, and the role's drain and
undrain task files run against it, as a backend host runs them.

The stand-in hosts are as strict as the per-host proxy in front of vLLM where the gateway depends
on it: ``/health`` open (200, or 503 while the engine is gone), every other route only with
exactly ``Authorization: Bearer KEY`` (else 401), a stopped host refuses connections.

The gateway host is this machine (connection local) with an instance name of its own, given only
in the gateway group's variables (``fleet_gateway_instance``): its runtime directory is
``/run/INSTANCE``, which needs root, as the gateway's HAProxy does (it drops to user haproxy).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ports import free_port
from tests.unit.plays import check_play

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
FLEET_KEY = "fleet-key-0123456789abcdef"
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
# another build to run it with (e.g. HAProxy 2.8 built from its sources), else Debian's
HAPROXY = os.environ.get("SPARKFLEET_TEST_HAPROXY", "/usr/sbin/haproxy")


class StandInHost:
    """A backend host's proxy and engine on 127.0.0.1: see the module docstring."""

    def __init__(self, name: str, key: str) -> None:
        self.name, self.key, self.engine_up = name, key, True
        self.release = threading.Event()  # ends the requests to /v1/hold
        self.conns: set[socket.socket] = set()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Host", host.name)
                self.end_headers()
                self.wfile.write(data)

            def setup(self) -> None:
                super().setup()
                host.conns.add(self.request)

            def route(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path == "/health":
                    self.answer(200 if host.engine_up else 503, {})
                elif self.headers.get("Authorization") != f"Bearer {host.key}":
                    self.answer(401, {"error": "Unauthorized"})
                elif self.path == "/v1/models":
                    self.answer(200, {"data": [{"id": "m"}]})
                elif self.path == "/v1/hold":  # a long generation: in flight until released
                    host.release.wait(120)
                    self.answer(200, {"host": host.name})
                else:
                    self.answer(200, {"host": host.name})

            do_GET = do_POST = route

        class Server(ThreadingHTTPServer):
            def handle_error(self, *_: Any) -> None:
                pass  # connections the gateway or stop() reset

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """The host dies as a killed process does: its connections reset, its port refuses
        connections from now on."""
        self.server.shutdown()
        self.server.server_close()
        for conn in list(self.conns):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()


@dataclass
class Gateway:
    dir: Path
    instance: str
    port: int
    metrics_port: int
    hosts: dict[str, StandInHost]
    proc: subprocess.Popen[bytes] | None = None
    runs: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path("/run") / self.instance

    @staticmethod
    def host_vars(host: StandInHost) -> dict[str, Any]:
        return {**LOCAL, "ansible_host": "127.0.0.1", "vllm_port": host.port,
                "vllm_api_key": f"host-key-{host.name}-0123456789"}  # fmt: skip

    def inventory(self, **gateway_hosts: dict[str, Any]) -> Path:
        inv = {
            "all": {
                "children": {
                    "gateway": {
                        "hosts": {"gw": dict(LOCAL), **gateway_hosts},
                        "vars": {
                            "fleet_gateway_api_key": FLEET_KEY,
                            "fleet_gateway_instance": self.instance,
                            "fleet_gateway_config_dir": str(self.dir / "etc"),
                            "fleet_gateway_bind_address": "127.0.0.1",
                            "fleet_gateway_port": self.port,
                            "fleet_gateway_metrics_bind_address": "127.0.0.1",
                            "fleet_gateway_metrics_port": self.metrics_port,
                            "fleet_gateway_balance": "roundrobin",
                            "fleet_gateway_check_interval_s": 1,
                            "fleet_gateway_up_timeout_s": 10,
                            "fleet_gateway_drain_timeout_s": 10,
                        },
                    },
                    "spark": {"hosts": {name: self.host_vars(h) for name, h in self.hosts.items()}},
                }
            }
        }
        path = self.dir / "hosts.yml"
        path.write_text(yaml.safe_dump(inv))
        return path

    def play(
        self, hosts: str, tasks: list[Any], *args: str, **gateway_hosts: Any
    ) -> tuple[int, str]:
        book = self.dir / "play.yml"
        book.write_text(yaml.safe_dump([{"hosts": hosts, "gather_facts": False, "tasks": tasks}]))
        env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"),
             "-i", str(self.inventory(**gateway_hosts)), *args, str(book)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        self.runs.append(out)
        return proc.returncode, out

    def role(
        self, hosts: str, tasks_from: str, *args: str, **gateway_hosts: Any
    ) -> tuple[int, str]:
        include = {"name": "fleet_gateway", "tasks_from": tasks_from}
        return self.play(hosts, [{"ansible.builtin.include_role": include}], *args, **gateway_hosts)

    def stats(self) -> dict[str, str]:
        """Each host's state in the fleet backend (UP, DOWN, MAINT, ...) from the stats page."""
        url = f"http://127.0.0.1:{self.metrics_port}/stats;csv;norefresh"
        with urllib.request.urlopen(url, timeout=30) as resp:
            rows = [line.split(",") for line in resp.read().decode().splitlines()]
        servers = [r for r in rows if r[0] == "fleet" and r[1] not in ("FRONTEND", "BACKEND")]
        return {r[1]: r[17] for r in servers}

    def wait_for(self, states: dict[str, str], budget_s: float = 120) -> float:
        """Seconds until the stats show ``states`` (a state's first word)."""
        start = time.monotonic()
        while True:
            seen = {h: s.split()[0] for h, s in self.stats().items()}
            if all(seen.get(h) == s for h, s in states.items()):
                return time.monotonic() - start
            assert time.monotonic() - start < budget_s, f"never {states}: {seen}"
            time.sleep(0.2)

    def chat(self) -> tuple[int, str]:
        """One chat request through the gateway: its status and the host that answered."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions", data=b"{}", method="POST",
            headers={"Authorization": f"Bearer {FLEET_KEY}"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return int(resp.status), resp.headers.get("X-Host", "")
        except urllib.error.HTTPError as err:
            return err.code, ""


# The role's files as its main tasks write them, with its variables (from a task file that
# changes nothing; its checks are left out: they refuse backends on the gateway's loopback, where
# the stand-in hosts are).
RENDER: list[Any] = [
    {
        "ansible.builtin.include_role": {
            "name": "fleet_gateway",
            "tasks_from": "gateways",
            "public": True,
        },
        "vars": {"fleet_gateway_group": "none"},
    },
    {"ansible.builtin.file": {"path": "{{ fleet_gateway_config_dir }}", "state": "directory"}},
    {
        "ansible.builtin.copy": {
            "dest": "{{ _fleet_gateway_client_keys }}",
            "content": "{{ fleet_gateway_api_key }}\n",
            "mode": "0600",
        }
    },
    {
        "ansible.builtin.copy": {
            "dest": "{{ _fleet_gateway_host_keys }}",
            "mode": "0600",
            "content": "{% for h in _fleet_gateway_backends if h.keyed %}"
            "{{ h.name }} {{ hostvars[h.name].vllm_api_key }}\n{% endfor %}",
        }
    },
    {
        "ansible.builtin.template": {
            "src": str(ROOT / "roles/fleet_gateway/templates/haproxy.cfg.j2"),
            "dest": "{{ _fleet_gateway_config }}",
            "validate": HAPROXY + " -c -f %s",
        }
    },
]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    assert Path(HAPROXY).exists(), "HAProxy is not installed (make lab-prepare installs it)"
    hosts = {name: StandInHost(name, f"host-key-{name}-0123456789") for name in ("b1", "b2")}
    gw = Gateway(tmp_path, f"sftest-{uuid.uuid4().hex[:8]}", free_port(), free_port(), hosts)
    gw.run_dir.mkdir(mode=0o711)
    try:
        rc, out = gw.play("gw", RENDER)
        assert rc == 0, out
        log = (tmp_path / "haproxy.log").open("wb")
        gw.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(tmp_path / "etc/haproxy.cfg")],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (gw.run_dir / "admin.sock").exists():
            assert gw.proc.poll() is None, (tmp_path / "haproxy.log").read_text()
            assert time.monotonic() < deadline, "HAProxy made no admin socket"
            time.sleep(0.1)
        gw.wait_for({"b1": "UP", "b2": "UP"})
        yield gw
    finally:
        if gw.proc is not None:
            gw.proc.terminate()
            gw.proc.wait(timeout=30)
        for h in hosts.values():
            # shutdown() first: a server closed under its serve_forever() thread leaves that
            # thread polling a closed descriptor, a busy loop for the rest of the session
            h.server.shutdown()
            h.server.server_close()
        shutil.rmtree(gw.run_dir, ignore_errors=True)


def test_drain_and_undrain_act_on_the_gateways_own_instance(gateway: Gateway) -> None:
    # a second gateway in the group with no HAProxy running: named, not skipped silently
    idle = {**LOCAL, "fleet_gateway_instance": "sftest-not-running"}
    # and one that cannot be reached (nothing listens on the loopback's port 1): skipped, named
    gone = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1}
    rc, out = gateway.role("b2", "drain", gw2=idle, gw3=gone)
    assert rc == 0, out
    assert "WARNING: gateway gw3 cannot be reached" in out, out
    assert gateway.stats()["b2"].startswith("MAINT"), out
    assert (
        "WARNING: gateway gw2 has no runtime API socket at /run/sftest-not-running/admin.sock"
        in out
    ), out
    answered = {gateway.chat() for _ in range(6)}
    assert answered == {(200, "b1")}
    rc, out = gateway.role("b2", "undrain", gw2=idle)
    assert rc == 0, out
    assert gateway.stats()["b2"].startswith("UP"), out  # 2.8: "UP 1/2" until its next check
    assert {gateway.chat() for _ in range(6)} == {(200, "b1"), (200, "b2")}


def test_undrain_checks_the_host_through_the_gateway_before_it_goes_back(gateway: Gateway) -> None:
    # check mode first: nothing is drained, nothing waited for, nothing said about cut requests
    rc, out = gateway.role("b2", "drain", "--check")
    assert rc == 0, out
    assert "restarting it anyway" not in out, out
    assert gateway.stats()["b2"] == "UP"
    rc, out = gateway.role("b2", "drain")
    assert rc == 0, out
    # the host's proxy now takes another key than the inventory's (and so the gateway's)
    gateway.hosts["b2"].key = "drifted-key-0123456789"
    rc, out = gateway.role("b2", "undrain")
    assert rc != 0, out
    assert "gateway gw: b2 answers /v1/models with 401 through the gateway's hop" in out, out
    assert "its proxy refuses the key the gateway has for it" in out, out
    assert "host-key-b2" not in out and "drifted-key" not in out, out
    # still out: clients never meet its 401
    assert gateway.stats()["b2"].startswith("MAINT")
    assert {gateway.chat() for _ in range(4)} == {(200, "b1")}


def test_a_host_that_dies_fails_no_request(gateway: Gateway) -> None:
    gateway.hosts["b1"].stop()
    # round robin: every other request goes to b1 until its checks take it out
    answers = [gateway.chat() for _ in range(10)]
    out_after_s = gateway.wait_for({"b1": "DOWN"})
    print(f"b1 out of rotation {out_after_s:.1f} s after the requests (check interval 1 s, fall 2)")
    assert answers == [(200, "b2")] * 10


def test_a_gateway_that_refuses_the_hosts_entry_says_why(gateway: Gateway) -> None:
    # the gateway's configuration directory as the inventory names it now is not the one its
    # HAProxy loaded the host keys from: the runtime API refuses the key, and the run says so
    moved = {**LOCAL, "fleet_gateway_config_dir": "/etc/sftest-elsewhere"}
    rc, out = gateway.role("b2", "undrain", gw=moved)
    assert rc != 0, out
    assert (
        "gateway gw: add map /etc/sftest-elsewhere/host-keys.map b2: Unknown map identifier" in out
    ), out
    assert "host-key-b2" not in out, out


def test_a_configuration_haproxy_refuses_stops_the_run_before_the_keys_change(
    tmp_path: Path,
) -> None:
    """The role's own tasks from its configuration directory on (this machine as the gateway; the
    install, unit and start after them are not reached): a certificate and key HAProxy cannot
    load (a key that is not the certificate's) pass the role's checks (PEM markers) but not
    ``haproxy -c``, whose reason is shown; the pair in place and the key files keep what the
    running gateway has, and neither key reaches the output."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "client-keys.lst").write_text("old-fleet-key-0123456789\n")
    (etc / "host-keys.map").write_text("s-1 old-host-key-0123456789\n")
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    for c, k in ((cert, key), (other_cert, other_key)):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=gw", "-keyout", str(k), "-out", str(c)],
            check=True, capture_output=True,
        )  # fmt: skip
    in_place = cert.read_text() + "\n" + key.read_text() + "\n"
    (etc / "tls.pem").write_text(in_place)
    key.write_text(other_key.read_text())  # the certificate's key replaced by another one
    inventory = {
        "all": {
            "children": {
                "spark": {"hosts": {"s-1": {"ansible_host": "10.0.0.11",
                                            "vllm_api_key": "new-host-key-0123456789"}}},
                "gateway": {"hosts": {"gw": LOCAL}, "vars": {
                    "fleet_gateway_api_key": "new-fleet-key-0123456789",
                    "fleet_gateway_config_dir": str(etc),
                    "fleet_gateway_prometheus_dir": "",
                    "fleet_gateway_tls_cert_file": str(cert),
                    "fleet_gateway_tls_key_file": str(key),
                }},
            }
        }
    }  # fmt: skip
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(
        yaml.safe_dump([{"hosts": "gw", "gather_facts": False, "roles": ["fleet_gateway"]}])
    )
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
         "--start-at-task", "fleet_gateway : Create the configuration directory (root only)",
         str(tmp_path / "play.yml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f'fleet_gateway_tls_cert_file="{cert}" and fleet_gateway_tls_key_file="{key}"' in out
    assert "HAProxy cannot load them (" in out, out
    assert "inconsistencies between private key and certificate" in out, out
    assert f"{etc / 'tls.pem'} is left as it was" in out, out
    assert (etc / "tls.pem").read_text() == in_place
    assert (etc / "client-keys.lst").read_text() == "old-fleet-key-0123456789\n"
    assert (etc / "host-keys.map").read_text() == "s-1 old-host-key-0123456789\n"
    assert not (etc / "haproxy.cfg").exists()
    assert "new-fleet-key" not in out and "new-host-key" not in out, out
    for pem in (key, other_key):
        body = pem.read_text().splitlines()[1]
        assert body not in out, "a private key reached the output"


def test_the_drain_waits_as_long_as_the_gateway_says(gateway: Gateway) -> None:
    """fleet_gateway_drain_timeout_s set with the gateway's variables (10 s in this inventory;
    the role's default is 600) bounds the drain of a host with a request in flight."""

    def hold() -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{gateway.port}/v1/hold", data=b"{}", method="POST",
            headers={"Authorization": f"Bearer {FLEET_KEY}"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=180) as resp:
            resp.read()

    held = [threading.Thread(target=hold) for _ in gateway.hosts]  # roundrobin: one each
    for t in held:
        t.start()
    try:
        gateway.wait_for({})  # the stats page answers
        rc, out = gateway.role("b2", "drain")
        assert rc == 0, out
        assert "still had 1 request(s) in flight on b2" in out, out
        said = " ".join(out.split())
        assert "after 10 s (fleet_gateway_drain_timeout_s): restarting it anyway" in said, out
    finally:
        for h in gateway.hosts.values():
            h.release.set()
        for t in held:
            t.join(60)
    rc, out = gateway.role("b2", "undrain")
    assert rc == 0, out


def test_a_gateway_that_does_not_listen_is_named_at_once(gateway: Gateway) -> None:
    """The gateway's check (``sparkfleet health``) on a gateway whose port refuses connections
    (its HAProxy stopped): no waiting for fleet_gateway_up_timeout_s, the unit named."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    stopped = {**LOCAL, "fleet_gateway_port": closed, "fleet_gateway_instance": "sftest-stopped"}
    rc, out = gateway.role("gw2", "check", gw2=stopped)
    assert rc != 0, out
    said = " ".join(out.split())
    assert f"the gateway gw2 answers http://127.0.0.1:{closed}/health with no connection" in said
    assert "systemctl status sftest-stopped" in said, out
    assert "RETRYING" not in out, out


def test_the_roles_tls_write_takes_a_matching_pair_and_keeps_it_from_a_bad_one(
    tmp_path: Path,
) -> None:
    """The role's own TLS task (read from its tasks/main.yml, run as it is, for real): a
    certificate with its key is written 0600; then one with another key is refused by its
    ``haproxy -c`` check and the pair in place stays."""
    tasks = yaml.safe_load((ROOT / "roles/fleet_gateway/tasks/main.yml").read_text())
    block = next(t for t in tasks if str(t.get("name", "")).startswith("Write the TLS certificate"))
    pem = tmp_path / "tls.pem"
    pairs = {}
    for name in ("a", "b"):
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        pairs[name] = (cert, key)

    def write(cert: Path, key: Path) -> tuple[int, str]:
        play = [{"hosts": "gw", "gather_facts": False, "tasks": block["block"],
                 "vars": {"_fleet_gateway_tls_pem": str(pem),
                          "fleet_gateway_tls_cert_file": str(cert),
                          "fleet_gateway_tls_key_file": str(key)}}]  # fmt: skip
        return check_play(tmp_path, {"all": {"hosts": {"gw": LOCAL}}}, yaml.safe_dump(play),
                          check=False)  # fmt: skip

    rc, out = write(*pairs["a"])
    assert rc == 0, out
    written = pem.read_text()
    assert pairs["a"][0].read_text().strip() in written and "PRIVATE KEY" in written
    assert oct(pem.stat().st_mode & 0o777) == "0o600"
    rc, out = write(pairs["a"][0], pairs["b"][1])
    assert rc != 0 and "failed to validate" in out, out
    assert pem.read_text() == written
    assert pairs["b"][1].read_text().splitlines()[1] not in out
