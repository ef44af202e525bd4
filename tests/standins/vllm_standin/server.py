#!/usr/bin/env python3
"""Stand-in for the vLLM server in ``avarok/dgx-vllm-nvfp4-kernel:v23``, used only by the
project's test lab.

It imitates vLLM 0.16's OpenAI-compatible server as seen from outside (CLI, start-up logs,
refused connections while "loading", endpoints, JSON shapes, the MiniMax-M2 reasoning and
tool-call parsers, Prometheus metrics, throughput) without a GPU or model weights. Python 3.11
standard library only; ``tokenizers`` is used when importable and MODEL/tokenizer.json exists.

CLI (argparse; an unknown flag exits with status 2)::

    server.py serve MODEL_PATH [--host 0.0.0.0] [--port 8000] [--gpu-memory-utilization F]
        [--max-model-len N] [--max-num-seqs N] [--served-model-name NAME [NAME ...]]
        [--api-key KEY [KEY ...]] [--trust-remote-code] [--kv-cache-dtype X]
        [--attention-backend X] [--enable-auto-tool-choice] [--tool-call-parser X]
        [--reasoning-parser X] [--[no-]enable-prefix-caching]

``VLLM_API_KEY`` also sets the API key. Knobs, read once at start (environment)::

    VLLM_STANDIN_LOAD_SECONDS   simulated model load (default 5); the port refuses connections
    VLLM_STANDIN_PREFILL_TPS    prompt tokens per second before the first token (default 920)
    VLLM_STANDIN_DECODE_TPS     generated tokens per second (default 28)
    VLLM_STANDIN_OOM_ABOVE      --gpu-memory-utilization above this: CUDA OOM (default 0.93)
    VLLM_STANDIN_FAULT          none | oom_at_start | crash_after_start:N | unhealthy
    VLLM_STANDIN_STATE_DIR      where the crash-once marker lives (default /tmp)
    VLLM_STANDIN_CONTROL_FILE   JSON object overriding fault, load_seconds, prefill_tps,
                                decode_tps and state_dir (default /models-control/standin.json;
                                absent: none)

A second control file, ``MODEL/.vllm-standin.json`` (same keys), is read after the first and
wins: a deployment mounts only the model directory, so this is how the lab injects faults into
a container it does not start itself. The real image ignores the file.

Faults: ``oom_at_start`` exits 1 with torch's CUDA OOM message after the load delay;
``crash_after_start:N`` serves, then after N seconds logs an engine-died error and exits 1,
unless the marker ``vllm-standin-crashed`` exists in the state directory (the crash creates it,
so a restarted server stays up; with ``--ipc=host`` a state_dir under /dev/shm is the host's
and outlives the container, so a new container started by systemd stays up too);
``unhealthy`` serves, but /health and /ping answer 503 and generation 500.

Prompt tokens: with ``tokenizers`` and MODEL/tokenizer.json, the tokenizer's count for each
message's content; otherwise an approximation counting words and punctuation marks separately
(regex ``\\w+|[^\\w\\s]``). Either way each message adds 3 tokens and the generation prompt 4
(the chat template's markers), and ``tools`` add their JSON. Generated tokens are words with
their leading spaces (newlines and ``</think>`` are tokens of their own). The first token comes
after prefill (uncached prompt tokens / prefill rate, at most 120 s), each further one after
1 / decode rate. With prefix caching (vLLM's default) whole 16-token blocks seen before are not
prefilled again.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, cast
from urllib.parse import urlsplit

VERSION = "0.16.0rc2.dev0+standin"
CRASH_MARKER = "vllm-standin-crashed"
MODEL_CONTROL_FILE = ".vllm-standin.json"
GPU_TOTAL_GIB = 119.7  # what torch reports for a GB10
WEIGHTS_AND_OVERHEAD_GIB = 96.0  # the 99 GB checkpoint plus activations and CUDA graphs
BLOCK_SIZE = 16
MAX_PREFILL_SECONDS = 120.0
GENERATION_PROMPT = ["]~b]ai", "\n", "<think>", "\n"]
KV_CACHE_DTYPES = ["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"]
REASONING_PARSER_NAMES = (
    "deepseek_r1 deepseek_v3 ernie45 glm45 gpt_oss granite hunyuan_a13b kimi_k2 minimax_m2 "
    "minimax_m2_append_think mistral olmo3 qwen3 seed_oss step3"
)
TOOL_PARSER_NAMES = (
    "deepseek_v3 deepseek_v31 ernie45 glm45 granite hermes hunyuan_a13b internlm jamba kimi_k2 "
    "llama3_json llama4_json llama4_pythonic longcat minimax minimax_m2 mistral olmo3 openai "
    "phi4_mini_json pythonic qwen3_coder qwen3_xml seed_oss step3 xlam"
)
APPEND_THINK = "minimax_m2_append_think"
TOOL_START, TOOL_END = "<minimax:tool_call>", "</minimax:tool_call>"
APPROX_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
PIECE_RE = re.compile(r"\n+|[^\S\n]*\S+")
WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")
NAME_RE = re.compile(r"(?<=[a-z,] )[A-Z][a-z]+(?: [A-Z][a-z]+)*")
CAPITAL_OF_FRANCE_RE = re.compile(r"capital\s+(city\s+)?of\s+france", re.IGNORECASE)
FILLER = PIECE_RE.findall(" The stand-in keeps generating text because the request asked it to.")
BUCKETS = {  # vLLM's histogram buckets, seconds
    "time_to_first_token_seconds": "0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1.0 "
    "2.5 5.0 7.5 10.0 20.0 40.0 80.0 160.0 640.0 2560.0",
    "inter_token_latency_seconds": "0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1.0 2.5 "
    "5.0 7.5 10.0 20.0 40.0 80.0",
    "e2e_request_latency_seconds": "0.3 0.5 0.8 1.0 1.5 2.0 2.5 5.0 10.0 15.0 20.0 30.0 40.0 50.0 "
    "60.0 120.0 240.0 480.0 960.0 1920.0 7680.0",
}
METRICS = {  # name: (type, help), as vLLM's V1 Prometheus logger
    "num_requests_running": ("gauge", "Number of requests in model execution batches."),
    "num_requests_waiting": ("gauge", "Number of requests waiting to be processed."),
    "kv_cache_usage_perc": ("gauge", "KV-cache usage. 1 means 100 percent usage."),
    "num_preemptions_total": ("counter", "Cumulative number of preemption from the engine."),
    "prompt_tokens_total": ("counter", "Number of prefill tokens processed."),
    "generation_tokens_total": ("counter", "Number of generation tokens processed."),
    "prefix_cache_queries_total": ("counter", "Prefix cache queries, in queried tokens."),
    "prefix_cache_hits_total": ("counter", "Prefix cache hits, in cached tokens."),
    "request_success_total": ("counter", "Count of successfully processed requests."),
    "time_to_first_token_seconds": ("histogram", "Histogram of time to first token in seconds."),
    "inter_token_latency_seconds": ("histogram", "Histogram of inter-token latency in seconds."),
    "e2e_request_latency_seconds": ("histogram", "Histogram of e2e request latency in seconds."),
}


# --------------------------------------------------------------------------- logging


def log(level: str, where: str, message: str, proc: str = "APIServer") -> None:
    """A vLLM-style log line on stdout (where vLLM logs)."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"({proc} pid={os.getpid()}) {level} {stamp} [{where}] {message}", flush=True)


