"""The vllm_health and vllm_service modules, run in-process against the vLLM stand-in.

The failure-pattern hints are checked against what the stand-in really prints when it fails
(and against Docker's own messages, as Docker 20.10 prints them); the wait and API modules
against stand-in servers started here on 127.0.0.1. The systemd side (unit death, journal) is
covered by the molecule scenario ``service``.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.sparkfleet.spark.plugins.module_utils import vllm_health_probe as probe
from ansible_collections.sparkfleet.spark.plugins.modules import vllm_health_api as api_module
from ansible_collections.sparkfleet.spark.plugins.modules import (
    vllm_health_diagnose as diagnose_module,
)
from ansible_collections.sparkfleet.spark.plugins.modules import vllm_health_wait as wait_module
from ansible_collections.sparkfleet.spark.plugins.modules import vllm_model_files as files_module

from tests import model_profile
from tests.ports import free_port
from tests.unit.plays import run_module

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "standins" / "vllm_standin" / "server.py"
PROFILE = model_profile.load()
CARD_ARGS = PROFILE.extra_args
SERVED = PROFILE.served_model_name
SETTINGS = {
    "gpu_memory_util": 0.95,
    "max_model_len": 65536,
    "port": 8000,
    "image": "avarok/dgx-vllm-nvfp4-kernel:v23",
    "model_dir": "/opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4",
    "model_mount": "/models/MiniMax-M2.5-REAP-172B-NVFP4",
    "start_timeout_s": 900,
    "port_owner": "",
}


def make_model_dir(root: Path, shards: int = 2, drop: int | None = None) -> Path:
    """config.json, an index naming ``shards`` shards, and the shards (but ``drop``)."""
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["MiniMaxM2ForCausalLM"]}))
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    index = {"weight_map": {f"layer.{i}.weight": name for i, name in enumerate(names)}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    for i, name in enumerate(names, start=1):
        if i != drop:
            (model / name).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return model


Launch = Callable[..., tuple[subprocess.Popen[str], int]]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start stand-in servers (killed at the end); returns (process, port)."""
    started: list[subprocess.Popen[str]] = []

    def start(
        model: Path, *args: str, port: int | None = None, load_s: float = 0.2, **env: str
    ) -> tuple[subprocess.Popen[str], int]:
        port = port or free_port()
        full_env = {
            **os.environ,
            "VLLM_STANDIN_LOAD_SECONDS": str(load_s),
            "VLLM_STANDIN_DECODE_TPS": "5000",
            "VLLM_STANDIN_PREFILL_TPS": "100000",
            "VLLM_STANDIN_STATE_DIR": str(tmp_path),
            "VLLM_STANDIN_CONTROL_FILE": str(tmp_path / "no-control.json"),
            "VLLM_CONFIG_ROOT": str(tmp_path / "vllm-config"),  # usage stats stay here
            **env,
        }
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "serve", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--max-model-len", "65536", *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        started.append(proc)
        return proc, port

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe.http(f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the stand-in did not become ready")


def failure_output(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    return out.splitlines()


def patterns(lines: list[str], **settings: Any) -> list[str]:
    return [h["pattern"] for h in probe.find_hints(lines, {**SETTINGS, **settings})]


# --------------------------------------------------------------------------- hints


def test_out_of_memory_hint_names_the_setting_and_its_value(tmp_path: Path, launch: Launch) -> None:
    # torch's CUDA OOM during the load (the stand-in's oom_at_start fault)
    proc, _ = launch(make_model_dir(tmp_path), VLLM_STANDIN_FAULT="oom_at_start")
    lines = failure_output(proc)
    hints = probe.find_hints(lines, SETTINGS)
    assert hints[0]["pattern"] == "out_of_memory"
    assert "lower vllm_gpu_memory_util (now 0.95;" in hints[0]["hint"]
    assert [h["pattern"] for h in hints][-1] == "engine_died"  # the consequence comes last


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        (("--gpu-memory-utilization", "0.95"), "none"),  # Free memory on device ... is less than
        ((), "startup_memory:free"),
        ((), "startup_memory:cache_blocks"),  # No available memory for the cache blocks
        ((), "startup_memory:kv_cache"),  # ... KV cache is needed, which is larger than ...
    ],
)
def test_out_of_memory_hint_for_vllm_016s_own_memory_errors(
    tmp_path: Path, launch: Launch, args: tuple[str, ...], fault: str
) -> None:
    proc, _ = launch(make_model_dir(tmp_path), *args, VLLM_STANDIN_FAULT=fault)
    assert patterns(failure_output(proc))[0] == "out_of_memory"


