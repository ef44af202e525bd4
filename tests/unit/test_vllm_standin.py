"""The vLLM stand-in (tests/standins/vllm_standin) behaves like vLLM 0.16's server from outside.

Each server runs through entrypoint.sh, as in the image, on 127.0.0.1 and a free port, against a
small model directory (config.json, safetensors index, two shards).
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import tokenizers

from tests import model_profile
from tests.ports import free_port
from tests.standins.vllm_standin import server

pytestmark = pytest.mark.nolab

STANDIN = Path(__file__).resolve().parents[1] / "standins" / "vllm_standin"
ENTRYPOINT = STANDIN / "entrypoint.sh"
SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
PROFILE = model_profile.load()
CARD_ARGS = " ".join(PROFILE.extra_args)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "alerts": {"type": "boolean"},
                "note": {"type": "string"},
            },
            "required": ["location", "unit", "days", "alerts"],
        },
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
THINK_ANSWER = re.compile(r"^<think>.*</think>\s*\S", re.DOTALL)


def make_model_dir(root: Path) -> Path:
    """config.json, model.safetensors.index.json and two tiny (valid) safetensors shards."""
    model = root / "MiniMax-M2.5-REAP-172B-NVFP4"
    model.mkdir(parents=True)
    config = {
        "architectures": ["MiniMaxM2ForCausalLM"],
        "max_position_embeddings": 196608,
        "num_hidden_layers": 62,
        "num_key_value_heads": 8,
        "head_dim": 128,
    }
    (model / "config.json").write_text(json.dumps(config))
    weight_map = {f"model.layers.{i}.weight": shard for i, shard in enumerate(SHARDS)}
    index = {"metadata": {"total_size": 16}, "weight_map": weight_map}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    for i, shard in enumerate(SHARDS):
        header = json.dumps(
            {f"model.layers.{i}.weight": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}
        ).encode()
        (model / shard).write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    return model


@dataclass
class Standin:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float = 10.0) -> requests.Response:
        """The first answer of /health, once the server listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"stand-in exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return requests.get(f"{self.base}/health", timeout=1)
            except requests.ConnectionError:
                time.sleep(0.05)
        pytest.fail(f"stand-in not listening after {timeout} s:\n{self.output()}")

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.wait_listening(timeout).status_code == 200, self.output()

    def wait_output(self, text: str, timeout: float = 10.0) -> None:
        """Until the server has printed ``text``."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                pytest.fail(f"stand-in exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"stand-in did not print {text!r} in {timeout} s:\n{self.output()}")
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"stand-in still running after {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


Launcher = Callable[..., Standin]


def launch(workdir: Path, model: Path | None, extra_args: str = "", **env: str) -> Standin:
    """Start entrypoint.sh with the card's settings (a fast load) plus ``env`` overrides."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"standin-{port}.log"
    full_env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "GPU_MEMORY_UTIL": str(PROFILE.gpu_memory_util),
        "MAX_MODEL_LEN": str(PROFILE.max_model_len),
        "VLLM_EXTRA_ARGS": extra_args,
        "VLLM_STANDIN_SERVER": str(STANDIN / "server.py"),
        "VLLM_STANDIN_LOAD_SECONDS": "0.2",
        "VLLM_STANDIN_PREFILL_TPS": "100000",
        "VLLM_STANDIN_DECODE_TPS": "2000",
        "VLLM_STANDIN_STATE_DIR": str(workdir),
        "VLLM_STANDIN_CONTROL_FILE": str(workdir / "no-control.json"),
        "VLLM_CONFIG_ROOT": str(workdir / "vllm-config"),  # usage stats stay here
        **({"MODEL": str(model)} if model else {}),
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["/bin/sh", str(ENTRYPOINT)], env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    return Standin(proc, port, log)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started: list[Standin] = []

    def start(model: Path | None, extra_args: str = "", **env: str) -> Standin:
        standin = launch(tmp_path, model, extra_args, **env)
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()


@pytest.fixture(scope="module")
def card_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """Configured as the model card's launch: reasoning and tool parsers, no served name."""
    root = tmp_path_factory.mktemp("card")
    standin = launch(root, make_model_dir(root), CARD_ARGS)
    standin.wait_ready()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def key_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """An API key and a served name given with quotes in VLLM_EXTRA_ARGS; no tool flags."""
    root = tmp_path_factory.mktemp("key")
    extra = '--api-key sekret --served-model-name "minimax"'
    standin = launch(root, make_model_dir(root), extra)
    standin.wait_ready()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def tokenizer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """A tokenizer.json (whitespace words), measurable rates, key from VLLM_API_KEY."""
    root = tmp_path_factory.mktemp("tok")
    model = make_model_dir(root)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(model / "tokenizer.json"))
    standin = launch(
        root,
        model,
        CARD_ARGS,
        VLLM_API_KEY="envkey",
        VLLM_STANDIN_PREFILL_TPS="1000",
        VLLM_STANDIN_DECODE_TPS="50",
    )
    standin.wait_ready()
    yield standin
    standin.stop()