def uvicorn_log(message: str) -> None:
    print(f"(APIServer pid={os.getpid()}) INFO:     {message}", flush=True)


def die(exception_line: str, frames: list[str]) -> NoReturn:
    """Print a Python-style traceback ending in ``exception_line`` to stderr and exit 1."""
    lines = ["Traceback (most recent call last):"]
    lines += [f'  File "/opt/venv/lib/python3.12/site-packages/vllm/{f}"' for f in frames]
    print("\n".join([*lines, exception_line]), file=sys.stderr, flush=True)
    sys.exit(1)


# --------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class Knobs:
    """Simulation settings: the environment, overridden by the control file."""

    fault: str
    crash_after: float | None
    load_seconds: float
    prefill_tps: float
    decode_tps: float
    oom_above: float
    state_dir: Path


def load_knobs(env: Mapping[str, str], model: str | None = None) -> Knobs:
    """The knobs from ``env``, then the control file, then MODEL's own control file."""
    values: dict[str, Any] = {
        "fault": env.get("VLLM_STANDIN_FAULT", "none"),
        "load_seconds": env.get("VLLM_STANDIN_LOAD_SECONDS", "5"),
        "prefill_tps": env.get("VLLM_STANDIN_PREFILL_TPS", "920"),
        "decode_tps": env.get("VLLM_STANDIN_DECODE_TPS", "28"),
        "state_dir": env.get("VLLM_STANDIN_STATE_DIR", "/tmp"),
        "oom_above": env.get("VLLM_STANDIN_OOM_ABOVE", "0.93"),
    }
    controls = [Path(env.get("VLLM_STANDIN_CONTROL_FILE", "/models-control/standin.json"))]
    if model:
        controls.append(Path(model) / MODEL_CONTROL_FILE)
    for control in controls:
        if not control.is_file():
            continue
        try:
            overrides = json.loads(control.read_text())
            values.update({k: v for k, v in overrides.items() if k in values})
        except (OSError, ValueError, AttributeError) as exc:
            die(f"ValueError: stand-in control file {control}: {exc}", [])
        log("INFO", "standin", f"control file {control}: {overrides}")
    fault = str(values["fault"]).strip() or "none"
    crash_after: float | None = None
    try:
        if fault.startswith("crash_after_start:"):
            fault, seconds = fault.split(":", 1)
            crash_after = float(seconds)
        knobs = Knobs(
            fault=fault,
            crash_after=crash_after,
            load_seconds=float(values["load_seconds"]),
            prefill_tps=float(values["prefill_tps"]),
            decode_tps=float(values["decode_tps"]),
            oom_above=float(values["oom_above"]),
            state_dir=Path(str(values["state_dir"])),
        )
    except ValueError as exc:
        die(f"ValueError: stand-in settings: {exc}", [])
    if fault not in {"none", "oom_at_start", "crash_after_start", "unhealthy"}:
        die(f"ValueError: unknown VLLM_STANDIN_FAULT {fault!r}", [])
    if min(knobs.prefill_tps, knobs.decode_tps) <= 0:
        die("ValueError: stand-in prefill_tps and decode_tps must be positive", [])
    return knobs