def test_missing_config_and_missing_shard_give_the_model_files_hint(
    tmp_path: Path, launch: Launch
) -> None:
    (tmp_path / "empty").mkdir()
    empty, _ = launch(tmp_path / "empty")
    assert patterns(failure_output(empty)) == ["model_files"]
    partial, _ = launch(make_model_dir(tmp_path, shards=3, drop=2))
    lines = failure_output(partial)
    assert patterns(lines) == ["model_files"]
    hint = probe.find_hints(lines, SETTINGS)[0]["hint"]
    assert f"vllm_model_dir={SETTINGS['model_dir']}" in hint


def test_port_in_use_hint(tmp_path: Path, launch: Launch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        proc, _ = launch(make_model_dir(tmp_path), port=holder.getsockname()[1])
        lines = failure_output(proc)
    assert patterns(lines, port_owner=" (held by users:((x)))") == ["port_in_use"]
    hint = probe.find_hints(lines, {**SETTINGS, "port_owner": " (held by users:((x)))"})[0]
    assert "vllm_port=8000 is already taken on the host (held by users:((x)))" in hint["hint"]


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("docker: Error response from daemon: No such image: avarok/dgx-vllm-nvfp4-kernel:v99.",
         "image_not_found"),
        ("docker: Error response from daemon: driver failed programming external connectivity on "
         "endpoint minimax (0f3c): Bind for 0.0.0.0:8000 failed: port is already allocated.",
         "port_in_use"),
        ("docker: Error response from daemon: could not select device driver \"\" with "
         "capabilities: [[gpu]].", "gpu_runtime"),
        ("vllm.service: Main process exited, code=exited, status=137/n/a", "out_of_memory"),
        ("vllm.service: Failed with result 'start-limit-hit'.", "start_limit"),
        ("vllm.service: start-post operation timed out. Terminating.", "start_timeout"),
    ],
)  # fmt: skip
def test_docker_and_systemd_messages_are_recognised(line: str, pattern: str) -> None:
    assert patterns(["some earlier line", line]) == [pattern]


def test_latest_cause_comes_first_and_unknown_logs_give_no_hint() -> None:
    lines = ["torch.OutOfMemoryError: CUDA out of memory.", "No such image: x:y"]
    assert patterns(lines) == ["image_not_found", "out_of_memory"]
    assert patterns(["INFO all is well"]) == []


def test_hints_never_show_a_setting_they_have_no_value_for() -> None:
    lines = [
        "No such image: x:y",
        "port is already allocated",
        "RuntimeError: Cannot find any model weights with `/models/x`",
        "torch.OutOfMemoryError: CUDA out of memory.",
        "vllm.service: start-post operation timed out. Terminating.",
        "ray.exceptions.ActorDiedError: The actor died unexpectedly",
    ]
    hints = probe.find_hints(lines, {})  # a worker's diagnosis passes no memory settings
    assert len(hints) == 6
    for hint in hints:
        assert not re.search(r"[?{}\[\]]|\(\)|now ", hint["hint"]), hint
    oom = next(h["hint"] for h in hints if h["pattern"] == "out_of_memory")
    assert (
        "lower vllm_gpu_memory_util (0.93 is the card's safe maximum, 0.95 fails) or "
        "vllm_max_model_len, and consider" in oom
    ), oom
    lost = next(h["hint"] for h in hints if h["pattern"] == "ray_worker_lost")
    assert "the worker left the cluster. Look at it (`journalctl -u vllm`); " in lost, lost
    filled = probe.find_hints(lines[3:4], {"gpu_memory_util": 0.93, "max_model_len": 0})[0]
    assert "(now 0.93; 0.93 is" in filled["hint"] and "vllm_max_model_len (now 0)" in filled["hint"]


def journal_json(*entries: tuple[float, str, str, str]) -> str:
    """journalctl --output json lines of (epoch s, field, invocation, message): the unit's own
    output carries _SYSTEMD_INVOCATION_ID, systemd's messages about it INVOCATION_ID."""
    return "\n".join(
        json.dumps({"__REALTIME_TIMESTAMP": str(int(at * 1e6)), field: invocation,
                    "MESSAGE": message})
        for at, field, invocation, message in entries
    )  # fmt: skip


