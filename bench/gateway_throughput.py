"""What the gateway costs: throughput through it vs straight to one host, and latency it adds.

On hosts of its own (``gwb-sim-1``, a simulated Spark, and ``gwb-sim-2``, the gateway; label
``sparklab.gwbench``), converged by ``site.yml`` with the gateway in front of the one host, it
sends the same bounded load of plain chat requests (``--requests`` at ``--concurrency``, on the
lab network only) alternately straight to the host (with its key) and through the gateway (with
the gateway's key), ``--rounds`` times each, and prints from this one run: the throughput ratio
(gateway / direct; goal at least 0.95) and the p50 and p99 latency added (gateway - direct).
The host's stand-in answers fast (decode 5000 tokens/s, 4 tokens per answer) so that the HTTP
path, not the model, is what is measured. Needs the lab (``python -m tests.lab prepare``)::

    .venv/bin/python bench/gateway_throughput.py [--requests 400] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.lab import access, hosts  # noqa: E402
from tests.lab.chat_load import ChatLoad, Outcome, percentile  # noqa: E402
from tests.lab.config import LabConfig, venv_tool  # noqa: E402
from tests.model_profile import load as load_profile  # noqa: E402

CFG = LabConfig(host_prefix="gwb-sim", host_label="sparklab.gwbench")
HOST, GATEWAY = "gwb-sim-1", "gwb-sim-2"
HOST_KEY = "bench-host-key-0123456789"
GATEWAY_KEY = "bench-gateway-key-0123456789"
MODEL_DIR = "/opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4"
FAST = {"decode_tps": 5000, "prefill_tps": 1_000_000, "load_seconds": 1}
GOAL = 0.95


def converge(directory: Path) -> dict[str, str]:
    """Both hosts converged by site.yml; their addresses."""
    addresses = {n: hosts.host_address(CFG, n) for n in (HOST, GATEWAY)}
    subprocess.run(
        ["docker", "exec", HOST, "sh", "-c",
         f"mkdir -p {MODEL_DIR} && echo '{json.dumps(FAST)}' > {MODEL_DIR}/.vllm-standin.json"],
        check=True,
    )  # fmt: skip
    group_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/spark.yml").read_text())
    ssh = {n: access.ansible_host_vars(CFG, a, sudo_password=False) for n, a in addresses.items()}
    inventory = {
        "spark": {"vars": group_vars, "hosts": {HOST: {**ssh[HOST], "vllm_api_key": HOST_KEY}}},
        "gateway": {
            "vars": {"fleet_gateway_api_key": GATEWAY_KEY},
            "hosts": {GATEWAY: ssh[GATEWAY]},
        },
    }
    path = directory / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    run = subprocess.run(
        [venv_tool("ansible-playbook"), "-i", str(path), "playbooks/site.yml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"site.yml failed:\n{run.stdout[-4000:]}{run.stderr[-2000:]}")
    return addresses


def measure(
    url: str, key: str, model: str, requests: int, concurrency: int
) -> tuple[float, list[float]]:
    """Requests per second and latencies (s) of one plain-chat load; raises on any failure."""
    load = ChatLoad(url, key, model, total=requests, concurrency=concurrency, max_tokens=4)
    start = time.monotonic()
    outcomes: list[Outcome] = load.run()
    elapsed = time.monotonic() - start
    failed = [o for o in outcomes if not o.ok]
    if failed or len(outcomes) != requests:
        raise SystemExit(f"{url}: {len(failed)} failed of {len(outcomes)}: {failed[:2]}")
    return len(outcomes) / elapsed, [o.latency_s for o in outcomes if not o.stream]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = load_profile().served_model_name
    with hosts.own_hosts(CFG, count=2), tempfile.TemporaryDirectory() as tmp:
        addresses = converge(Path(tmp))
        direct_url = f"http://{addresses[HOST]}:8000"
        gateway_url = f"http://{addresses[GATEWAY]}:8080"
        rates: dict[str, list[float]] = {"direct": [], "gateway": []}
        latencies: dict[str, list[float]] = {"direct": [], "gateway": []}
        measure(direct_url, HOST_KEY, model, 40, args.concurrency)  # warm-up
        measure(gateway_url, GATEWAY_KEY, model, 40, args.concurrency)
        for _ in range(args.rounds):
            for name, url, key in (("direct", direct_url, HOST_KEY),
                                   ("gateway", gateway_url, GATEWAY_KEY)):  # fmt: skip
                rate, lat = measure(url, key, model, args.requests, args.concurrency)
                rates[name].append(rate)
                latencies[name].extend(lat)
    direct, gateway = statistics.median(rates["direct"]), statistics.median(rates["gateway"])
    ratio = gateway / direct
    p50 = percentile(latencies["gateway"], 0.5) - percentile(latencies["direct"], 0.5)
    p99 = percentile(latencies["gateway"], 0.99) - percentile(latencies["direct"], 0.99)
    print(
        f"requests: {args.requests} x {args.rounds} rounds each way, concurrency "
        f"{args.concurrency} (every other one streamed; latency of the plain ones)"
    )
    print(f"throughput direct {direct:.1f} req/s, through the gateway {gateway:.1f} req/s")
    verdict = "ok" if ratio >= GOAL else "BELOW GOAL"
    print(f"ratio gateway/direct {ratio:.3f} (goal >= {GOAL}) {verdict}")
    print(f"latency added by the gateway: p50 {p50 * 1000:+.1f} ms, p99 {p99 * 1000:+.1f} ms")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