# --------------------------------------------------------------------------- CLI


def human_int(text: str) -> int:
    """vLLM's human-readable integers: 65536, 64k (x1000), 64K (x1024), 1m, 1M."""
    scale = {"k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM CLI")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", usage="vllm serve [model_tag] [options]")
    serve.add_argument("model_tag")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    serve.add_argument("--max-model-len", type=human_int, default=None)
    serve.add_argument("--max-num-seqs", type=int, default=256)
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--api-key", nargs="+", default=None)
    serve.add_argument("--trust-remote-code", action="store_true")
    serve.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    serve.add_argument("--attention-backend", default=None)
    serve.add_argument("--enable-auto-tool-choice", action="store_true")
    serve.add_argument("--tool-call-parser", default=None)
    serve.add_argument("--reasoning-parser", default=None)
    serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)
    # vLLM 0.16: comma-separated paths whose requests uvicorn's access log leaves out
    serve.add_argument("--disable-access-log-for-endpoints", default=None)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """The checks vLLM's validate_parsed_serve_args makes before anything else."""
    frames = ["entrypoints/openai/cli_args.py"]
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        die("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser", frames)
    for kind, name, known in (
        ("tool call", args.tool_call_parser, TOOL_PARSER_NAMES.split()),
        ("reasoning", args.reasoning_parser, REASONING_PARSER_NAMES.split()),
    ):
        if name and name not in known:
            choices = ", ".join(sorted(known))
            die(f"KeyError: 'invalid {kind} parser: {name} (chose from {{ {choices} }})'", frames)


# --------------------------------------------------------------------------- model directory


def validate_model_dir(model: str) -> tuple[dict[str, Any], list[str]]:
    """config.json and the weight shards, failing as vLLM would; returns (config, shards)."""
    path = Path(model)
    config_file = path / "config.json"
    if not config_file.is_file():
        die(
            f"ValueError: Invalid repository ID or local directory specified: '{model}'.\n"
            "Please verify the following requirements:\n"
            "1. Provide a valid Hugging Face repository ID.\n"
            "2. Specify a local directory that contains a recognized configuration file.\n"
            "   - For Hugging Face models: ensure the presence of a 'config.json'.\n"
            "   - For Mistral models: ensure the presence of a 'params.json'.",
            ["transformers_utils/config.py"],
        )
    try:
        config = json.loads(config_file.read_text())
    except ValueError:
        die(
            f"OSError: It looks like the config file at '{config_file}' is not a valid JSON file.",
            ["transformers_utils/config.py"],
        )
    frames = ["model_executor/model_loader/default_loader.py"]
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            die(f"ValueError: invalid safetensors index {index_file}: {exc!r}", frames)
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            log(
                "ERROR",
                "default_loader.py:282",
                f"{len(missing)} of {len(shards)} safetensors shards missing in {model}",
                "EngineCore_DP0",
            )
            die(
                f"FileNotFoundError: [Errno 2] No such file or directory: '{path / missing[0]}'",
                frames,
            )
    else:
        shards = sorted(p.name for p in path.glob("*.safetensors"))
        if not shards:
            die(f"RuntimeError: Cannot find any model weights with `{model}`", frames)
    return (config if isinstance(config, dict) else {}), shards


# --------------------------------------------------------------------------- metrics


class Histogram:
    def __init__(self, name: str) -> None:
        self.buckets = [float(b) for b in BUCKETS[name].split()]
        self.counts = [0] * len(self.buckets)  # cumulative, as Prometheus exposes them
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


def label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class Metrics:
    running: int = 0
    waiting: int = 0
    kv_tokens_used: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(["stop", "length"], 0))
    aborted: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram("time_to_first_token_seconds"))
    itl: Histogram = field(default_factory=lambda: Histogram("inter_token_latency_seconds"))
    e2e: Histogram = field(default_factory=lambda: Histogram("e2e_request_latency_seconds"))

    def render(self, model_name: str, kv_capacity: int) -> str:
        """Prometheus text format, named and labelled as vLLM's metrics."""
        labels = f'model_name="{label_value(model_name)}",engine="0"'
        samples: dict[str, list[tuple[str, float]]] = {
            "num_requests_running": [("", self.running)],
            "num_requests_waiting": [("", self.waiting)],
            "kv_cache_usage_perc": [("", min(1.0, self.kv_tokens_used / max(1, kv_capacity)))],
            "num_preemptions_total": [("", self.preemptions)],
            "prompt_tokens_total": [("", self.prompt_tokens)],
            "generation_tokens_total": [("", self.generation_tokens)],
            "prefix_cache_queries_total": [("", self.prefix_queries)],
            "prefix_cache_hits_total": [("", self.prefix_hits)],
            "request_success_total": [
                (f'{{{labels},finished_reason="{reason}"}}', count)
                for reason, count in {**self.finished, "abort": self.aborted}.items()
            ],
        }
        for name, hist in (
            ("time_to_first_token_seconds", self.ttft),
            ("inter_token_latency_seconds", self.itl),
            ("e2e_request_latency_seconds", self.e2e),
        ):
            bounds = [*(str(b) for b in hist.buckets), "+Inf"]
            counts = [*hist.counts, hist.count]
            samples[name] = [
                *(
                    (f'_bucket{{{labels},le="{b}"}}', c)
                    for b, c in zip(bounds, counts, strict=True)
                ),
                ("_count", hist.count),
                ("_sum", hist.total),
            ]
        out: list[str] = []
        for name, (kind, helptext) in METRICS.items():
            out += [f"# HELP vllm:{name} {helptext}", f"# TYPE vllm:{name} {kind}"]
            for suffix, value in samples[name]:
                suffix = suffix if "{" in suffix else f"{suffix}{{{labels}}}"
                out.append(f"vllm:{name}{suffix} {float(value)}")
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- engine