def chat(server: Standin, body: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(
        f"{server.base}/v1/chat/completions", json=body, headers=headers, timeout=30
    )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def stream_events(response: requests.Response) -> Iterator[tuple[float, str]]:
    """(arrival time, data) of each SSE event."""
    for line in response.iter_lines():
        if line:
            assert line.startswith(b"data: "), line
            yield time.monotonic(), line[len(b"data: ") :].decode()


def metric(server: Standin, name: str) -> float:
    text = requests.get(f"{server.base}/metrics", timeout=5).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    assert values, f"{name} not in /metrics"
    return sum(values)


# --------------------------------------------------------------------------- start-up


def test_refuses_connections_while_loading_then_serves(tmp_path: Path, launcher: Launcher) -> None:
    model = make_model_dir(tmp_path)
    # Knock while the server says it loads (its port is bound by then) and before it says it
    # starts listening; the log read after the knock tells whether the knock came in time. A
    # machine too busy to knock within the load gets a longer load, not a failure.
    for load_seconds in ("1.5", "10", "60"):
        standin = launcher(model, CARD_ARGS, VLLM_STANDIN_LOAD_SECONDS=load_seconds)
        standin.wait_output("Starting to load model")
        try:
            socket.create_connection(("127.0.0.1", standin.port), timeout=1).close()
            refused = False
        except ConnectionRefusedError:
            refused = True
        if "Starting vLLM API server" not in standin.output():
            break  # the knock came while the model was loading
        standin.stop()
    else:
        pytest.fail("the load was over before the test could connect, even a 60 s one")
    assert refused, f"a connection was accepted while the model loaded:\n{standin.output()}"
    standin.wait_ready()
    health = requests.get(f"{standin.base}/health", timeout=5)
    assert health.content == b""
    assert health.headers["server"] == "uvicorn"
    assert requests.post(f"{standin.base}/ping", timeout=5).status_code == 200
    output = standin.output()
    for line in ("Loading weights took", "Available KV cache memory", "Starting vLLM API server"):
        assert line in output
    assert output.index("Loading weights took") < output.index("Application startup complete.")
    assert "--port " + str(standin.port) in output  # the entrypoint echoes the command


def test_entrypoint_requires_model(launcher: Launcher) -> None:
    standin = launcher(None)
    assert standin.wait_exit() == 1
    assert "MODEL environment variable must be set" in standin.output()


def test_unknown_flag_is_an_argparse_error(tmp_path: Path, launcher: Launcher) -> None:
    standin = launcher(make_model_dir(tmp_path), "--no-such-flag 1")
    assert standin.wait_exit() == 2
    assert "unrecognized arguments: --no-such-flag" in standin.output()


def test_missing_shard_fails_start(tmp_path: Path, launcher: Launcher) -> None:
    model = make_model_dir(tmp_path)
    (model / SHARDS[1]).unlink()
    standin = launcher(model)
    assert standin.wait_exit() == 1
    output = standin.output()
    assert "FileNotFoundError" in output
    assert str(model / SHARDS[1]) in output


def test_missing_config_fails_start(tmp_path: Path, launcher: Launcher) -> None:
    model = make_model_dir(tmp_path)
    (model / "config.json").unlink()
    standin = launcher(model)
    assert standin.wait_exit() == 1
    assert f"Invalid repository ID or local directory specified: '{model}'" in standin.output()


def test_oom_at_start_fault(tmp_path: Path, launcher: Launcher) -> None:
    standin = launcher(make_model_dir(tmp_path), VLLM_STANDIN_FAULT="oom_at_start")
    assert standin.wait_exit() == 1
    output = standin.output()
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in output
    assert "Loading weights took" in output  # after the load, as on the Spark
    assert "Application startup complete." not in output


def test_memory_utilisation_above_what_is_free_fails_as_vllm_checks_it(
    tmp_path: Path, launcher: Launcher
) -> None:
    """0.16 checks the requested fraction against free (on a Spark: available) memory before it
    loads anything (v1/worker/utils.py request_memory); torch's CUDA OOM never comes."""
    standin = launcher(make_model_dir(tmp_path), GPU_MEMORY_UTIL="0.95")
    assert standin.wait_exit() == 1
    output = standin.output()
    assert re.search(
        r"ValueError: Free memory on device cuda:0 \(111\.32/119\.7 GiB\) on startup is less "
        r"than desired GPU memory utilization \(0\.95, 113\.72 GiB\)\. Decrease GPU memory "
        r"utilization or reduce GPU memory used by other processes\.$",
        output,
        re.M,
    ), output
    assert "EngineCore failed to start." in output
    assert output.rstrip().endswith(
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {'EngineCore_DP0': 1}"
    )
    assert "Starting to load model" not in output  # checked before the load
    assert "CUDA out of memory" not in output


def test_crash_after_start_happens_once_per_marker(tmp_path: Path, launcher: Launcher) -> None:
    model = make_model_dir(tmp_path)
    first = launcher(model, VLLM_STANDIN_FAULT="crash_after_start:1")
    assert first.wait_exit() == 1
    # it served, then died (from its log: a busy test may not catch it serving in time)
    output = first.output()
    assert output.index("Application startup complete.") < output.index("EngineDeadError")
    assert (tmp_path / "vllm-standin-crashed").exists()
    second = launcher(model, VLLM_STANDIN_FAULT="crash_after_start:0.5")
    second.wait_ready()
    # the server decides before it serves: the marker is there, so no crash is scheduled
    marker = tmp_path / "vllm-standin-crashed"
    assert f"crash marker {marker} present: not crashing this time" in second.output()
    assert second.proc.poll() is None, second.output()
    assert requests.get(f"{second.base}/health", timeout=5).status_code == 200


def test_control_file_makes_it_unhealthy(tmp_path: Path, launcher: Launcher) -> None:
    control = tmp_path / "standin.json"
    control.write_text(json.dumps({"fault": "unhealthy", "load_seconds": 0.1}))
    standin = launcher(make_model_dir(tmp_path), CARD_ARGS, VLLM_STANDIN_CONTROL_FILE=str(control))
    assert standin.wait_listening().status_code == 503
    assert requests.get(f"{standin.base}/v1/models", timeout=5).status_code == 200
    response = chat(standin, {"messages": user("hi")})
    assert (response.status_code, response.content) == (500, b"")  # launcher.py: no body


def test_control_file_in_the_model_dir_wins(tmp_path: Path, launcher: Launcher) -> None:
    """A deployment mounts only the model dir: MODEL/.vllm-standin.json reaches the server."""
    model = make_model_dir(tmp_path)
    control = tmp_path / "standin.json"
    control.write_text(json.dumps({"fault": "unhealthy", "load_seconds": 0.1}))
    (model / ".vllm-standin.json").write_text(json.dumps({"fault": "oom_at_start"}))
    standin = launcher(model, CARD_ARGS, VLLM_STANDIN_CONTROL_FILE=str(control))
    assert standin.wait_exit() == 1
    assert "CUDA out of memory" in standin.output()


def test_crash_marker_goes_where_the_control_file_says(tmp_path: Path, launcher: Launcher) -> None:
    model = make_model_dir(tmp_path)
    state = tmp_path / "survives-the-container"
    control = {"fault": "crash_after_start:0.5", "load_seconds": 0.1, "state_dir": str(state)}
    (model / ".vllm-standin.json").write_text(json.dumps(control))
    first = launcher(model)
    assert first.wait_exit() == 1
    output = first.output()
    assert output.index("Application startup complete.") < output.index("EngineDeadError")
    assert (state / "vllm-standin-crashed").exists()
    assert not (tmp_path / "vllm-standin-crashed").exists()
    second = launcher(model)
    second.wait_ready()
    marker = state / "vllm-standin-crashed"
    assert f"crash marker {marker} present: not crashing this time" in second.output()
    assert second.proc.poll() is None, second.output()


# --------------------------------------------------------------------------- flags


CARD_OVERRIDES = (
    "--override-generation-config.min_p=0.01 --override-generation-config.top_k 40 "
    "--max-num-batched-tokens 8k --enforce-eager --disable-access-log-for-endpoints "
    "/health,/metrics --disable-log-requests --max_num_partial_prefills 2 -tp 1 -O3"
)


def test_any_well_formed_vllm_flag_is_accepted_and_recorded(
    tmp_path: Path, launcher: Launcher
) -> None:
    standin = launcher(make_model_dir(tmp_path), f"{CARD_ARGS} {CARD_OVERRIDES}")
    standin.wait_ready()
    line = next(x for x in standin.output().splitlines() if "non-default args: " in x)
    recorded = ast.literal_eval(line.split("non-default args: ", 1)[1])
    assert recorded["override_generation_config"] == {"min_p": 0.01, "top_k": 40}
    assert recorded["max_num_batched_tokens"] == 8000  # vLLM's human-readable 8k
    assert recorded["enforce_eager"] is True
    assert recorded["disable_access_log_for_endpoints"] == "/health,/metrics"
    assert recorded["max_num_partial_prefills"] == 2  # underscores read as dashes
    assert recorded["optimization_level"] == "3"
    assert recorded["max_num_seqs"] == 128  # from the entrypoint
    assert recorded["tool_call_parser"] == "minimax_m2"
    assert recorded["model_tag"] == recorded["model"]
    # given with its default value: not a non-default arg, as in vLLM
    assert "disable_log_requests" not in recorded
    assert "tensor_parallel_size" not in recorded


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--no-such-flag 1", "unrecognized arguments: --no-such-flag"),
        ("--max-num-batched-tokens lots", "argument --max-num-batched-tokens: Value lots"),
        ("--override-generation-config {min_p}", "argument --override-generation-config"),
        ("--kv-cache-dtype fp9", "argument --kv-cache-dtype: invalid choice: 'fp9'"),
        ("--enforce-eager=yes", "ignored explicit argument 'yes'"),
        ("--port.x=1", "argument --port: Value"),
        ("--max-num-seqs", "argument --max-num-seqs: expected one argument"),
    ],
)
def test_malformed_flags_exit_2_like_argparse(
    tmp_path: Path, launcher: Launcher, extra: str, message: str
) -> None:
    standin = launcher(make_model_dir(tmp_path), extra)
    assert standin.wait_exit() == 2
    assert message in standin.output()