OLD, NOW = "0f" * 16, "a1" * 16
STALE_OOM = (1000.0, "INVOCATION_ID", OLD, "vllm.service: Main process exited, code=exited, "
             "status=137/n/a")  # fmt: skip


def test_only_the_current_invocation_is_scanned() -> None:
    out = journal_json(
        STALE_OOM,
        (1001.0, "_SYSTEMD_INVOCATION_ID", OLD, "Killed"),
        (5000.0, "_SYSTEMD_INVOCATION_ID", NOW, "INFO Starting to load model"),
        (5001.0, "INVOCATION_ID", NOW, "vllm.service: start-post operation timed out."),
    )
    calls: list[list[str]] = []

    def run(argv: list[str]) -> tuple[int, str, str]:
        calls.append(argv)
        return 0, out, ""

    lines = probe.invocation_lines(run, "vllm", 400, NOW)
    assert lines == ["INFO Starting to load model", "vllm.service: start-post operation timed out."]
    assert calls[0][-2:] == ["--output", "json"] and "vllm.service" in calls[0]
    # what was logged since the caller began to watch counts too, whichever run logged it
    assert probe.invocation_lines(run, "vllm", 400, NOW, since=1000.5)[0] == "Killed"
    assert probe.invocation_lines(run, "vllm", 400, OLD)[0].endswith("status=137/n/a")
    # a journal without invocations (systemd before 233): every line, as before
    bare = "\n".join(json.dumps({"MESSAGE": m}) for m in ("a", "b"))
    assert probe.invocation_lines(lambda argv: (0, bare, ""), "vllm", 400, NOW) == ["a", "b"]
    assert probe.invocation_lines(run, "", 400, NOW) == []


def diagnose(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], journal: str,
    **args: Any,
) -> dict[str, Any]:  # fmt: skip
    """vllm_health_diagnose in-process: the unit failed (invocation NOW), its container gone."""

    unit = (
        "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=timeout\n"
        f"NRestarts=0\nMainPID=0\nExecMainStatus=0\nJob=\nInvocationID={NOW}\n"
    )

    def run(argv: list[str], *_args: Any, **_kwargs: Any) -> tuple[int, str, str]:
        if argv[0] == "systemctl":
            return 0, unit, ""
        if argv[0] == "journalctl":
            return 0, journal if argv[-1] == "json" else "", ""
        if argv[1:3] == ["inspect", "--format"]:
            return 1, "", "Error: No such object: minimax"
        raise AssertionError(argv)

    monkeypatch.setattr(
        diagnose_module.AnsibleModule, "run_command", lambda self, argv, **kw: run(argv)
    )
    args = {"service": "vllm", "container": "minimax", "settings": {"max_model_len": 65536}, **args}
    return run_module(diagnose_module, args, capsys)[1]


def test_a_stale_out_of_memory_exit_gives_no_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = journal_json(
        STALE_OOM,
        (5000.0, "_SYSTEMD_INVOCATION_ID", NOW, "INFO Starting to load model"),
        (5900.0, "INVOCATION_ID", NOW, "vllm.service: start-post operation timed out."),
    )
    result = diagnose(monkeypatch, capsys, journal)
    assert [h["pattern"] for h in result["hints"]] == ["start_timeout"], result["hints"]
    assert "?" not in result["report"]

    # the same exit in the run that failed now: the hint, with only the values it was given
    current = journal.replace(OLD, NOW)
    result = diagnose(monkeypatch, capsys, current)
    assert "out_of_memory" in [h["pattern"] for h in result["hints"]]
    oom = next(h["hint"] for h in result["hints"] if h["pattern"] == "out_of_memory")
    assert "vllm_gpu_memory_util (0.93 is" in oom and "vllm_max_model_len (now 65536)" in oom
    assert "?" not in result["report"]


# --------------------------------------------------------------------------- unit death


def unit(**fields: Any) -> dict[str, Any]:
    base = {
        "name": "vllm.service", "load": "loaded", "active": "activating", "sub": "start-post",
        "result": "success", "restarts": 0, "main_pid": 42, "exit_status": 0,
        "job_pending": True,
    }  # fmt: skip
    return {**base, **fields}