class Engine:
    """Timing, concurrency, prefix cache and metrics of the simulated model."""

    def __init__(self, args: argparse.Namespace, knobs: Knobs, kv_capacity: int) -> None:
        self.args = args
        self.knobs = knobs
        self.kv_capacity = kv_capacity
        self.served_names: list[str] = args.served_model_name or [args.model_tag]
        self.api_keys: list[str] = args.api_key or []
        self.healthy = knobs.fault != "unhealthy"
        self.slots = threading.BoundedSemaphore(args.max_num_seqs)
        self.lock = threading.Lock()
        self.metrics = Metrics()
        self.prefix_cache: OrderedDict[int, None] = OrderedDict()
        self.prefix_caching = args.enable_prefix_caching is not False  # on by default in V1
        self.tokenizer: Any = None
        tokenizer_file = Path(args.model_tag) / "tokenizer.json"
        if tokenizer_file.is_file():
            try:
                module = importlib.import_module("tokenizers")
                self.tokenizer = module.Tokenizer.from_file(str(tokenizer_file))
            except Exception:  # no tokenizers module, or a file it cannot read
                self.tokenizer = None
        how = f"tokenizer {tokenizer_file}" if self.tokenizer else "approximation (regex)"
        log("INFO", "standin", f"prompt token counting: {how}")

    def tokenize(self, text: str) -> list[str | int]:
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return list(APPROX_TOKEN_RE.findall(text))

    def token_id(self, piece: str) -> int:
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(piece, add_special_tokens=False).ids
            if ids:
                return int(ids[0])
        return zlib.crc32(piece.encode()) % 200064

    def cached_prefix(self, prompt: list[str | int]) -> int:
        """Tokens of ``prompt`` found in the prefix cache (whole blocks); caches the rest."""
        if not self.prefix_caching:
            return 0
        hashes: list[int] = []
        parent = 0
        for start in range(0, len(prompt) - BLOCK_SIZE + 1, BLOCK_SIZE):
            parent = hash((parent, tuple(prompt[start : start + BLOCK_SIZE])))
            hashes.append(parent)
        with self.lock:
            hits = 0
            while hits < len(hashes) and hashes[hits] in self.prefix_cache:
                self.prefix_cache.move_to_end(hashes[hits])
                hits += 1
            for block in hashes[hits:]:
                self.prefix_cache[block] = None
            while len(self.prefix_cache) > max(1, self.kv_capacity // BLOCK_SIZE):
                self.prefix_cache.popitem(last=False)
        return max(0, min(hits * BLOCK_SIZE, len(prompt) - 1))  # the last token is recomputed

    def generate(self, prompt: list[str | int], pieces: list[str]) -> Generator[str, None, None]:
        """Yield ``pieces`` at the simulated pace; closing the generator early aborts."""
        arrival = time.monotonic()
        with self.lock:
            self.metrics.waiting += 1
        self.slots.acquire()
        with self.lock:
            self.metrics.waiting -= 1
            self.metrics.running += 1
            self.metrics.kv_tokens_used += len(prompt)
        produced = 0
        try:
            cached = self.cached_prefix(prompt)
            prefill = (len(prompt) - cached) / self.knobs.prefill_tps
            time.sleep(min(MAX_PREFILL_SECONDS, prefill))
            first = last = time.monotonic()
            with self.lock:
                self.metrics.prompt_tokens += len(prompt)
                self.metrics.prefix_queries += len(prompt) if self.prefix_caching else 0
                self.metrics.prefix_hits += cached
                self.metrics.ttft.observe(first - arrival)
            for index, piece in enumerate(pieces):
                if index:
                    time.sleep(max(0.0, first + index / self.knobs.decode_tps - time.monotonic()))
                now = time.monotonic()
                with self.lock:
                    self.metrics.generation_tokens += 1
                    self.metrics.kv_tokens_used += 1
                    if index:
                        self.metrics.itl.observe(now - last)
                last = now
                produced += 1
                yield piece
        finally:
            with self.lock:
                self.metrics.running -= 1
                self.metrics.kv_tokens_used -= len(prompt) + produced
                if produced < len(pieces):
                    self.metrics.aborted += 1
                else:
                    self.metrics.e2e.observe(time.monotonic() - arrival)
            self.slots.release()

    def finished(self, finish_reason: str) -> None:
        with self.lock:
            self.metrics.finished[finish_reason] += 1


# --------------------------------------------------------------------------- model output


class RequestError(Exception):
    """An error answer in vLLM's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"error": {"message": message, "type": kind, "param": param, "code": status}}


def text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def reasoning_and_answer(user_text: str) -> tuple[str, str]:
    if CAPITAL_OF_FRANCE_RE.search(user_text):
        return "The user asks for the capital of France. It is Paris.", "Paris"
    topic = " ".join(WORD_RE.findall(user_text)[:5]) or "nothing in particular"
    reasoning = f'The user wrote about "{topic}". A short, direct answer will do.'
    answer = (
        f'You wrote about "{topic}". This is a deterministic reply: the server answering is a '
        "stand-in without model weights, so it repeats a few of your words and stops here."
    )
    return reasoning, answer


def argument_value(schema: Any, user_text: str) -> tuple[str, Any]:
    """(what the model writes, the value after the minimax_m2 parser's type conversion)."""
    schema = schema if isinstance(schema, dict) else {}
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return (enum[0] if isinstance(enum[0], str) else json.dumps(enum[0])), enum[0]
    kind = schema.get("type", "string")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    typed: dict[str, tuple[str, Any]] = {
        "integer": ("1", 1),
        "number": ("1.0", 1),  # vLLM's parser turns an integral float into an int
        "boolean": ("true", True),
        "array": ("[]", []),
        "object": ("{}", {}),
        "null": ("null", None),
    }
    if kind in typed:
        return typed[kind]
    names = NAME_RE.findall(user_text)  # e.g. a place: capitalised words not opening the text
    return (names[-1], names[-1]) if names else ("Paris", "Paris")


def tool_call_text(tool: dict[str, Any], user_text: str) -> tuple[str, str, dict[str, Any]]:
    """The model's <minimax:tool_call> block for ``tool``: (text, name, parsed arguments)."""
    function = tool.get("function") or {}
    name = str(function.get("name", ""))
    params = function.get("parameters") or {}
    properties = params.get("properties") or {}
    lines = [TOOL_START, f'<invoke name="{name}">']
    arguments: dict[str, Any] = {}
    for prop in params.get("required") or []:
        written, value = argument_value(properties.get(prop), user_text)
        lines.append(f'<parameter name="{prop}">{written}</parameter>')
        arguments[str(prop)] = value
    return "\n".join([*lines, "</invoke>", TOOL_END]), name, arguments


def plan_pieces(raw: str, request: dict[str, Any], max_tokens: int) -> tuple[list[str], str]:
    """The generated tokens and finish reason, honouring max_tokens, min_tokens, ignore_eos."""
    pieces: list[str] = PIECE_RE.findall(raw)
    ignore_eos = bool(request.get("ignore_eos"))
    target = max_tokens if ignore_eos else max(int(request.get("min_tokens") or 0), len(pieces))
    while len(pieces) < target:
        pieces.append(FILLER[len(pieces) % len(FILLER)])
    if len(pieces) > max_tokens or ignore_eos:
        return pieces[:max_tokens], "length"
    return pieces, "stop"


@dataclass
class Plan:
    """What the simulated model generates for a chat request and how the parsers read it."""

    pieces: list[str]
    finish_reason: str
    reasoning_parser: str | None
    tool: tuple[str, dict[str, Any]] | None  # the parsed call (name, arguments), if any

    def split(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, content) as the configured reasoning parser returns them."""
        if self.reasoning_parser == APPEND_THINK:
            return None, "<think>" + text
        if self.reasoning_parser:
            head, sep, tail = text.partition("</think>")
            return (head, tail) if sep else (text, None)
        return None, text


def compact_json(payload: Any) -> str:
    """JSON as vLLM's pydantic models serialise it (no spaces)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


# --------------------------------------------------------------------------- HTTP


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        super().__init__(address, Handler, bind_and_activate=False)
        self.engine = engine


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Small streamed writes must leave at once, as with uvicorn (TCP_NODELAY).
    disable_nagle_algorithm = True

    @property
    def engine(self) -> Engine:
        return cast(StandinServer, self.server).engine

    def version_string(self) -> str:
        return "uvicorn"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            phrase = HTTPStatus(int(code)).phrase
        except ValueError:
            phrase = ""
        host, port = self.client_address[:2]
        uvicorn_log(f'{host}:{port} - "{self.requestline}" {code} {phrase}')

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ---- responses

    def send_body(self, status: int, body: bytes, content_type: str | None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: Any) -> None:
        body = compact_json(payload).encode()
        self.send_body(status, body, "application/json")

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def send_event(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else compact_json(payload)
        self.send_chunk(f"data: {text}\n\n".encode())

    def end_stream(
        self, request: dict[str, Any], head: dict[str, Any], counts: tuple[int, int]
    ) -> None:
        options = request.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            self.send_event({**head, "choices": [], "usage": usage(*counts)})
        self.send_event("[DONE]")
        self.send_chunk(b"")

    # ---- routing

    def do_GET(self) -> None:
        self.route("GET", b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.route("POST", self.rfile.read(length) if length > 0 else b"")

    def route(self, method: str, body: bytes) -> None:
        path = urlsplit(self.path).path
        keys = self.engine.api_keys
        auth = self.headers.get("authorization", "")
        if keys and path.startswith("/v1") and auth not in {f"Bearer {k}" for k in keys}:
            self.send_json(401, {"error": "Unauthorized"})
            return
        handlers: dict[tuple[str, str], Callable[[], None]] = {
            ("GET", "/health"): self.health,
            ("GET", "/ping"): self.health,
            ("POST", "/ping"): self.health,
            ("GET", "/version"): lambda: self.send_json(200, {"version": VERSION}),
            ("GET", "/metrics"): self.metrics,
            ("GET", "/v1/models"): lambda: self.send_json(200, self.models()),
            ("POST", "/v1/chat/completions"): lambda: self.generation(body, self.chat),
            ("POST", "/v1/completions"): lambda: self.generation(body, self.completion),
        }
        handler = handlers.get((method, path))
        if handler is not None:
            handler()
        elif any(p == path for _, p in handlers):
            self.send_json(405, {"detail": "Method Not Allowed"})
        else:
            self.send_json(404, {"detail": "Not Found"})

    def health(self) -> None:
        self.send_body(200 if self.engine.healthy else 503, b"", None)

    def metrics(self) -> None:
        engine = self.engine
        with engine.lock:
            text = engine.metrics.render(engine.served_names[0], engine.kv_capacity)
        self.send_body(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        permission = {
            "id": f"modelperm-{uuid.uuid4().hex}",
            "object": "model_permission",
            "created": created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        cards = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.engine.args.model_tag,
                "parent": None,
                "max_model_len": self.engine.args.max_model_len,
                "permission": [permission],
            }
            for name in self.engine.served_names
        ]
        return {"object": "list", "data": cards}

    # ---- generation endpoints

    def generation(self, body: bytes, endpoint: Callable[[dict[str, Any]], None]) -> None:
        try:
            try:
                request = json.loads(body)
            except json.JSONDecodeError as exc:
                detail = {"type": "json_invalid", "loc": ["body", exc.pos], "msg": exc.msg}
                raise RequestError(400, f"JSON decode error: {detail}") from None
            except UnicodeDecodeError as exc:
                raise RequestError(400, f"JSON decode error: {exc}") from None
            if not isinstance(request, dict):
                raise RequestError(400, "Input should be a valid dictionary or object")
            model = request.get("model")
            if model is not None and model not in self.engine.served_names:
                raise RequestError(
                    404, f"The model `{model}` does not exist.", "NotFoundError", "model"
                )
            if not self.engine.healthy:
                raise RequestError(
                    500,
                    "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                    "InternalServerError",
                )
            endpoint(request)
        except RequestError as exc:
            self.send_json(exc.status, exc.payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def max_tokens(self, request: dict[str, Any], prompt_len: int, default: int | None) -> int:
        max_len: int = self.engine.args.max_model_len
        if prompt_len >= max_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {max_len} tokens. "
                f"However, your request has {prompt_len} input tokens. Please "
                "reduce the length of the input messages.",
            )
        requested = request.get("max_completion_tokens") or request.get("max_tokens")
        if requested is None:
            return default if default is not None else max_len - prompt_len
        if not isinstance(requested, int) or requested < 1:
            raise RequestError(400, f"max_tokens must be at least 1, got {requested}.")
        if requested > max_len - prompt_len:
            raise RequestError(
                400,
                "'max_tokens' or 'max_completion_tokens' is too large: "
                f"{requested}. This model's maximum context length is {max_len} "
                f"tokens and your request has {prompt_len} input tokens "
                f"({requested} > {max_len} - {prompt_len}).",
            )
        return requested

    def chat(self, request: dict[str, Any]) -> None:
        args = self.engine.args
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "Field required: messages (a non-empty list)")
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise RequestError(400, "Field required: messages[].role")
        tools = [t for t in request.get("tools") or [] if isinstance(t, dict)]
        choice = request.get("tool_choice", "auto" if tools else "none")
        users = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        user_text = users[-1] if users else ""
        prompt: list[str | int] = []
        for message in messages:
            prompt += [f"]~b]{message['role']}"]
            prompt += self.engine.tokenize(text_of(message.get("content")))
            prompt += ["[e~[", "\n"]
        if tools:
            prompt += self.engine.tokenize(json.dumps(tools))
        prompt += GENERATION_PROMPT

        tool: dict[str, Any] | None = None
        if tools and choice == "auto":
            if not (args.enable_auto_tool_choice and args.tool_call_parser):
                raise RequestError(
                    400,
                    '"auto" tool choice requires --enable-auto-tool-choice '
                    "and --tool-call-parser to be set",
                )
            tool = tools[0]
        elif tools and choice == "required":
            tool = tools[0]
        elif isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            names = [(t.get("function") or {}).get("name") for t in tools]
            if wanted not in names:
                raise RequestError(400, f"Tool '{wanted}' has not been passed in `tools`.")
            tool = tools[names.index(wanted)]

        reasoning, answer = reasoning_and_answer(user_text)
        parsed: tuple[str, dict[str, Any]] | None = None
        if tool is not None:
            answer, name, arguments = tool_call_text(tool, user_text)
            # only the minimax_m2 parser understands the model's XML; forced choices are parsed
            if args.tool_call_parser == "minimax_m2" or choice != "auto":
                parsed = (name, arguments)
        raw = f"{reasoning}\n</think>\n\n{answer}"
        pieces, finish = plan_pieces(raw, request, self.max_tokens(request, len(prompt), None))
        if TOOL_END not in pieces:
            parsed = None  # cut off by max_tokens: the parser finds no complete call
        plan = Plan(pieces, finish, args.reasoning_parser, parsed)
        if request.get("stream"):
            self.stream_chat(request, prompt, plan)
        else:
            self.complete_chat(request, prompt, plan)

    def complete_chat(self, request: dict[str, Any], prompt: list[str | int], plan: Plan) -> None:
        for _ in self.engine.generate(prompt, plan.pieces):
            pass
        self.engine.finished(plan.finish_reason)
        text = "".join(plan.pieces)
        tool_calls: list[dict[str, Any]] = []
        finish = plan.finish_reason
        if plan.tool is not None:
            text = text[: text.index(TOOL_START)]
            name, arguments = plan.tool
            function = {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}
            tool_calls = [
                {
                    "id": f"chatcmpl-tool-{uuid.uuid4().hex}",
                    "type": "function",
                    "function": function,
                }
            ]
            finish = "tool_calls"
        reasoning, content = plan.split(text)
        message = {
            "role": "assistant",
            "content": content,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": tool_calls,
            "reasoning": reasoning,
            "reasoning_content": reasoning,
        }
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
            "token_ids": None,
        }
        self.send_json(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model_name(request),
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": None,
                "usage": usage(len(prompt), len(plan.pieces)),
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "kv_transfer_params": None,
            },
        )

    def stream_chat(self, request: dict[str, Any], prompt: list[str | int], plan: Plan) -> None:
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model_name(request),
        }
        with_ids = bool(request.get("return_token_ids"))

        def chunk(delta: dict[str, Any], finish: str | None = None, piece: str = "") -> None:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            if finish:
                choice["stop_reason"] = None
            if with_ids and piece:
                choice["token_ids"] = [self.engine.token_id(piece)]
            self.send_event({**head, "choices": [choice]})

        in_reasoning = plan.reasoning_parser not in (None, APPEND_THINK)
        in_tool = False
        finish = "tool_calls" if plan.tool is not None else plan.finish_reason
        self.start_stream()
        generation = self.engine.generate(prompt, plan.pieces)
        try:
            for index, piece in enumerate(generation):
                last = index == len(plan.pieces) - 1
                if index == 0:  # vLLM sends the role once the first token exists
                    chunk({"role": "assistant", "content": ""})
                text = (
                    "<think>" + piece
                    if index == 0 and plan.reasoning_parser == APPEND_THINK
                    else piece
                )
                delta: dict[str, Any] = {"content": text}
                if in_reasoning:
                    delta = {} if piece == "</think>" else {"reasoning": text}
                    in_reasoning = piece != "</think>"
                elif plan.tool is not None and (in_tool or piece == TOOL_START):
                    in_tool, delta = True, {}
                    if piece == TOOL_END:
                        name, arguments = plan.tool
                        function = {
                            "name": name,
                            "arguments": json.dumps(arguments, ensure_ascii=False),
                        }
                        call_id = f"call_{uuid.uuid4().hex[:24]}"
                        delta = {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": call_id,
                                    "type": "function",
                                    "function": function,
                                }
                            ]
                        }
                if delta or last:
                    chunk(delta or {"content": ""}, finish if last else None, piece)
        finally:
            generation.close()
        self.engine.finished(plan.finish_reason)
        self.end_stream(request, head, (len(prompt), len(plan.pieces)))

    def completion(self, request: dict[str, Any]) -> None:
        text_prompt = request.get("prompt")
        if isinstance(text_prompt, list):
            text_prompt = "".join(str(p) for p in text_prompt)
        if not isinstance(text_prompt, str):
            raise RequestError(400, "Field required: prompt")
        prompt = self.engine.tokenize(text_prompt)
        max_tokens = self.max_tokens(request, len(prompt), 16)  # the OpenAI default
        pieces, finish = plan_pieces(
            " " + reasoning_and_answer(text_prompt)[1], request, max_tokens
        )
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name(request),
        }
        generation = self.engine.generate(prompt, pieces)
        if not request.get("stream"):
            text = "".join(generation)
            self.engine.finished(finish)
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            self.send_json(
                200, {**head, "choices": [choice], "usage": usage(len(prompt), len(pieces))}
            )
            return
        self.start_stream()
        try:
            for index, piece in enumerate(generation):
                done = finish if index == len(pieces) - 1 else None
                choice = {
                    "index": 0,
                    "text": piece,
                    "logprobs": None,
                    "finish_reason": done,
                    "stop_reason": None,
                }
                self.send_event({**head, "choices": [choice]})
        finally:
            generation.close()
        self.engine.finished(finish)
        self.end_stream(request, head, (len(prompt), len(pieces)))

    def model_name(self, request: dict[str, Any]) -> str:
        return str(request.get("model") or self.engine.served_names[0])