def test_api_server_validation_after_the_non_default_args(
    tmp_path: Path, launcher: Launcher
) -> None:
    standin = launcher(make_model_dir(tmp_path), "--reasoning-parser nope")
    assert standin.wait_exit() == 1
    output = standin.output()
    assert "KeyError: 'invalid reasoning parser: nope (chose from { deepseek_r1," in output
    assert output.index("non-default args") < output.index("KeyError")
    # without --enable-auto-tool-choice vLLM 0.16 does not check the tool parser's name
    other = launcher(make_model_dir(tmp_path / "b"), "--tool-call-parser nope")
    other.wait_ready()


def test_access_log_skips_the_excluded_endpoints(tmp_path: Path, launcher: Launcher) -> None:
    standin = launcher(
        make_model_dir(tmp_path), "--disable-access-log-for-endpoints /health,/metrics"
    )
    standin.wait_ready()
    for path in ("/health", "/metrics?x=1", "/version"):
        requests.get(f"{standin.base}{path}", timeout=5)
    standin.wait_output('"GET /version HTTP/1.1" 200 OK')
    access = [line for line in standin.output().splitlines() if '"GET /' in line]
    assert len(access) == 1, access
    assert re.fullmatch(
        r"\(APIServer pid=\d+\) INFO:     127\.0\.0\.1:\d+ - \"GET /version HTTP/1\.1\" 200 OK",
        access[0],
    )
    # without the flag every request has its line, in uvicorn's format
    plain = launcher(make_model_dir(tmp_path / "b"))
    plain.wait_ready()
    requests.get(f"{plain.base}/metrics", timeout=5)
    plain.wait_output('"GET /metrics HTTP/1.1" 200 OK')