@pytest.mark.parametrize(
    ("fields", "dead"),
    [
        ({}, False),  # loading
        ({"active": "active", "sub": "running", "job_pending": False}, False),
        ({"active": "deactivating", "sub": "stop-sigterm"}, False),  # a restart job runs
        ({"sub": "auto-restart", "main_pid": 0, "job_pending": False, "result": "exit-code"}, True),
        ({"restarts": 1}, True),  # restarted since the wait began, whatever it does now
        ({"main_pid": 0, "job_pending": False}, True),
        ({"active": "failed", "sub": "failed", "job_pending": False}, True),
        ({"active": "inactive", "sub": "dead", "job_pending": False}, True),
        ({"load": "not-found", "active": "inactive"}, True),
    ],
)
def test_unit_death(fields: dict[str, Any], dead: bool) -> None:
    assert (probe.unit_death(unit(**fields), 0) is not None) is dead
    assert probe.unit_death(None, 0) is None


def test_only_the_units_current_server_counts_as_ready() -> None:
    assert wait_module.current_instance(None)
    assert wait_module.current_instance(unit())  # loading; its own server answers
    assert wait_module.current_instance(unit(active="active", sub="running", job_pending=False))
    assert not wait_module.current_instance(unit(active="active", sub="running"))  # restart queued
    assert not wait_module.current_instance(unit(active="deactivating", sub="stop"))


# --------------------------------------------------------------------------- model files


def test_model_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").mkdir()
    complete = make_model_dir(tmp_path / "a")
    rc, result = run_module(files_module, {"path": str(complete)}, capsys)
    assert (rc, result["ok"], result["shards"], result["problems"]) == (0, True, 2, [])
    (tmp_path / "b").mkdir()
    partial = make_model_dir(tmp_path / "b", shards=4, drop=3)
    (partial / "model-00001-of-00004.safetensors").write_bytes(b"")
    _, result = run_module(files_module, {"path": str(partial)}, capsys)
    assert not result["ok"]
    assert result["missing"] == [
        "model-00001-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
    ]
    assert result["problems"] == [
        "2 of 4 shards named by the index are missing or empty "
        "(model-00001-of-00004.safetensors, model-00003-of-00004.safetensors)"
    ]
    _, result = run_module(files_module, {"path": str(tmp_path / "nowhere")}, capsys)
    assert result["problems"] == ["the directory does not exist"]


# --------------------------------------------------------------------------- wait