# --------------------------------------------------------------------------- start-up


def kv_cache(args: argparse.Namespace, config: dict[str, Any]) -> tuple[float, int]:
    """(KV cache GiB, tokens) the real checkpoint would leave at this memory utilisation."""
    kv_gib = max(0.5, args.gpu_memory_utilization * GPU_TOTAL_GIB - WEIGHTS_AND_OVERHEAD_GIB)
    dtype_bytes = 1 if str(args.kv_cache_dtype).startswith("fp8") else 2
    layers = int(config.get("num_hidden_layers", 62))
    per_token = 2 * dtype_bytes * layers * int(config.get("num_key_value_heads", 8))
    per_token *= int(config.get("head_dim", 128))
    return kv_gib, int(kv_gib * 1024**3 // per_token)


def out_of_memory(util: float) -> NoReturn:
    free = max(0.1, (1 - util) * GPU_TOTAL_GIB - 7.5)
    log("ERROR", "core.py:866", "EngineCore failed to start.", "EngineCore_DP0")
    die(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        f"total capacity of {GPU_TOTAL_GIB:.2f} GiB of which {free:.2f} GiB is free. Including "
        f"non-PyTorch memory, this process has {GPU_TOTAL_GIB - free:.2f} GiB memory in use. Of "
        "the allocated memory 104.12 GiB is allocated by PyTorch, and 1.21 GiB is reserved by "
        "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
        "documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n"
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {}",
        ["v1/engine/core.py", "v1/worker/gpu_worker.py", "v1/worker/gpu_model_runner.py"],
    )


def schedule_crash(knobs: Knobs) -> None:
    """crash_after_start:N: exit 1 after N seconds, once per marker file."""
    marker = knobs.state_dir / CRASH_MARKER
    if knobs.crash_after is None:
        return
    if marker.exists():
        log("INFO", "standin", f"crash marker {marker} present: not crashing this time")
        return

    def crash() -> None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"crashed at {time.time():.0f}\n")
        log("ERROR", "core.py:938", "EngineCore encountered a fatal error.", "EngineCore_DP0")
        log("ERROR", "async_llm.py:480", "AsyncLLM output_handler failed.")
        print(
            "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
            "See stack trace (above) for the root cause.",
            file=sys.stderr,
            flush=True,
        )
        uvicorn_log("Shutting down")
        os._exit(1)

    timer = threading.Timer(knobs.crash_after, crash)
    timer.daemon = True
    timer.start()