def test_default_sampling_from_the_generation_config_and_its_override(
    tmp_path: Path, launcher: Launcher
) -> None:
    """get_diff_sampling_param: generation_config.json, updated by --override-generation-config
    (one word of JSON, as the role passes it through the entrypoint); a request takes what it
    does not set from them, as --enable-log-requests shows."""
    model = make_model_dir(tmp_path)
    (model / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 1.0, "top_k": 40, "top_p": 0.95})
    )
    card = '{"min_p":0.01,"temperature":1.0,"top_k":40,"top_p":0.95}'
    standin = launcher(model, f"--enable-log-requests --override-generation-config={card}")
    standin.wait_ready()
    assert (
        "Using default chat sampling params from model: {'temperature': 1.0, 'top_k': 40, "
        "'top_p': 0.95, 'min_p': 0.01}" in standin.output()
    )
    assert chat(standin, {"messages": user("Hi"), "max_tokens": 4}).status_code == 200
    assert chat(standin, {"messages": user("Hi"), "max_tokens": 4, "min_p": 0.2}).status_code == 200
    standin.wait_output("min_p=0.2")
    received = [line for line in standin.output().splitlines() if "Received request" in line]
    assert "temperature=1.0, top_p=0.95, top_k=40, min_p=0.01," in received[0]
    assert "min_p=0.2," in received[1]
    # without the override the checkpoint's values only (no min_p); --generation-config vllm: none
    plain = launcher(make_model_dir(tmp_path / "b"), "--generation-config vllm")
    plain.wait_ready()
    assert "sampling params" not in plain.output()
    checkpoint = launcher(model)
    checkpoint.wait_ready()
    assert "sampling params from model: {'temperature': 1.0, 'top_k': 40, 'top_p': 0.95}" in (
        checkpoint.output()
    )


# --------------------------------------------------------------------------- life cycle


def test_stop_during_the_load_exits_130(tmp_path: Path, launcher: Launcher) -> None:
    """api_server.py setup_server: SIGTERM while loading raises KeyboardInterrupt("terminated");
    uncaught, it ends the container's PID 1 with 130 (Python's exit through SIGINT)."""
    model = make_model_dir(tmp_path)
    for signum, line in ((signal.SIGTERM, "KeyboardInterrupt: terminated"),
                         (signal.SIGINT, "KeyboardInterrupt")):  # fmt: skip
        standin = launcher(model, VLLM_STANDIN_LOAD_SECONDS="30")
        standin.wait_output("Starting to load model")
        standin.proc.send_signal(signum)
        assert standin.wait_exit() == 130, standin.output()
        assert standin.output().rstrip().endswith(line)
        assert "Application startup complete." not in standin.output()


def test_stop_after_the_load_is_clean(tmp_path: Path, launcher: Launcher) -> None:
    standin = launcher(make_model_dir(tmp_path))
    standin.wait_ready()
    standin.proc.send_signal(signal.SIGTERM)
    assert standin.wait_exit() == 0
    output = standin.output()
    for line in ("Shutting down FastAPI HTTP server.", "Application shutdown complete."):
        assert line in output


def test_engine_death_exits_0_once_per_marker(tmp_path: Path, launcher: Launcher) -> None:
    """vllm#48966: the watchdog (launcher.py, every 5 s) stops uvicorn, serve_http returns and
    the process exits 0 -- after the real log lines."""
    model = make_model_dir(tmp_path)
    first = launcher(model, VLLM_STANDIN_FAULT="engine_death_after_start:0.3")
    first.wait_output("EngineDeadError")
    assert first.wait_listening().status_code == 503  # until the watchdog fires (<= 5 s)
    assert first.wait_exit(15) == 0
    output = first.output()
    order = [
        "Application startup complete.",
        "EngineCore encountered a fatal error.",
        "Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.",
        "AsyncLLM output_handler failed.",
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
        "Application shutdown complete.",
        "Finished server process",
    ]
    positions = [output.index(line) for line in order]
    assert positions == sorted(positions), output
    assert (tmp_path / "vllm-standin-engine-died").exists()
    second = launcher(model, VLLM_STANDIN_FAULT="engine_death_after_start:0.3")
    second.wait_ready()
    assert "engine_death_after_start marker" in second.output()
    time.sleep(0.6)
    assert requests.get(f"{second.base}/health", timeout=5).status_code == 200


def test_a_request_to_a_dead_engine_stops_the_server_at_once(
    tmp_path: Path, launcher: Launcher
) -> None:
    standin = launcher(make_model_dir(tmp_path), VLLM_STANDIN_FAULT="engine_death_after_start:0")
    standin.wait_output("EngineDeadError")
    response = chat(standin, {"messages": user("hi")})
    assert (response.status_code, response.content) == (500, b"")  # launcher.py
    started = time.monotonic()
    assert standin.wait_exit(15) == 0
    assert time.monotonic() - started < 4  # not at the watchdog's next tick


