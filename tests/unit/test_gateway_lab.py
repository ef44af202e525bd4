"""The fleet's front door on the lab: three simulated Sparks behind a gateway host.

Hosts of our own (``gw-sim-1..4``, label ``sparklab.gw``): 1-3 form group ``spark``, each with its
own ``vllm_api_key``; 4 is group ``gateway`` (a Debian 13 host, HAProxy 3.0 from the
distribution). ``site.yml`` converges all four once; then:

- one key at the edge: keyless or wrong-key requests get 401 on every route but /health, a
  host's key is not the gateway's and vice versa, streaming and plain chat work with the key,
  the keys are only in 0600 files (not in argv, not in the journal);
- affinity: requests carrying the same session header land on one host;
- a bounded load of streaming and plain chat requests (on the lab network only) runs through
  the gateway during ``rolling_restart.yml`` over the three hosts: no request fails, and the
  gateway's per-host counters, sampled during the roll, show each host out of rotation (MAINT)
  while the others took its traffic;
- the generated Prometheus configuration passes ``promtool check config`` (Debian's ``promtool``)
  and the gateway's exporter answers;
- TLS termination with a test certificate (the gateway play alone, run again).
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sparkfleet import Fleet
from tests.lab import access, hosts
from tests.lab.chat_load import BackendStat, ChatLoad, chat_once, gateway_backends
from tests.lab.config import REPO_ROOT, LabConfig, venv_tool
from tests.model_profile import load as load_profile

pytestmark = pytest.mark.lab

CFG = LabConfig(host_prefix="gw-sim", host_label="sparklab.gw")
SPARKS = ["gw-sim-1", "gw-sim-2", "gw-sim-3"]
GATEWAY = "gw-sim-4"
GATEWAY_KEY = "gateway-key-0123456789abcdef"
HOST_KEYS = {name: f"host-key-{name}-fedcba9876543210" for name in SPARKS}
PORT, METRICS_PORT = 8080, 8405
SESSION_HEADER = "X-Session-Id"
MODEL = load_profile().served_model_name
# A liveness limit for loaded machines, not a bound on how fast things are.
PLAYBOOK_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Lab:
    inventory: Path
    gateway_address: str
    addresses: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://{self.gateway_address}:{PORT}"

    @property
    def stats(self) -> str:
        return f"http://{self.gateway_address}:{METRICS_PORT}/stats"


def write_inventory(path: Path, addresses: dict[str, str], **gateway_vars: object) -> None:
    group_vars = yaml.safe_load((REPO_ROOT / "inventory/lab/group_vars/spark.yml").read_text())
    ssh = {n: access.ansible_host_vars(CFG, a, sudo_password=False) for n, a in addresses.items()}
    inventory = {
        "spark": {
            "vars": group_vars,
            "hosts": {n: {**ssh[n], "vllm_api_key": HOST_KEYS[n]} for n in SPARKS},
        },
        "gateway": {
            "vars": {
                "fleet_gateway_api_key": GATEWAY_KEY,
                "fleet_gateway_affinity_header": SESSION_HEADER,
                **gateway_vars,
            },
            "hosts": {GATEWAY: ssh[GATEWAY]},
        },
    }
    path.write_text(yaml.safe_dump(inventory))


def playbook(inventory: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("ansible-playbook"), "-i", str(inventory), f"playbooks/{name}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=PLAYBOOK_TIMEOUT_S,
    )


def in_host(host: str, script: str) -> str:
    return subprocess.run(
        ["docker", "exec", host, "sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout


def status_of(url: str, path: str, key: str | None = None, method: str = "GET") -> int:
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(url + path, data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The four hosts, converged by site.yml."""
    with hosts.own_hosts(CFG, count=4) as names:
        addresses = {n: hosts.host_address(CFG, n) for n in names}
        inventory = tmp_path_factory.mktemp("gateway") / "hosts.yml"
        write_inventory(inventory, addresses)
        run = playbook(inventory, "site.yml")
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        yield Lab(inventory, addresses[GATEWAY], addresses)