def test_wait_reports_progress_then_readiness(
    tmp_path: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    args: dict[str, Any] = {"url": f"http://127.0.0.1:{port}", "budget_s": 60, "slice_s": 0.3,
                            "interval_s": 0.2}  # fmt: skip
    # the first slice passes before the server is even started: nothing can answer during it
    rc, result = run_module(wait_module, args, capsys)
    assert (rc, result["state"]) == (0, "waiting")
    assert result["elapsed_s"] >= args["slice_s"]  # back after the slice, long before the budget
    loading = re.match(r"loading: (\d+) s of 60 s", result["progress"])
    assert loading and int(loading[1]) <= result["elapsed_s"] < int(loading[1]) + 1.05, result
    load_s = 1.5
    launch(make_model_dir(tmp_path), port=port, load_s=load_s)
    states = []
    while result["state"] == "waiting":
        args.update(since=result["since"])
        rc, result = run_module(wait_module, args, capsys)
        states.append(result["state"])
    assert states[-1] == "ready"
    # ready after the first slice and the load, at the least (ready_after_s is rounded to 0.1 s)
    assert result["ready_after_s"] >= args["slice_s"] + load_s
    assert result["ready_at"] - result["since"] >= result["ready_after_s"] - 0.05


def test_wait_gives_up_at_the_budget(capsys: pytest.CaptureFixture[str]) -> None:
    args = {"url": f"http://127.0.0.1:{free_port()}", "budget_s": 0.6, "interval_s": 0.2}
    rc, result = run_module(wait_module, args, capsys)
    assert (rc, result["state"]) == (1, "timeout")
    assert "did not answer within the 0 s budget (vllm_health_timeout_s)" in result["msg"]


def test_wait_fails_at_once_on_a_dead_engine(
    tmp_path: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "control.json").write_text(json.dumps({"fault": "unhealthy"}))
    _, port = launch(
        make_model_dir(tmp_path), VLLM_STANDIN_CONTROL_FILE=str(tmp_path / "control.json")
    )
    args = {"url": f"http://127.0.0.1:{port}", "budget_s": 600, "interval_s": 0.2}
    rc, result = run_module(wait_module, args, capsys)
    assert (rc, result["state"]) == (1, "dead")
    assert "answers 503 (the engine is dead)" in result["msg"]


# --------------------------------------------------------------------------- API checks


@pytest.fixture
def card_server(tmp_path: Path, launch: Launch) -> int:
    """The card's configuration with the served name and an API key."""
    _, port = launch(make_model_dir(tmp_path), *CARD_ARGS, "--served-model-name", SERVED,
                     VLLM_API_KEY="k3y")  # fmt: skip
    wait_ready(port)
    return port


def api(port: int, check: str, **args: Any) -> dict[str, Any]:
    return {"url": f"http://127.0.0.1:{port}", "check": check, "model": SERVED,
            "sampling": PROFILE.sampling, "api_key": "k3y", **args}  # fmt: skip


def test_api_checks_pass_on_the_cards_configuration(
    card_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, models = run_module(api_module, api(card_server, "models", max_model_len=65536), capsys)
    assert (rc, models["served"], models["unauthenticated_status"]) == (0, [SERVED], 401)
    rc, chat = run_module(api_module, api(card_server, "chat"), capsys)
    assert rc == 0 and chat["answer"] and chat["completion_tokens"] > 0
    rc, tool = run_module(api_module, api(card_server, "tool_call"), capsys)
    assert (rc, tool["function"], tool["arguments"]) == (0, "get_weather", {"location": "Paris"})


def test_api_checks_name_what_is_wrong(
    card_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, result = run_module(api_module, api(card_server, "models", model="other"), capsys)
    assert rc == 1
    assert f"/v1/models serves ['{SERVED}'], not other (vllm_health_model" in result["msg"]
    rc, result = run_module(api_module, api(card_server, "models", max_model_len=4096), capsys)
    assert "reports max_model_len 65536" in result["msg"]
    rc, result = run_module(api_module, api(card_server, "chat", api_key="wrong"), capsys)
    assert rc == 1 and "answered 401" in result["msg"] and "vllm_health_api_key" in result["msg"]


def test_api_checks_catch_a_server_without_the_cards_flags(
    tmp_path: Path, launch: Launch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, port = launch(make_model_dir(tmp_path), "--served-model-name", SERVED)
    wait_ready(port)
    rc, result = run_module(api_module, api(port, "models"), capsys)
    assert rc == 1 and "the key is not enforced" in result["msg"]
    rc, result = run_module(api_module, api(port, "chat", api_key=""), capsys)
    assert rc == 1 and "is not <think>...</think> followed by an answer" in result["msg"]
    rc, result = run_module(api_module, api(port, "tool_call", api_key=""), capsys)
    assert rc == 1 and "--enable-auto-tool-choice" in result["msg"]


def test_streamed_checks_pass_on_the_cards_configuration(
    card_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, chat = run_module(api_module, api(card_server, "chat", stream=True), capsys)
    assert rc == 0 and chat["answer"] and chat["chunks"] > 1 and chat["stream"] is True
    assert chat["completion_tokens"] > 0  # from the usage chunk (stream_options.include_usage)
    assert 0 < chat["first_chunk_ms"] <= chat["latency_ms"]
    rc, tool = run_module(api_module, api(card_server, "tool_call", stream=True), capsys)
    assert (rc, tool["function"], tool["arguments"]) == (0, "get_weather", {"location": "Paris"})
    assert tool["attempts"] == 1


def test_the_auth_check_finds_the_routes_vllms_own_key_leaves_open(
    card_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """vLLM's key covers /v1/* only (vllm#58144): on vLLM itself the check fails and names them."""
    rc, result = run_module(api_module, api(card_server, "auth"), capsys)
    assert rc == 1
    assert result["refused"] == {"GET /v1/models": 401, "POST /v1/chat/completions": 401,
                                 "POST /invocations": 200, "POST /tokenize": 200}  # fmt: skip
    assert "POST /invocations answered 200; POST /tokenize answered 200" in result["msg"]


class Scripted:
    """An HTTP server on 127.0.0.1 answering POSTs with the given (status, type, body) in turn."""

    def __init__(self, answers: list[tuple[int, str, bytes]]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                outer.requests.append(json.loads(self.rfile.read(length)))
                status, kind, body = outer.answers.pop(0)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(content: str, finish: str = "stop") -> tuple[int, str, bytes]:
    message = {"role": "assistant", "content": content, "tool_calls": []}
    body = {"object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"completion_tokens": 7, "prompt_tokens": 3}}  # fmt: skip
    return 200, "application/json", json.dumps(body).encode()


def stream(*events: str) -> tuple[int, str, bytes]:
    return 200, "text/event-stream; charset=utf-8", "".join(events).encode()


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    event = {"object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return f"data: {json.dumps(event)}\n\n"


def test_an_answer_cut_off_while_reasoning_is_asked_again_then_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cut = completion("<think>Let me think about this for a long", "length")
    server = Scripted([cut, completion("<think>ok</think>Hello!")])
    try:
        rc, result = run_module(api_module, api(server.port, "chat"), capsys)
        assert (rc, result["attempts"], result["answer"]) == (0, 2, "Hello!")
        assert server.requests[0]["max_tokens"] == 2048  # room for the reasoning
        server.answers = [cut, cut]
        rc, result = run_module(api_module, api(server.port, "chat", attempts=2), capsys)
        assert rc == 1 and "chat failed 2 time(s): attempt 1:" in result["msg"]
        assert "finish_reason length, raise vllm_health_max_tokens" in result["msg"]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("events", "error"),
    [
        ((chunk({"content": "<think>a</think>b"}, "stop"),), "ended without data: [DONE]"),
        (
            (chunk({"content": "<think>a</think>b"}, "stop"), "data: [DONE]\n\n", chunk({})),
            "data after data: [DONE]",
        ),
        (("event: message\n", chunk({"content": "x"}), "data: [DONE]\n\n"), "not an SSE data line"),
        (("data: {not json}\n\n", "data: [DONE]\n\n"), "an event that is not JSON"),
        (
            ('data: {"object": "chat.completion", "choices": []}\n\n', "data: [DONE]\n\n"),
            "not chat.completion.chunk",
        ),
        (
            (chunk({"tool_calls": [{"function": {"name": "get_weather"}}]}), "data: [DONE]\n\n"),
            "a tool-call delta without an index",
        ),
    ],
)
def test_a_stream_that_is_not_vllms_fails(
    events: tuple[str, ...], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = Scripted([stream(*events)])
    try:
        rc, result = run_module(api_module, api(server.port, "chat", stream=True), capsys)
        assert rc == 1 and error in result["msg"], result["msg"]
    finally:
        server.close()


def test_a_streamed_tool_call_is_joined_from_its_deltas(capsys: pytest.CaptureFixture[str]) -> None:
    header = {"index": 0, "id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    events = [chunk({"role": "assistant", "content": ""}), chunk({"content": "<think>w</think>"}),
              chunk({"tool_calls": [header]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"location": "P'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'aris"'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}, "tool_calls"),
              "data: [DONE]\n\n"]  # fmt: skip
    words = [chunk({"content": "<think>w</think>I cannot check the weather."}, "stop"),
             "data: [DONE]\n\n"]  # fmt: skip
    server = Scripted([stream(*words), stream(*events)])
    try:
        rc, result = run_module(api_module, api(server.port, "tool_call", stream=True), capsys)
        assert (rc, result["arguments"], result["attempts"]) == (0, {"location": "Paris"}, 2)
        assert server.requests[0]["stream"] is True
        assert server.requests[0]["stream_options"] == {"include_usage": True}
    finally:
        server.close()


def test_a_streamed_tool_call_sent_whole_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """A build that buffers the call and sends its arguments in one event (vllm#28963) fails at
    once: vLLM streams them as they are generated, and a retry would only buffer again."""
    whole = {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}  # fmt: skip
    events = [chunk({"content": "<think>w</think>"}), chunk({"tool_calls": [whole]}, "tool_calls"),
              "data: [DONE]\n\n"]  # fmt: skip
    server = Scripted([stream(*events)])
    try:
        rc, result = run_module(api_module, api(server.port, "tool_call", stream=True), capsys)
        assert rc == 1 and "came in 1 event(s)" in result["msg"], result["msg"]
        assert "buffers streamed tool calls" in result["msg"] and len(server.requests) == 1
    finally:
        server.close()