def test_engine_death_with_keep_alive_stays_up_at_503(tmp_path: Path, launcher: Launcher) -> None:
    standin = launcher(
        make_model_dir(tmp_path),
        VLLM_STANDIN_FAULT="engine_death_after_start:0",
        VLLM_KEEP_ALIVE_ON_ENGINE_DEATH="1",
    )
    standin.wait_output("EngineDeadError")
    assert standin.wait_listening().status_code == 503
    for _ in range(2):
        response = chat(standin, {"messages": user("hi")})
        assert (response.status_code, response.content) == (500, b"")
    assert requests.get(f"{standin.base}/v1/models", timeout=5).status_code == 200
    time.sleep(5.5)  # past the watchdog's tick
    assert standin.proc.poll() is None, standin.output()
    assert requests.get(f"{standin.base}/health", timeout=5).status_code == 503


def test_unready_after_start_is_503_until_restarted(tmp_path: Path, launcher: Launcher) -> None:
    model = make_model_dir(tmp_path)
    first = launcher(model, VLLM_STANDIN_FAULT="unready_after_start:0.5")
    first.wait_ready()
    first.wait_output("EngineDeadError")
    assert requests.get(f"{first.base}/health", timeout=5).status_code == 503
    assert chat(first, {"messages": user("hi")}).status_code == 500
    assert first.proc.poll() is None  # wedged: nothing stops it (no KEEP_ALIVE needed)
    assert (tmp_path / "vllm-standin-unready").exists()
    first.stop()
    second = launcher(model, VLLM_STANDIN_FAULT="unready_after_start:0.2")
    second.wait_ready()
    time.sleep(0.5)
    assert requests.get(f"{second.base}/health", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("kind", "message", "after_load"),
    [
        ("free", r"ValueError: Free memory on device cuda:0 \(\d+\.\d+/119\.7 GiB\) on startup "
         r"is less than desired GPU memory utilization \(0\.93, 111\.32 GiB\)\. Decrease GPU "
         r"memory utilization or reduce GPU memory used by other processes\.$", False),
        ("cache_blocks", r"ValueError: No available memory for the cache blocks\. Try increasing "
         r"`gpu_memory_utilization` when initializing the engine\. See "
         r"https://docs\.vllm\.ai/en/latest/configuration/conserving_memory/ for more "
         r"details\.$", True),
        ("kv_cache", r"ValueError: To serve at least one request with the models's max seq len "
         r"\(65536\), \(15\.5 GiB KV cache is needed, which is larger than the available KV "
         r"cache memory \(3\.88 GiB\)\. Based on the available memory, the estimated maximum "
         r"model length is 16384\. Try increasing `gpu_memory_utilization` or decreasing "
         r"`max_model_len` when initializing the engine\. See "
         r"https://docs\.vllm\.ai/en/latest/configuration/conserving_memory/ for more "
         r"details\.$", True),
    ],
)  # fmt: skip
def test_startup_memory_errors_in_vllm_016s_words(
    tmp_path: Path, launcher: Launcher, kind: str, message: str, after_load: bool
) -> None:
    control = {"fault": f"startup_memory:{kind}"}
    model = make_model_dir(tmp_path)
    (model / ".vllm-standin.json").write_text(json.dumps(control))
    standin = launcher(model)
    assert standin.wait_exit() == 1
    output = standin.output()
    assert re.search(message, output, re.M), output
    assert ("Loading weights took" in output) is after_load
    assert output.index("EngineCore failed to start.") < output.index("ValueError")
    assert output.rstrip().endswith(
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {'EngineCore_DP0': 1}"
    )


@pytest.mark.parametrize("fault", ["bogus", "startup_memory:disk", "engine_death_after_start:x"])
def test_unknown_faults_are_refused(tmp_path: Path, launcher: Launcher, fault: str) -> None:
    standin = launcher(make_model_dir(tmp_path), VLLM_STANDIN_FAULT=fault)
    assert standin.wait_exit() == 1
    assert "ValueError:" in standin.output()


def test_usage_stats_unless_turned_off(tmp_path: Path, launcher: Launcher) -> None:
    """usage/usage_lib.py: a JSON line in $VLLM_CONFIG_ROOT/usage_stats.json unless
    VLLM_NO_USAGE_STATS=1 or DO_NOT_TRACK=1."""
    model = make_model_dir(tmp_path)
    for name, env in (("on", {}), ("no-stats", {"VLLM_NO_USAGE_STATS": "1"}),
                      ("dnt", {"DO_NOT_TRACK": "1"})):  # fmt: skip
        root = tmp_path / name
        standin = launcher(model, VLLM_CONFIG_ROOT=str(root), **env)
        standin.wait_ready()
        stats = root / "usage_stats.json"
        if env:
            assert not stats.exists(), name
        else:
            report = json.loads(stats.read_text().splitlines()[0])
            assert report["model_architecture"] == "MiniMaxM2ForCausalLM"
            assert report["context"] == "OPENAI_API_SERVER"
        standin.stop()


# --------------------------------------------------------------------------- endpoints


def test_models_and_version(card_server: Standin) -> None:
    model_path = card_server.output().split("Model: ", 1)[1].splitlines()[0]
    models = requests.get(f"{card_server.base}/v1/models", timeout=5).json()
    assert models["object"] == "list"
    [card] = models["data"]
    assert card["id"] == model_path  # no --served-model-name: the id is MODEL
    assert card["root"] == model_path
    assert card["max_model_len"] == 65536
    assert card["owned_by"] == "vllm"
    version = requests.get(f"{card_server.base}/version", timeout=5).json()["version"]
    assert version.startswith("0.16.0")