def test_one_key_at_the_edge(lab: Lab) -> None:
    assert status_of(lab.url, "/health") == 200
    routes = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"),
              ("POST", "/tokenize"), ("POST", "/invocations"), ("GET", "/version"),
              ("GET", "/no-such-route")]  # fmt: skip
    for method, path in routes:
        assert status_of(lab.url, path, method=method) == 401, path
        assert status_of(lab.url, path, key="wrong-key-0123456789", method=method) == 401, path
    # each host's key opens only that host; the gateway's key opens no host directly
    one = SPARKS[0]
    direct = f"http://{lab.addresses[one]}:8000"
    assert status_of(direct, "/v1/models", key=GATEWAY_KEY) == 401
    assert status_of(direct, "/v1/models", key=HOST_KEYS[one]) == 200
    assert status_of(lab.url, "/v1/models", key=HOST_KEYS[one]) == 401
    assert status_of(lab.url, "/v1/models", key=GATEWAY_KEY) == 200
    for stream in (True, False):
        outcome = chat_once(lab.url, GATEWAY_KEY, 0, stream=stream, model=MODEL)
        assert outcome.ok, outcome
    # keys only in 0600 files of root: not in any process's argv, not in the journal
    conf = "/etc/sparkfleet-gateway"
    modes = in_host(
        GATEWAY, f"stat -c '%a %U %n' {conf}/*.lst {conf}/*.map {conf}/prometheus/keys/*"
    )
    assert modes.count("600 root") == 2 + len(SPARKS), modes
    argv = in_host(GATEWAY, "ps -eo args")
    journal = in_host(GATEWAY, "journalctl --no-pager -o cat")
    config = in_host(GATEWAY, "cat /etc/sparkfleet-gateway/haproxy.cfg")
    for key in [GATEWAY_KEY, *HOST_KEYS.values()]:
        assert key not in argv and key not in journal and key not in config


def test_same_session_header_same_host(lab: Lab) -> None:
    for session in ("conversation-a", "conversation-b"):
        before = gateway_backends(lab.stats)
        for i in range(8):
            outcome = chat_once(
                lab.url, GATEWAY_KEY, i, stream=i % 2 == 0, model=MODEL,
                headers={SESSION_HEADER: session},
            )  # fmt: skip
            assert outcome.ok, outcome
        after = gateway_backends(lab.stats)
        grew = {h: after[h].served - before[h].served for h in SPARKS}
        assert sorted(grew.values()) == [0, 0, 8], grew
    # without the header, leastconn spreads sequential requests over the hosts
    before = gateway_backends(lab.stats)
    for i in range(9):
        assert chat_once(lab.url, GATEWAY_KEY, i, stream=False, model=MODEL).ok
    after = gateway_backends(lab.stats)
    assert all(after[h].served > before[h].served for h in SPARKS), (before, after)


