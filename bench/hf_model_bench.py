"""Benchmarks of the hf_model role's fetch against the stand-in Hub (tests/standins/hf_hub_standin).

Prints figures measured in one run and their ratios:

  throughput  the role's module (as Ansible runs it on a host) vs `hf download` of the same
              multi-GB synthetic repo from the same stand-in Hub; ratio = role MB/s / hf MB/s;
              LFS files served by the Hub itself (--no-cdn)
  cdn         the same through the CDN redirect (302 to a second origin, as huggingface.co
              does); plain HTTP both times: the stand-in serves no Xet CAS, so neither client
              can take the Xet path
  noop        a re-run on a complete directory, 10 GB model vs 10 MB model (same 27 files);
              ratio = time(10 GB) / time(10 MB)
  resume      a fetch SIGKILLed at ~50 % then re-run: Hub bytes for the pair / model size,
              for the module and for `hf download`
  peer        three simulated hosts (spark-sim containers on the lab network) converged with the
              role: Hub bytes / model size with hf_model_source=peer and with hub

Run from the repository root (as root, with the lab prepared for `peer`):

  .venv/bin/python -m bench.hf_model_bench [--only throughput,cdn,noop,resume,peer]
      [--size-gb 4] [--noop-size-gb 10] [--peer-size-gb 1] [--workdir /var/tmp/sparkfleet-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab import access
from tests.lab import hosts as lab_hosts
from tests.lab.config import LabConfig
from tests.standins.hf_hub_standin.runner import StandinHub, build_fixture

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "plugins" / "modules" / "hf_model_fetch.py"
HF_CLI = Path(sys.executable).parent / "hf"
REPO = "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
SHARDS = 20
GATEWAY = "172.29.78.1"
LAB = LabConfig()
PEER_HUB_PORT = 39390
PEER_HOSTS = ["hf-bench-1", "hf-bench-2", "hf-bench-3"]
MB = 1e6


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HF_")}


def module_cmd(args: dict[str, Any], workdir: Path) -> list[str]:
    path = workdir / f"args-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    return [sys.executable, str(MODULE), str(path)]


def run_module(args: dict[str, Any], workdir: Path) -> dict[str, Any]:
    out = subprocess.run(
        module_cmd(args, workdir), capture_output=True, text=True, env=clean_env(), check=False
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result.get("failed"):
        raise SystemExit(f"module failed: {result.get('msg')}")
    return result


def fetch_args(hub: StandinHub, target: Path, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "repo_id": REPO,
        "local_dir": str(target),
        "endpoint": hub.url,
        "disk_margin_gb": 0.1,
    }
    args.update(extra)
    return args


def hf_download_cmd(target: Path) -> list[str]:
    return [str(HF_CLI), "download", REPO, "--local-dir", str(target)]


def hf_env(hub: StandinHub, workdir: Path) -> dict[str, str]:
    env = clean_env()
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(workdir / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    return env


def timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def fixture(workdir: Path, size_gb: float, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    shard = max(1, int(size_gb * 1e9 / SHARDS))
    directory = workdir / f"repo-{size_gb:g}gb"
    log(f"fixture: {SHARDS} shards of {shard / MB:.1f} MB in {directory}")
    return directory, build_fixture(directory, shard, seed=seed)


def check_space(workdir: Path, need_gb: float) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free / 1e9
    if free < need_gb + 2:
        raise SystemExit(f"{workdir}: {free:.1f} GB free, this benchmark needs ~{need_gb:.0f} GB")


# -- throughput -----------------------------------------------------------------------------------


def bench_throughput(
    workdir: Path, size_gb: float, rounds: int, cdn: bool = False
) -> dict[str, float]:
    check_space(workdir, 3 * size_gb)
    repo, meta = fixture(workdir, size_gb)
    total = int(meta["total_size"])
    hub = StandinHub({REPO: repo}, workdir, cdn=cdn).start()
    times: dict[str, list[float]] = {"role": [], "hf": []}
    try:
        for rnd in range(rounds):
            for name in ("hf", "role"):
                target = workdir / f"tp-{name}"
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(workdir / "hf-home", ignore_errors=True)
                hub.clean()
                if name == "hf":
                    elapsed = timed(
                        lambda t=target: subprocess.run(
                            hf_download_cmd(t),
                            env=hf_env(hub, workdir),
                            check=True,
                            stdout=subprocess.DEVNULL,
                        )
                    )
                else:
                    elapsed = timed(lambda t=target: run_module(fetch_args(hub, t), workdir))
                served = hub.stats()["bytes_served"]
                if served != total:
                    raise SystemExit(f"{name}: served {served} bytes, expected {total}")
                times[name].append(elapsed)
                via = " (CDN)" if cdn else ""
                log(f"throughput{via} round {rnd + 1} {name}: {elapsed:.2f} s")
                shutil.rmtree(target, ignore_errors=True)
    finally:
        hub.stop()
    role, hf = statistics.median(times["role"]), statistics.median(times["hf"])
    return {
        "model_gb": total / 1e9,
        "role_s": role,
        "hf_s": hf,
        "role_mb_s": total / role / MB,
        "hf_mb_s": total / hf / MB,
        "ratio": hf / role,
    }


# -- no-op ----------------------------------------------------------------------------------------


def complete_dir(repo: Path, meta: dict[str, Any], args: dict[str, Any], workdir: Path) -> None:
    """A complete model dir of hard links to the fixture, plus the manifest (0 bytes fetched)."""
    target = Path(args["local_dir"])
    shutil.rmtree(target, ignore_errors=True)
    for entry in meta["files"]:
        dest = target / entry["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(repo / "files" / entry["path"], dest)
    result = run_module(args, workdir)
    if result["bytes_fetched"] != 0:
        raise SystemExit("the hard-linked directory was not complete")


def bench_noop(workdir: Path, big_gb: float, small_gb: float, runs: int) -> dict[str, float]:
    check_space(workdir, big_gb)
    big_repo, big_meta = fixture(workdir, big_gb)
    small_repo, small_meta = fixture(workdir, small_gb)
    hub = StandinHub({REPO: big_repo, "standin/small": small_repo}, workdir).start()
    out: dict[str, float] = {"big_gb": big_meta["total_size"] / 1e9}
    out["small_gb"] = small_meta["total_size"] / 1e9
    cases = {
        "big": (big_repo, big_meta, fetch_args(hub, workdir / "noop-big")),
        "small": (small_repo, small_meta, fetch_args(hub, workdir / "noop-small")),
    }
    cases["small"][2]["repo_id"] = "standin/small"
    try:
        for repo, meta, args in cases.values():
            complete_dir(repo, meta, args, workdir)
        os.sync()  # no writeback of the fixtures during the measurement
        for verify, count in (("size", runs), ("sha256", 1)):
            samples: dict[str, list[float]] = {"big": [], "small": []}
            for _ in range(count):
                for label, (_, _, args) in cases.items():  # interleaved: same conditions
                    hub.clean()
                    run_args = dict(args, verify=verify)
                    samples[label].append(timed(lambda a=run_args: run_module(a, workdir)))
                    if hub.stats()["bytes_served"] != 0:
                        raise SystemExit("a no-op run downloaded bytes")
            for label, values in samples.items():
                out[f"{label}_{verify}_s"] = statistics.median(values)
                log(f"no-op {label} verify={verify}: {out[f'{label}_{verify}_s']:.3f} s")
    finally:
        hub.stop()
        for _, _, args in cases.values():
            shutil.rmtree(args["local_dir"], ignore_errors=True)
    out["ratio"] = out["big_size_s"] / out["small_size_s"]
    return out


# -- resume ---------------------------------------------------------------------------------------


def kill_at_half(cmd: list[str], env: dict[str, str], hub: StandinHub, total: int) -> int:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while hub.stats()["bytes_served"] < total // 2:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} ended before half of the model was served")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the server's threads notice the dead connections
    served: int = hub.stats()["bytes_served"]
    return served


def bench_resume(workdir: Path, size_gb: float) -> dict[str, float]:
    check_space(workdir, 2 * size_gb)
    repo, meta = fixture(workdir, size_gb)
    total = int(meta["total_size"])
    hub = StandinHub({REPO: repo}, workdir).start()
    out: dict[str, float] = {"model_gb": total / 1e9}
    try:
        for name in ("role", "hf"):
            target = workdir / f"resume-{name}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(workdir / "hf-home", ignore_errors=True)
            hub.clean()
            if name == "role":
                cmd, env = module_cmd(fetch_args(hub, target), workdir), clean_env()
            else:
                cmd, env = hf_download_cmd(target), hf_env(hub, workdir)
            at_kill = kill_at_half(cmd, env, hub, total)
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            served = hub.stats()["bytes_served"]
            out[f"{name}_killed_at"] = at_kill / total
            out[f"{name}_ratio"] = served / total
            log(f"resume {name}: killed at {at_kill / total:.1%}, served {served / total:.3f}x")
            shutil.rmtree(target, ignore_errors=True)
    finally:
        hub.stop()
    return out


# -- peer (three spark-sim containers) ------------------------------------------------------------


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(
        ["docker", *args], check=check, capture_output=True, text=True
    ).stdout.strip()


def start_hosts() -> None:
    for name in PEER_HOSTS:
        docker("rm", "-f", name, check=False)
        docker(
            *("run", "-d", "--name", name, "--hostname", name, "--privileged"),
            *("--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"),
            *("--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp"),
            *("--network", "sparklab", "--stop-signal", "SIGRTMIN+3"),
            "sparklab/spark-sim:latest",
            *("/lib/systemd/systemd", "systemd.mask=docker.service"),
            *("systemd.mask=docker.socket", "systemd.mask=containerd.service"),
        )
    for name in PEER_HOSTS:
        docker("exec", name, "systemctl", "is-system-running", "--wait", check=False)


def stop_hosts() -> None:
    for name in PEER_HOSTS:
        docker("rm", "-f", name, check=False)


def converge(inventory: Path, source: str, hub: StandinHub, workdir: Path) -> float:
    extra = {
        "hf_model_source": source,
        "hf_model_endpoint": hub.url,
        "hf_model_disk_margin_gb": 0.1,
        "hf_model_progress_interval_s": 5,
        "hf_model_progress_dir": str(workdir / "progress"),
        "hf_model_pip_extra_args": (
            f"--no-index --trusted-host {GATEWAY} --find-links http://{GATEWAY}:38081/wheels/"
        ),
    }
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
    )
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory)]
    cmd += ["-e", json.dumps(extra), str(ROOT / "bench" / "hf_model_converge.yml")]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"ansible-playbook failed:\n{proc.stdout[-4000:]}")
    return time.monotonic() - started


def bench_peer(workdir: Path, size_gb: float) -> dict[str, float]:
    check_space(workdir, 4 * size_gb)
    repo, meta = fixture(workdir, size_gb)
    total = int(meta["total_size"])
    hub = StandinHub({REPO: repo}, workdir, host=GATEWAY, port=PEER_HUB_PORT).start()
    inventory = workdir / "inventory.yml"
    out: dict[str, float] = {"model_gb": total / 1e9}
    try:
        for source in ("hub", "peer"):
            start_hosts()
            # reached as a fleet is: SSH as the lab's passwordless-sudo user
            hosts = {
                name: access.ansible_host_vars(LAB, lab_hosts.host_address(LAB, name),
                                               sudo_password=False)
                for name in PEER_HOSTS
            }  # fmt: skip
            inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
            hub.clean()
            out[f"{source}_s"] = converge(inventory, source, hub, workdir)
            out[f"{source}_ratio"] = hub.stats()["bytes_served"] / total
            log(f"peer bench {source}: {out[f'{source}_ratio']:.3f}x in {out[f'{source}_s']:.0f} s")
    finally:
        stop_hosts()
        hub.stop()
    return out


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="throughput,cdn,noop,resume,peer")
    parser.add_argument("--size-gb", type=float, default=4.0, help="repo for throughput/resume")
    parser.add_argument("--noop-size-gb", type=float, default=10.0)
    parser.add_argument("--noop-small-gb", type=float, default=0.01)
    parser.add_argument("--noop-runs", type=int, default=15, help="no-op runs per model (median)")
    parser.add_argument("--peer-size-gb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds (median)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/sparkfleet-bench"))
    parser.add_argument("--keep-fixtures", action="store_true")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    results: dict[str, dict[str, float]] = {}
    try:
        if "throughput" in wanted:
            results["throughput"] = bench_throughput(scratch, args.size_gb, args.rounds)
        if "cdn" in wanted:
            results["cdn"] = bench_throughput(scratch, args.size_gb, args.rounds, cdn=True)
        if "noop" in wanted:
            results["noop"] = bench_noop(
                scratch, args.noop_size_gb, args.noop_small_gb, args.noop_runs
            )
        if "resume" in wanted:
            results["resume"] = bench_resume(scratch, args.size_gb)
        if "peer" in wanted:
            results["peer"] = bench_peer(scratch, args.peer_size_gb)
    finally:
        if not args.keep_fixtures:
            shutil.rmtree(scratch, ignore_errors=True)
    report(results)
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def report(results: dict[str, dict[str, float]]) -> None:
    if "throughput" in results:
        r = results["throughput"]
        print(
            f"fetch throughput, {r['model_gb']:.2f} GB repo: role {r['role_mb_s']:.0f} MB/s "
            f"({r['role_s']:.1f} s, sha256-verified), hf download {r['hf_mb_s']:.0f} MB/s "
            f"({r['hf_s']:.1f} s): ratio {r['ratio']:.2f}x (goal >= 1.0)"
        )
    if "cdn" in results:
        r = results["cdn"]
        print(
            f"fetch throughput through the CDN redirect, {r['model_gb']:.2f} GB repo: role "
            f"{r['role_mb_s']:.0f} MB/s ({r['role_s']:.1f} s), hf download {r['hf_mb_s']:.0f} MB/s "
            f"({r['hf_s']:.1f} s): ratio {r['ratio']:.2f}x (goal >= 1.0)"
        )
    if "noop" in results:
        r = results["noop"]
        print(
            f"no-op re-run, {r['big_gb']:.2f} GB vs {r['small_gb'] * 1000:.0f} MB model: "
            f"{r['big_size_s']:.3f} s vs {r['small_size_s']:.3f} s: ratio {r['ratio']:.2f}x "
            f"(goal <= 1.1); with verify=sha256 {r['big_sha256_s']:.1f} s vs "
            f"{r['small_sha256_s']:.3f} s"
        )
    if "resume" in results:
        r = results["resume"]
        print(
            f"killed at ~50 % and re-run, {r['model_gb']:.2f} GB repo: Hub bytes / model size "
            f"{r['role_ratio']:.3f} (killed at {r['role_killed_at']:.0%}; goal <= 1.05); "
            f"hf download {r['hf_ratio']:.3f} (killed at {r['hf_killed_at']:.0%})"
        )
    if "peer" in results:
        r = results["peer"]
        print(
            f"3 hosts, {r['model_gb']:.2f} GB repo: Hub bytes / model size {r['peer_ratio']:.3f} "
            f"with hf_model_source=peer ({r['peer_s']:.0f} s, goal 1.0), "
            f"{r['hub_ratio']:.3f} with hub ({r['hub_s']:.0f} s, 3.0 expected)"
        )


if __name__ == "__main__":
    sys.exit(main())