def test_chat_answers_the_coherence_question(card_server: Standin) -> None:
    body = {"messages": user("What is the capital of France? Please reply with one word only")}
    response = chat(card_server, {**body, "max_tokens": 100})
    assert response.status_code == 200
    data = response.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    [choice] = data["choices"]
    message = choice["message"]
    assert THINK_ANSWER.match(message["content"]), message
    assert "Paris" in message["content"].split("</think>", 1)[1]
    assert message["reasoning"] is None
    assert "reasoning_content" not in message  # removed before 0.16 (vllm PR #33402)
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] > 10
    assert usage["completion_tokens"] > 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_honours_max_tokens(card_server: Standin) -> None:
    data = chat(card_server, {"messages": user("Tell me a story"), "max_tokens": 5}).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 5
    assert data["choices"][0]["message"]["content"].startswith("<think>")


def test_chat_streams_tokens(card_server: Standin) -> None:
    body: dict[str, Any] = {"messages": user("Explain unified memory briefly"), "max_tokens": 512}
    expected = chat(card_server, body).json()["choices"][0]["message"]["content"]
    response = requests.post(
        f"{card_server.base}/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        stream=True,
        timeout=30,
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [data for _, data in stream_events(response)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    contents = [d for d in deltas if d]
    assert contents[0].startswith("<think>")
    assert "".join(contents) == expected
    finished = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finished] == ["stop"]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == len(contents)


def test_tool_call(card_server: Standin) -> None:
    body: dict[str, Any] = {
        "messages": user("What is the weather in San Francisco this week?"),
        "tools": [WEATHER_TOOL, CLOCK_TOOL],
        "max_tokens": 512,
    }
    data = chat(card_server, body).json()
    [choice] = data["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert re.fullmatch(r"<think>.*</think>\s*", message["content"], re.DOTALL)
    [call] = message["tool_calls"]
    assert re.fullmatch(r"chatcmpl-tool-[0-9a-f]{32}", call["id"])
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert arguments == {"location": "San Francisco", "unit": "celsius", "days": 1, "alerts": True}

    named = {**body, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    [call] = chat(card_server, named).json()["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_time", "arguments": "{}"}

    plain = chat(card_server, {**body, "tool_choice": "none"}).json()["choices"][0]
    assert plain["finish_reason"] == "stop"
    assert plain["message"]["tool_calls"] == []


def test_tool_call_streamed(card_server: Standin) -> None:
    body: dict[str, Any] = {"messages": user("Weather in Oslo?"), "tools": [WEATHER_TOOL]}
    body["stream"] = True
    response = requests.post(
        f"{card_server.base}/v1/chat/completions", json=body, stream=True, timeout=30
    )
    chunks = [json.loads(data) for _, data in stream_events(response) if data != "[DONE]"]
    calls = [d["tool_calls"] for c in chunks if "tool_calls" in (d := c["choices"][0]["delta"])]
    # as vLLM 0.16's minimax_m2 parser streams a call: the header (id, type, name, empty
    # arguments), "{", one '"key": value' per parameter, "}" -- one delta per token
    assert all(len(call) == 1 and call[0]["index"] == 0 for call in calls)
    header, *rest = [call[0] for call in calls]
    assert re.fullmatch(r"call_[0-9a-f]{24}", header["id"])
    assert header["type"] == "function"
    assert header["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(d) == {"index", "function"} for d in rest)
    fragments = [d["function"]["arguments"] for d in rest]
    assert fragments == [
        "{",
        '"location": "Oslo"',
        ', "unit": "celsius"',
        ', "days": 1',
        ', "alerts": true',
        "}",
    ]
    body["stream"] = False
    whole = chat(card_server, body).json()["choices"][0]["message"]["tool_calls"][0]
    assert "".join(fragments) == whole["function"]["arguments"]  # the same JSON text
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_completions_endpoint(card_server: Standin) -> None:
    response = requests.post(
        f"{card_server.base}/v1/completions", json={"prompt": "Once upon a time"}, timeout=30
    )
    data = response.json()
    assert data["object"] == "text_completion"
    assert data["usage"]["completion_tokens"] == 16  # the default max_tokens
    assert data["choices"][0]["finish_reason"] == "length"


def test_request_errors(card_server: Standin) -> None:
    response = chat(card_server, {"model": "nope", "messages": user("hi")})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "The model `nope` does not exist."
    bad = requests.post(
        f"{card_server.base}/v1/chat/completions",
        data=b"{not json",
        headers={"content-type": "application/json"},
        timeout=5,
    )
    assert bad.status_code == 400
    too_long = chat(card_server, {"messages": user("hi"), "max_tokens": 70000})
    assert too_long.status_code == 400
    assert "maximum context length is 65536" in too_long.json()["error"]["message"]


def test_metrics_count_served_requests(card_server: Standin) -> None:
    before = {
        name: metric(card_server, name)
        for name in (
            "vllm:request_success_total",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:time_to_first_token_seconds_count",
            "vllm:e2e_request_latency_seconds_count",
        )
    }
    data = chat(card_server, {"messages": user("Count me"), "max_tokens": 7}).json()
    assert (
        metric(card_server, "vllm:request_success_total")
        == before["vllm:request_success_total"] + 1
    )
    assert metric(card_server, "vllm:prompt_tokens_total") == (
        before["vllm:prompt_tokens_total"] + data["usage"]["prompt_tokens"]
    )
    assert metric(card_server, "vllm:generation_tokens_total") == (
        before["vllm:generation_tokens_total"] + 7
    )
    for name in (
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ):
        assert metric(card_server, name) == before[name] + 1
    text = requests.get(f"{card_server.base}/metrics", timeout=5).text
    for name in ("vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:num_preemptions"):
        assert re.search(rf'^{name}\S*\{{model_name="[^"]+",engine="0"\}} ', text, re.M), name
    assert "# TYPE vllm:inter_token_latency_seconds histogram" in text


# --------------------------------------------------------------------------- API key, served name


def test_api_key_guards_v1_only(key_server: Standin) -> None:
    denied = requests.get(f"{key_server.base}/v1/models", timeout=5)
    assert denied.status_code == 401
    assert denied.json() == {"error": "Unauthorized"}
    wrong = {"Authorization": "Bearer wrong"}
    assert requests.get(f"{key_server.base}/v1/models", headers=wrong, timeout=5).status_code == 401
    for path in ("/health", "/ping", "/version", "/metrics"):
        assert requests.get(f"{key_server.base}{path}", timeout=5).status_code == 200, path
    ok = requests.get(
        f"{key_server.base}/v1/models", headers={"Authorization": "Bearer sekret"}, timeout=5
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("authorization", "status"),
    [("Bearer sekret", 200), ("bearer sekret", 200), ("BEARER sekret", 200),
     ("Bearer  sekret", 401), ("Bearer sekret junk", 401), ("Bearersekret", 401),
     ("Basic sekret", 401)],
)  # fmt: skip
def test_the_key_is_matched_as_vllm_matches_it(
    key_server: Standin, authorization: str, status: int
) -> None:
    """server_utils.AuthenticationMiddleware.verify_token: value.partition(" "), the scheme
    "bearer" in any case, the rest exactly the key (one space, nothing after it)."""
    headers = {"Authorization": authorization}
    assert requests.get(f"{key_server.base}/v1/models", headers=headers, timeout=5).status_code == (
        status
    )


def test_head_on_a_get_route_is_405_as_in_fastapi(key_server: Standin) -> None:
    """FastAPI's APIRoute keeps only the declared methods (Starlette's Route would add HEAD)."""
    head = requests.head(f"{key_server.base}/health", timeout=5)
    assert (head.status_code, head.content) == (405, b"")
    assert requests.head(f"{key_server.base}/v1/models", timeout=5).status_code == 401


def test_listens_on_host_and_port_only(tmp_path: Path, launcher: Launcher) -> None:
    """--host/--port (the entrypoint's HOST and PORT): on 127.0.0.1 the server is not reached at
    another address of the machine; a port already taken ends the start as vLLM's bind() does."""
    standin = launcher(make_model_dir(tmp_path))
    standin.wait_ready()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet sent: picks the address of the default route
        other = probe.getsockname()[0]
    assert other != "127.0.0.1"
    with pytest.raises(OSError):
        socket.create_connection((other, standin.port), timeout=5).close()
    taken = launcher(make_model_dir(tmp_path / "second"), PORT=str(standin.port))
    assert taken.wait_exit() != 0
    assert "Address already in use" in taken.output()


def test_routes_outside_v1_are_open_even_with_a_key(key_server: Standin) -> None:
    """vLLM 0.16 checks the key on /v1/* only (server_utils.AuthenticationMiddleware):
    /invocations serves chat completions without it, and /tokenize, /detokenize and
    /inference/v1/generate are open too (vllm#58144)."""
    base, name = key_server.base, '"minimax"'
    chat_body: dict[str, Any] = {"model": name, "messages": user("What is the capital of France?")}
    assert chat(key_server, chat_body).status_code == 401
    invoked = requests.post(f"{base}/invocations", json=chat_body, timeout=30)
    assert invoked.status_code == 200
    assert invoked.json()["object"] == "chat.completion"
    assert "Paris" in invoked.json()["choices"][0]["message"]["content"]
    completion = requests.post(f"{base}/invocations", json={"prompt": "Hi", "max_tokens": 3},
                               timeout=30)  # fmt: skip
    assert completion.json()["object"] == "text_completion"
    neither = requests.post(f"{base}/invocations", json={"input": "x"}, timeout=30)
    assert neither.status_code == 400
    assert "Cannot find suitable handler for request" in neither.json()["error"]["message"]
    not_json = requests.post(f"{base}/invocations", data=b"{}", timeout=30)
    assert not_json.status_code == 400  # validate_json_request: only application/json

    tokens = requests.post(f"{base}/tokenize", json={"prompt": "Hello world"}, timeout=5).json()
    assert tokens["count"] == len(tokens["tokens"]) == 2
    assert tokens["max_model_len"] == 65536
    text = requests.post(f"{base}/detokenize", json={"tokens": tokens["tokens"]}, timeout=5)
    assert text.json() == {"prompt": "Hello world"}
    generated = requests.post(
        f"{base}/inference/v1/generate",
        json={"token_ids": tokens["tokens"], "sampling_params": {"max_tokens": 4}},
        timeout=30,
    ).json()
    assert len(generated["choices"][0]["token_ids"]) == 4
    assert generated["choices"][0]["finish_reason"] == "length"

    for path in ("/v1/models", "/v1/tokenize", "/v1/whatever"):
        assert requests.get(f"{base}{path}", timeout=5).status_code == 401, path
    assert requests.get(f"{base}/load", timeout=5).json() == {"server_load": 0}
    assert requests.get(f"{base}/nowhere", timeout=5).json() == {"detail": "Not Found"}
    # the scheme is case-insensitive, as in vLLM
    lower = {"Authorization": "bearer sekret"}
    assert requests.get(f"{base}/v1/models", headers=lower, timeout=5).status_code == 200


def test_quotes_in_extra_args_reach_the_server(key_server: Standin) -> None:
    headers = {"Authorization": "Bearer sekret"}
    models = requests.get(f"{key_server.base}/v1/models", headers=headers, timeout=5).json()
    assert [card["id"] for card in models["data"]] == ['"minimax"']
    assert (
        chat(key_server, {"model": "minimax", "messages": user("hi")}, "sekret").status_code == 404
    )
    ok = chat(key_server, {"model": '"minimax"', "messages": user("hi")}, "sekret")
    assert ok.status_code == 200
    # no reasoning parser: the template's <think> is not in the output
    assert not ok.json()["choices"][0]["message"]["content"].startswith("<think>")


def test_tools_without_auto_tool_choice_flags_are_rejected(key_server: Standin) -> None:
    body = {"messages": user("Weather?"), "tools": [WEATHER_TOOL]}
    response = chat(key_server, body, "sekret")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith('"auto" tool choice requires --enable-auto-tool-choice')


# --------------------------------------------------------------------------- tokenizer, timing


def test_prompt_tokens_come_from_the_tokenizer(tokenizer_server: Standin) -> None:
    def prompt_tokens(text: str) -> int:
        body = {"messages": user(text), "max_tokens": 1}
        usage: dict[str, int] = chat(tokenizer_server, body, "envkey").json()["usage"]
        return usage["prompt_tokens"]

    # whitespace-split words: "a,b,c,d" is one token (the regex approximation would say 7)
    assert prompt_tokens("a,b,c,d") == 1 + 7  # 3 per message, 4 for the generation prompt
    assert prompt_tokens("one two three") == 3 + 7
    assert "tokenizer.json" in tokenizer_server.output()


def test_prefill_and_decode_follow_the_configured_rates(tokenizer_server: Standin) -> None:
    words = 400
    prompt_tokens = words + 7  # 3 for the message, 4 for the generation prompt
    prefill_tps, decode_tps, block = 1000, 50, 16  # the server's knobs; vLLM's cache block
    body: dict[str, Any] = {
        "messages": user(" ".join(f"w{i}" for i in range(words))),
        "max_tokens": 20,
        "stream": True,
    }
    counters = ("vllm:prompt_tokens_total", "vllm:prefix_cache_queries_total",
                "vllm:prefix_cache_hits_total")  # fmt: skip

    def timed() -> tuple[list[float], dict[str, float]]:
        """When each content token arrived (seconds after the request); the counters' growth."""
        before = {name: metric(tokenizer_server, name) for name in counters}
        start = time.monotonic()
        response = requests.post(
            f"{tokenizer_server.base}/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer envkey"},
            stream=True,
            timeout=30,
        )
        times = [
            t - start
            for t, data in stream_events(response)
            if data != "[DONE]" and json.loads(data)["choices"][0]["delta"].get("content")
        ]
        return times, {name: metric(tokenizer_server, name) - before[name] for name in counters}

    times, counted = timed()
    assert len(times) == 20
    # the whole prompt was prefilled (nothing cached yet)...
    assert counted == {
        "vllm:prompt_tokens_total": prompt_tokens,
        "vllm:prefix_cache_queries_total": prompt_tokens,
        "vllm:prefix_cache_hits_total": 0,
    }
    # ...and paced: the first token after the prefill, the n-th 1 / decode_tps
    # after the one before. Lower bounds only: a busy machine only makes tokens later.
    prefill_s = prompt_tokens / server.prefill_rate(prefill_tps, prompt_tokens)
    assert prefill_s > prompt_tokens / prefill_tps  # shorter than 512 tokens: slower
    for n, arrived in enumerate(times):
        assert arrived >= prefill_s + n / decode_tps - 0.001, (n, times)
    # The same prompt again: prefix caching finds every whole 16-token block of it, so only
    # the last, partial block is prefilled.
    _, counted = timed()
    cached = prompt_tokens // block * block
    assert counted == {
        "vllm:prompt_tokens_total": prompt_tokens,
        "vllm:prefix_cache_queries_total": prompt_tokens,
        "vllm:prefix_cache_hits_total": cached,
    }


def test_prefill_rate_grows_with_the_prompt_as_the_cards_table() -> None:
    """The card: 920 tok/s at 512 prompt tokens, 1916 at 4096; VLLM_STANDIN_PREFILL_TPS is the
    rate at 512 and scales the whole curve."""
    assert server.prefill_rate(920, 512) == pytest.approx(920)
    assert server.prefill_rate(920, 4096) == pytest.approx(1916)
    assert server.prefill_rate(1000, 4096) == pytest.approx(1916 * 1000 / 920)
    assert server.prefill_rate(920, 65536) == server.prefill_rate(920, 4096)  # no faster
    times = [n / server.prefill_rate(920, n) for n in (1, 10, 100, 512, 2048, 4096, 8192, 65536)]
    assert times == sorted(times)  # a longer prompt never prefills sooner
    assert times[3] == pytest.approx(512 / 920)