def on_signal(signum: int, frame: FrameType | None) -> None:
    uvicorn_log("Shutting down")
    uvicorn_log("Application shutdown complete.")
    uvicorn_log(f"Finished server process [{os.getpid()}]")
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("VLLM_API_KEY") and not args.api_key:
        args.api_key = [os.environ["VLLM_API_KEY"]]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    knobs = load_knobs(os.environ, args.model_tag)
    log("INFO", "api_server.py:1351", f"vLLM API server version {VERSION}")
    defaults = vars(build_parser().parse_args(["serve", args.model_tag]))
    changed = {k: v for k, v in vars(args).items() if v != defaults[k] or k == "model_tag"}
    if "api_key" in changed:
        changed["api_key"] = ["***"]
    log("INFO", "utils.py:328", f"non-default args: {changed}")
    validate_args(args)
    config, shards = validate_model_dir(args.model_tag)
    if args.max_model_len is None:
        args.max_model_len = int(config.get("max_position_embeddings", 2048))
    architecture = (config.get("architectures") or ["MiniMaxM2ForCausalLM"])[0]
    log("INFO", "model.py:547", f"Resolved architecture: {architecture}")
    log("INFO", "model.py:1510", f"Using max model len {args.max_model_len}")
    host = args.host or "0.0.0.0"
    kv_gib, kv_tokens = kv_cache(args, config)
    engine = Engine(args, knobs, kv_tokens)
    server = StandinServer((host, args.port), engine)
    server.server_bind()  # as vLLM: the port is bound early but listens only once loaded

    core = "EngineCore_DP0"
    log(
        "INFO",
        "core.py:97",
        f"Initializing a V1 LLM engine (v{VERSION}) with config: "
        f"model='{args.model_tag}', max_seq_len={args.max_model_len}, "
        f"kv_cache_dtype={args.kv_cache_dtype}",
        core,
    )
    log("INFO", "gpu_model_runner.py:3461", f"Starting to load model {args.model_tag}...", core)
    started = time.monotonic()
    for done in range(1, len(shards) + 1):
        time.sleep(knobs.load_seconds / len(shards))
        print(
            f"Loading safetensors checkpoint shards: {done * 100 // len(shards):3d}% Completed "
            f"| {done}/{len(shards)}",
            flush=True,
        )
    took = time.monotonic() - started
    log("INFO", "default_loader.py:314", f"Loading weights took {took:.2f} seconds", core)
    if knobs.fault == "oom_at_start" or args.gpu_memory_utilization > knobs.oom_above:
        out_of_memory(args.gpu_memory_utilization)
    log(
        "INFO",
        "gpu_model_runner.py:3560",
        f"Model loading took 93.47 GiB memory and {took:.2f} seconds",
        core,
    )
    log("INFO", "gpu_worker.py:298", f"Available KV cache memory: {kv_gib:.2f} GiB", core)
    log("INFO", "kv_cache_utils.py:1087", f"GPU KV cache size: {kv_tokens:,} tokens", core)
    log(
        "INFO",
        "kv_cache_utils.py:1091",
        f"Maximum concurrency for {args.max_model_len:,} "
        f"tokens per request: {kv_tokens / args.max_model_len:.2f}x",
        core,
    )
    log("INFO", "api_server.py:1750", f"Starting vLLM API server 0 on http://{host}:{args.port}")
    server.server_activate()
    uvicorn_log(f"Started server process [{os.getpid()}]")
    uvicorn_log("Waiting for application startup.")
    uvicorn_log("Application startup complete.")
    schedule_crash(knobs)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
