"""The fleet's front door on this scenario's three hosts: fleet-1 is also the gateway (group
``gateway``, the distribution's HAProxy 3.0 beside its own proxy), converged by the scenario's
``site.yml`` run; each host has its own ``vllm_api_key`` (host_vars).

- one key at the edge: keyless or wrong-key requests get 401 on every route but /health, a
  host's key is not the gateway's and vice versa, streaming and plain chat work with the key,
  the keys are only in 0600 files (not in argv, not in the journal);
- affinity: requests carrying the same session header land on one host;
- a bounded load of streaming and plain chat requests (on the lab network only) runs through
  the gateway during ``rolling_restart.yml`` over the three hosts: no request fails, and the
  gateway's per-host counters, sampled during the roll, show each host out of rotation (MAINT)
  and taking no request while the others took its traffic;
- ``Fleet.endpoint()`` and ``Fleet.status()`` (the gateway's view);
- a reload HAProxy cannot apply (an address the host lacks) fails the role, keeps the old
  configuration serving and recorded, and is retried; a host's key rotated through site.yml under
  load, and another changed behind the gateway's back, fail no request; an unreachable second
  gateway stops no run;
- the generated Prometheus configuration passes ``promtool check config`` (Debian's ``promtool``)
  and the gateway's exporter answers; a host that leaves the gateway leaves no key file behind;
- bad gateway variables are refused before any change; TLS termination with a test certificate
  (the gateway's play alone, ``--tags gateway``): ``--check --diff`` shows the change and changes
  nothing, a second run changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from fleet_hosts import HOSTS, INVENTORY, PROJECT, address, on, playbook

from sparkfleet import Fleet
from tests.lab.chat_load import BackendStat, ChatLoad, chat_once, gateway_backends
from tests.model_profile import load as load_profile

SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
SPARKS = HOSTS
GATEWAY = "fleet-1"
_VARS = {h: yaml.safe_load((SCENARIO / "host_vars" / f"{h}.yml").read_text()) for h in SPARKS}
GATEWAY_KEY: str = _VARS[GATEWAY]["fleet_gateway_api_key"]
SESSION_HEADER: str = _VARS[GATEWAY]["fleet_gateway_affinity_header"]
HOST_KEYS: dict[str, str] = {h: _VARS[h]["vllm_api_key"] for h in SPARKS}
PORT, METRICS_PORT = 8080, 8405
CONF = "/etc/sparkfleet-gateway"
MODEL = load_profile().served_model_name


def gateway_play(*extra: str) -> subprocess.CompletedProcess[str]:
    """site.yml's gateway play alone: the gateway shares fleet-1 with a Spark, whose own plays
    the tag leaves out."""
    return playbook("site.yml", "--limit", "gateway", "--tags", "gateway", *extra)


def in_host(host: str, script: str) -> str:
    return on(host, "sh", "-c", script)


URL = f"http://{address(GATEWAY)}:{PORT}"
STATS = f"http://{address(GATEWAY)}:{METRICS_PORT}/stats"


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


class Sampler:
    """The gateway's per-host counters (its statistics page), read every 0.3 s in a thread from
    start() to stop()."""

    def __init__(self) -> None:
        self.samples: list[dict[str, BackendStat]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.samples.append(gateway_backends(STATS))
            time.sleep(0.3)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def test_one_key_at_the_edge() -> None:
    assert status_of(URL, "/health") == 200
    routes = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"),
              ("POST", "/tokenize"), ("POST", "/invocations"), ("GET", "/version"),
              ("GET", "/no-such-route")]  # fmt: skip
    for method, path in routes:
        assert status_of(URL, path, method=method) == 401, path
        assert status_of(URL, path, key="wrong-key-0123456789", method=method) == 401, path
    # each host's key opens only that host; the gateway's key opens no host directly
    one = SPARKS[1]
    direct = f"http://{address(one)}:8000"
    assert status_of(direct, "/v1/models", key=GATEWAY_KEY) == 401
    assert status_of(direct, "/v1/models", key=HOST_KEYS[one]) == 200
    assert status_of(URL, "/v1/models", key=HOST_KEYS[one]) == 401
    assert status_of(URL, "/v1/models", key=GATEWAY_KEY) == 200
    for stream in (True, False):
        outcome = chat_once(URL, GATEWAY_KEY, 0, stream=stream, model=MODEL)
        assert outcome.ok, outcome
    # keys only in 0600 files of root: not in any process's argv, not in the journal
    modes = in_host(
        GATEWAY, f"stat -c '%a %U %n' {CONF}/*.lst {CONF}/*.map {CONF}/prometheus/keys/*"
    )
    assert modes.count("600 root") == 2 + len(SPARKS), modes
    argv = in_host(GATEWAY, "ps -eo args")
    journal = in_host(GATEWAY, "journalctl --no-pager -o cat")
    config = in_host(GATEWAY, f"cat {CONF}/haproxy.cfg")
    for key in [GATEWAY_KEY, *HOST_KEYS.values()]:
        assert key not in argv and key not in journal and key not in config


def test_same_session_header_same_host() -> None:
    for session in ("conversation-a", "conversation-b"):
        before = gateway_backends(STATS)
        for i in range(8):
            outcome = chat_once(
                URL, GATEWAY_KEY, i, stream=i % 2 == 0, model=MODEL,
                headers={SESSION_HEADER: session},
            )  # fmt: skip
            assert outcome.ok, outcome
        after = gateway_backends(STATS)
        grew = {h: after[h].served - before[h].served for h in SPARKS}
        assert sorted(grew.values()) == [0, 0, 8], grew
    # without the header, leastconn spreads sequential requests over the hosts
    before = gateway_backends(STATS)
    for i in range(9):
        assert chat_once(URL, GATEWAY_KEY, i, stream=False, model=MODEL).ok
    after = gateway_backends(STATS)
    assert all(after[h].served > before[h].served for h in SPARKS), (before, after)


def test_rolling_restart_under_load_fails_no_request() -> None:
    # runs until the roll ends (bounded: at most 8000 requests, 25 minutes); every 10th request
    # streams a long answer (1200 tokens: 8 s at fleet-1's and fleet-2's 150 tokens/s, 24 s at
    # fleet-3's 50), so a host taken out of rotation still has requests in flight that the drain
    # must wait for
    load = ChatLoad(
        URL, GATEWAY_KEY, MODEL, total=8000, concurrency=6, deadline_s=1500, long_every=10,
        long_max_tokens=1200,
    )  # fmt: skip
    sampler = Sampler()
    samples = sampler.samples
    load.start()
    sampler.start()
    run = playbook("rolling_restart.yml")
    time.sleep(3)  # some traffic after the last host is back
    # hundreds of requests in all: on a slow machine the roll can end before 200 were sent
    enough_by = time.monotonic() + 900
    while load.sent < 200 and time.monotonic() < enough_by:
        time.sleep(1)
    load.stop()
    outcomes = load.join()
    sampler.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert load.sent < load.total, "the load ended before the roll did"
    failed = [o for o in outcomes if not o.ok]
    assert len(outcomes) >= 200, f"only {len(outcomes)} requests sent"
    assert failed == [], f"{len(failed)} of {len(outcomes)} failed, first: {failed[:3]}"
    assert {o.stream for o in outcomes} == {True, False}
    # the drain waited for requests in flight (it polled the gateway more than once) and never
    # gave up on them
    waited = rf"RETRYING: \[fleet-\d( -> {GATEWAY})?\]: .*wait for the host's requests in flight"
    drain = [line for line in run.stdout.splitlines() if "Gateway |" in line or "RETRY" in line]
    assert re.search(waited, run.stdout), "\n".join(drain)
    assert "restarting it anyway" not in run.stdout
    # each host was out of rotation (MAINT) at some point, took no request meanwhile, while the
    # others served its share
    for host in SPARKS:
        out = [i for i, s in enumerate(samples) if s[host].status.startswith("MAINT")]
        assert out, f"{host} never seen out of rotation: {[s[host].status for s in samples]}"
        first, last = samples[out[0]], samples[out[-1]]
        assert last[host].served == first[host].served, f"{host} got traffic while out"
        others = [h for h in SPARKS if h != host]
        assert sum(last[h].served - first[h].served for h in others) > 0, host
    final = gateway_backends(STATS)
    assert all(final[h].status == "UP" for h in SPARKS), final
    print(f"{len(outcomes)} requests during the roll, 0 failed; samples {len(samples)}")


def test_status_shows_the_gateways_view_and_the_api_its_endpoint() -> None:
    fleet = Fleet(INVENTORY, project_dir=PROJECT)
    assert fleet.endpoint() == f"{URL}/v1"
    result = fleet.status()
    assert result.ok, result.to_json()
    view = result.hosts[GATEWAY].gateway_status
    assert view is not None and view["error"] == ""
    backends = {b["host"]: b for b in view["backends"]}
    assert sorted(backends) == SPARKS
    assert all(b["state"] == "UP" and b["served"] > 0 for b in backends.values()), backends
    # the same counters as the gateway's statistics page
    stats = gateway_backends(STATS)
    assert all(stats[h].served >= backends[h]["served"] for h in SPARKS)


@pytest.mark.long
def test_a_reload_haproxy_cannot_apply_fails_keeps_serving_and_is_retried() -> None:
    """A metrics address the gateway host does not have passes ``haproxy -c`` but cannot be
    bound: the reload forks no worker, the role fails with the unit's journal, the old
    configuration goes on serving and is still the one recorded as loaded; each run retries."""
    loaded = "/run/sparkfleet-gateway/loaded.sha256"
    before = in_host(GATEWAY, f"cat {loaded}")
    assert in_host(GATEWAY, f"stat -c %a {loaded}").strip() == "600"
    bad = json.dumps({"fleet_gateway_metrics_bind_address": "192.0.2.77"})
    for _attempt in range(2):  # not recorded as loaded: the next run tries again
        run = gateway_play("-e", bad)
        assert run.returncode != 0, run.stdout[-3000:]
        assert "sparkfleet-gateway.service did not reload" in run.stdout, run.stdout[-3000:]
        assert 'fleet_gateway_metrics_bind_address="192.0.2.77"' in run.stdout, run.stdout[-3000:]
        assert "HAProxy started no new worker within 30 s" in run.stdout, run.stdout[-3000:]
        assert in_host(GATEWAY, f"cat {loaded}") == before
        assert status_of(URL, "/v1/models", key=GATEWAY_KEY) == 200
        assert status_of(f"http://{address(GATEWAY)}:{METRICS_PORT}", "/metrics") == 200
    # the inventory's configuration again: it is what runs, so it is written back, not reloaded
    run = gateway_play()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    reload = run.stdout.split("Reload the gateway with the configuration written", 1)[1]
    assert reload.split("TASK [", 1)[0].strip().splitlines()[-1].startswith("skipping:"), reload[
        :800
    ]
    assert in_host(GATEWAY, f"cat {loaded}") == before


def host_keys(**changed: str) -> str:
    """Extra vars giving each host its scenario key, but ``changed`` ones (host name: key)."""
    keys = {**HOST_KEYS, **changed}
    return json.dumps(
        {"vllm_api_key": "{{ " + json.dumps(keys) + ".get(inventory_hostname, '') }}"}
    )


@pytest.mark.long
def test_a_key_rotation_sends_no_client_a_401() -> None:
    """fleet-2's key changes through site.yml (its serving batch and the gateway play) under a
    steady load through the gateway: fleet-2 is drained first and back with the new key, no
    request fails; then a key changed behind the gateway's back (fleet-3's proxy) takes that
    host out of rotation (its health check asks with the key) with no request failing either."""
    one, new_key = SPARKS[1], "rotated-key-fleet-2-0123456789"
    load = ChatLoad(URL, GATEWAY_KEY, MODEL, total=3000, concurrency=4, deadline_s=900)
    sampler = Sampler()
    samples = sampler.samples
    load.start()
    sampler.start()
    limit = ("--limit", f"{one}:gateway", "--tags", "service,health,gateway")
    try:
        run = playbook("site.yml", *limit, "-e", host_keys(**{one: new_key}))
        time.sleep(3)
        direct = f"http://{address(one)}:8000"
        new_works = status_of(direct, "/v1/models", key=new_key)
        old_refused = status_of(direct, "/v1/models", key=HOST_KEYS[one])
    finally:
        back = playbook("site.yml", *limit, "-e", host_keys())
        load.stop()
        outcomes = load.join()
        sampler.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert back.returncode == 0, back.stdout[-6000:] + back.stderr[-2000:]
    assert (new_works, old_refused) == (200, 401)
    failed = [o for o in outcomes if not o.ok]
    assert len(outcomes) >= 50, f"only {len(outcomes)} requests during the rotation"
    assert failed == [], f"{len(failed)} of {len(outcomes)} failed, first: {failed[:3]}"
    assert any(s[one].status.startswith("MAINT") for s in samples), "never drained"
    assert status_of(f"http://{address(one)}:8000", "/v1/models", key=HOST_KEYS[one]) == 200
    # the gateway's files hold the key in use again, and only in its 0600 map
    assert in_host(GATEWAY, f"stat -c %a {CONF}/host-keys.map").strip() == "600"

    # behind the gateway's back: fleet-3's proxy takes another key
    three, keys = SPARKS[2], "/etc/vllm/vllm-proxy.keys"
    saved = in_host(three, f"cat {keys}")
    load = ChatLoad(URL, GATEWAY_KEY, MODEL, total=600, concurrency=2, deadline_s=300)
    load.start()
    try:
        in_host(three, f"echo other-key-0123456789abcdef > {keys} && systemctl reload vllm-proxy")
        deadline = time.monotonic() + 120
        while gateway_backends(STATS)[three].status.startswith("UP"):
            assert time.monotonic() < deadline, "a host with another key stayed in rotation"
            time.sleep(0.5)
        time.sleep(5)
    finally:
        in_host(three, f"printf %s {shlex.quote(saved)} > {keys} && systemctl reload vllm-proxy")
        load.stop()
        outcomes = load.join()
    assert [o for o in outcomes if not o.ok] == [], [o for o in outcomes if not o.ok][:3]
    deadline = time.monotonic() + 120
    while not gateway_backends(STATS)[three].status.startswith("UP"):
        assert time.monotonic() < deadline, "the host did not come back with its key"
        time.sleep(0.5)


@pytest.mark.long
def test_an_unreachable_gateway_stops_no_run(tmp_path: Path) -> None:
    """A second gateway that cannot be reached: site.yml's serving batch for a host warns and
    goes on; the host stays in rotation at the gateway that answers."""
    extra = tmp_path / "gone.yml"
    extra.write_text(
        yaml.safe_dump(
            {"gateway": {"hosts": {"gw-gone": {
                "ansible_connection": "ssh", "ansible_host": "192.0.2.1",
                "ansible_ssh_common_args": "-o ConnectTimeout=5",
            }}}}
        )
    )  # fmt: skip
    three = SPARKS[2]
    run = playbook("site.yml", "-i", str(extra), "--limit", three, "--tags", "service,health")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "WARNING: gateway gw-gone cannot be reached" in run.stdout, run.stdout[-6000:]
    assert gateway_backends(STATS)[three].status.startswith("UP")


def scrape_targets() -> dict[str, str]:
    config = yaml.safe_load(in_host(GATEWAY, f"cat {CONF}/prometheus/fleet.yml"))
    return {
        job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]
    }


def test_prometheus_configuration_passes_promtool() -> None:
    in_host(GATEWAY, "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq promtool >/dev/null")
    check = subprocess.run(
        ["docker", "exec", GATEWAY, "promtool", "check", "config", f"{CONF}/prometheus/fleet.yml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    targets = scrape_targets()
    assert targets["sparkfleet-gateway"] == f"{address(GATEWAY)}:{METRICS_PORT}"
    for host in SPARKS:
        assert targets[f"vllm-{host}"] == f"{address(host)}:8000"
    with urllib.request.urlopen(f"http://{address(GATEWAY)}:{METRICS_PORT}/metrics") as resp:
        exported = resp.read().decode()
    assert 'haproxy_server_status{proxy="fleet",server="fleet-2"' in exported


def test_bad_input_is_refused_before_any_change() -> None:
    before = in_host(GATEWAY, f"find {CONF} -type f -exec sha256sum {{}} +")
    # one run, two bad values the role checks: each is named with its value and what is allowed
    bad = {"fleet_gateway_api_key": "k3y-sh0rt", "fleet_gateway_timeout_s": 60}
    run = gateway_play("-e", json.dumps(bad))
    assert run.returncode != 0, run.stdout[-3000:]
    for named in ("fleet_gateway_api_key must be set (at least 16 characters; it has 9)",
                  "fleet_gateway_timeout_s=60: must be at least 300"):  # fmt: skip
        assert named in run.stdout, run.stdout[-3000:]
    assert "k3y-sh0rt" not in run.stdout + run.stderr
    # a value outside the argument specification's choices: Ansible refuses it before the role
    run = gateway_play("-e", json.dumps({"fleet_gateway_balance": "random"}))
    assert run.returncode != 0, run.stdout[-3000:]
    for named in ("value of fleet_gateway_balance must be one of:", "got: random"):
        assert named in run.stdout, run.stdout[-3000:]
    assert in_host(GATEWAY, f"find {CONF} -type f -exec sha256sum {{}} +") == before


def test_a_host_that_leaves_leaves_no_key_then_tls_termination() -> None:
    # fleet-3 out of the gateway: its scrape job and its key file go
    run = gateway_play("-e", json.dumps({"fleet_gateway_backends": SPARKS[:2]}))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert in_host(GATEWAY, f"ls {CONF}/prometheus/keys").split() == SPARKS[:2]
    assert "vllm-fleet-3" not in scrape_targets()
    # back with all three, and TLS with a test certificate
    work = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp"))
    cert, key = work / "gw.crt", work / "gw.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=sparkfleet-gateway", "-addext", f"subjectAltName=IP:{address(GATEWAY)}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = json.dumps(
        {"fleet_gateway_tls_cert_file": str(cert), "fleet_gateway_tls_key_file": str(key)}
    )
    # --check --diff first: the configuration's change shown, no key shown, nothing changed
    before = in_host(GATEWAY, f"find {CONF} -type f -exec sha256sum {{}} +")
    check = gateway_play("--check", "--diff", "-e", tls)
    assert check.returncode == 0, check.stdout[-6000:] + check.stderr[-2000:]
    assert re.search(r"\+\s*bind :8080 ssl crt /etc/sparkfleet-gateway/tls.pem", check.stdout), (
        check.stdout[-6000:]
    )
    assert "PRIVATE KEY" not in check.stdout and GATEWAY_KEY not in check.stdout
    assert in_host(GATEWAY, f"find {CONF} -type f -exec sha256sum {{}} +") == before
    run = gateway_play("-e", tls)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert in_host(GATEWAY, f"ls {CONF}/prometheus/keys").split() == SPARKS
    again = gateway_play("-e", tls)
    assert again.returncode == 0 and re.search(rf"{GATEWAY}\s*:.*changed=0 ", again.stdout), (
        again.stdout[-3000:]
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://{address(GATEWAY)}:{PORT}"
    for stream in (True, False):
        outcome = chat_once(url, GATEWAY_KEY, 0, stream=stream, model=MODEL, context=context)
        assert outcome.ok, outcome
    req = urllib.request.Request(url + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, context=context, timeout=60)
    assert refused.value.code == 401
    assert in_host(GATEWAY, f"stat -c %a {CONF}/tls.pem").strip() == "600"
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