def test_rolling_restart_under_load_fails_no_request(lab: Lab) -> None:
    # runs until the roll ends (bounded: at most 8000 requests, 25 minutes); every 10th request
    # streams a long answer (400 tokens, ~14 s at the stand-in's 28 tokens/s), so a host taken
    # out of rotation still has requests in flight that the drain must wait for
    load = ChatLoad(
        lab.url, GATEWAY_KEY, MODEL, total=8000, concurrency=6, deadline_s=1500, long_every=10
    )
    samples: list[dict[str, BackendStat]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(gateway_backends(lab.stats))
            time.sleep(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    load.start()
    sampler.start()
    run = playbook(lab.inventory, "rolling_restart.yml")
    time.sleep(3)  # some traffic after the last host is back
    load.stop()
    outcomes = load.join()
    done.set()
    sampler.join()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert load.sent < load.total, "the load ended before the roll did"
    failed = [o for o in outcomes if not o.ok]
    assert len(outcomes) >= 200, f"only {len(outcomes)} requests sent during the roll"
    assert failed == [], f"{len(failed)} of {len(outcomes)} failed, first: {failed[:3]}"
    assert {o.stream for o in outcomes} == {True, False}
    # the drain waited for requests in flight (it polled the gateway more than once) and never
    # gave up on them
    waited = r"RETRYING: \[gw-sim-\d -> gw-sim-4\]: .*wait for the host's requests in flight"
    drain = [line for line in run.stdout.splitlines() if "Gateway |" in line or "RETRY" in line]
    assert re.search(waited, run.stdout), "\n".join(drain)
    assert "restarting it anyway" not in run.stdout
    # each host was out of rotation (MAINT) at some point while the others served its share
    for host in SPARKS:
        out = [i for i, s in enumerate(samples) if s[host].status.startswith("MAINT")]
        assert out, f"{host} never seen out of rotation: {[s[host].status for s in samples]}"
        first, last = samples[out[0]], samples[out[-1]]
        assert last[host].served == first[host].served, f"{host} got traffic while out"
        others = [h for h in SPARKS if h != host]
        assert sum(last[h].served - first[h].served for h in others) > 0, host
    final = gateway_backends(lab.stats)
    assert all(final[h].status == "UP" for h in SPARKS), final
    print(f"{len(outcomes)} requests during the roll, 0 failed; samples {len(samples)}")


def test_status_shows_the_gateways_view_and_the_api_its_endpoint(lab: Lab) -> None:
    fleet = Fleet(str(lab.inventory))
    assert fleet.endpoint() == f"{lab.url}/v1"
    result = fleet.status()
    assert result.ok, result.to_json()
    view = result.hosts[GATEWAY].gateway_status
    assert view is not None and view["error"] == ""
    backends = {b["host"]: b for b in view["backends"]}
    assert sorted(backends) == SPARKS
    assert all(b["state"] == "UP" and b["served"] > 0 for b in backends.values()), backends
    # the same counters as the gateway's statistics page
    stats = gateway_backends(lab.stats)
    assert all(stats[h].served >= backends[h]["served"] for h in SPARKS)


def test_prometheus_configuration_passes_promtool(lab: Lab) -> None:
    in_host(GATEWAY, "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq promtool >/dev/null")
    check = subprocess.run(
        ["docker", "exec", GATEWAY, "promtool", "check", "config",
         "/etc/sparkfleet-gateway/prometheus/fleet.yml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(in_host(GATEWAY, "cat /etc/sparkfleet-gateway/prometheus/fleet.yml"))
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]
    }
    assert targets["sparkfleet-gateway"] == f"{lab.gateway_address}:{METRICS_PORT}"
    for host in SPARKS:
        assert targets[f"vllm-{host}"] == f"{lab.addresses[host]}:8000"
    with urllib.request.urlopen(f"http://{lab.gateway_address}:{METRICS_PORT}/metrics") as resp:
        exported = resp.read().decode()
    assert 'haproxy_server_status{proxy="fleet",server="gw-sim-1"' in exported


def test_tls_termination_with_a_test_certificate(lab: Lab, tmp_path: Path) -> None:
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=sparkfleet-gateway", "-addext", f"subjectAltName=IP:{lab.gateway_address}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    write_inventory(
        lab.inventory,
        lab.addresses,
        fleet_gateway_tls_cert_file=str(cert),
        fleet_gateway_tls_key_file=str(key),
    )
    run = playbook(lab.inventory, "site.yml", "--limit", "gateway")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    again = playbook(lab.inventory, "site.yml", "--limit", "gateway")
    assert again.returncode == 0 and re.search(rf"{GATEWAY}\s*:.*changed=0 ", again.stdout), (
        again.stdout[-3000:]
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://{lab.gateway_address}:{PORT}"
    for stream in (True, False):
        outcome = chat_once(url, GATEWAY_KEY, 0, stream=stream, model=MODEL, context=context)
        assert outcome.ok, outcome
    req = urllib.request.Request(url + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, context=context, timeout=60)
    assert refused.value.code == 401
    assert in_host(GATEWAY, "stat -c %a /etc/sparkfleet-gateway/tls.pem").strip() == "600"
    models = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(
                url + "/v1/models", headers={"Authorization": f"Bearer {GATEWAY_KEY}"}
            ),
            context=context,
            timeout=60,
        ).read()
    )
    assert [m["id"] for m in models["data"]] == [MODEL]


def test_bad_input_is_refused_before_any_change(lab: Lab) -> None:
    before = in_host(GATEWAY, "find /etc/sparkfleet-gateway -type f -exec sha256sum {} +")
    refused = {
        "fleet_gateway_api_key=k3y-sh0rt": "fleet_gateway_api_key must be set (at least 16",
        "fleet_gateway_timeout_s=60": "fleet_gateway_timeout_s=60: must be at least 300",
        "fleet_gateway_balance=random": "fleet_gateway_balance",
    }
    for extra, named in refused.items():
        run = playbook(lab.inventory, "site.yml", "--limit", "gateway", "-e", extra)
        assert run.returncode != 0 and named in run.stdout, run.stdout[-3000:]
        assert "k3y-sh0rt" not in run.stdout
    assert in_host(GATEWAY, "find /etc/sparkfleet-gateway -type f -exec sha256sum {} +") == before
