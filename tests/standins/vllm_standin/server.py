#!/usr/bin/env python3
"""Stand-in for the vLLM server in ``avarok/dgx-vllm-nvfp4-kernel:v23``, used only by the
project's test lab.

It imitates vLLM 0.16's OpenAI-compatible server as seen from outside (CLI, start-up logs,
exit statuses, refused connections while "loading", endpoints and their auth scope, JSON
shapes, the MiniMax-M2 reasoning and tool-call parsers, Prometheus metrics, throughput) without
a GPU or model weights: at every point the roles depend on it must refuse what vLLM 0.16
refuses. Python 3.11 standard library only; ``tokenizers`` is used when importable and
MODEL/tokenizer.json exists.

Sources. "vLLM" below means the vllm==0.16.0 wheel from PyPI (commit g89a77b108); paths are
package paths in it. The avarok image builds 0.16.0rc2.dev236 (commit 3b30e615), weeks from
0.16.0; ../shared/reference/field/vllm-fidelity.md checked that each fact below held there.

CLI. Every ``vllm serve`` option of 0.16 is accepted (SERVE_OPTIONS: FrontendArgs in
entrypoints/openai/cli_args.py, EngineArgs/AsyncEngineArgs.add_cli_args in engine/arg_utils.py,
typed as get_kwargs() types them), in the forms FlexibleArgumentParser accepts
(utils/argparse_utils.py): underscores for dashes, ``--x=v``, ``--model X``, ``-O3``, the dot
form of JSON options (``--override-generation-config.min_p=0.01``), unambiguous prefixes.
Anything else -- an unknown option, a value of the wrong type, a missing value -- is argparse's
error, status 2. Given options are logged as vLLM's ``non-default args: {...}``
(entrypoints/utils.py log_non_default_args: given values that differ from the defaults;
``model`` and ``model_tag``; an ``--api-key`` in clear, as vLLM logs it). The stand-in acts on:
--host, --port, --max-model-len, --max-num-seqs, --gpu-memory-utilization, --kv-cache-dtype,
--served-model-name, --api-key (else VLLM_API_KEY), --enable-auto-tool-choice,
--tool-call-parser, --reasoning-parser, --[no-]enable-prefix-caching,
--disable-access-log-for-endpoints (those paths, query stripped, leave no access line:
logging_utils/access_log_filter.py), --disable-uvicorn-access-log and --uvicorn-log-level
(warning and above: no access lines), --generation-config, --override-generation-config and
--enable-log-requests (below); the others are recorded only. Checks, in vLLM's order:
--enable-auto-tool-choice without --tool-call-parser, --enable-log-outputs without
--enable-log-requests (TypeError, cli_args.py validate_parsed_serve_args, before any log); an
unknown reasoning parser, or tool parser with --enable-auto-tool-choice (KeyError,
api_server.py validate_api_server_args, after the non-default args); then the model directory.
Uncaught exceptions end the process with status 1.

Knobs, read once at start (environment)::

    VLLM_STANDIN_LOAD_SECONDS   simulated model load (default 5); the port refuses connections
    VLLM_STANDIN_PREFILL_TPS    prefill rate at a 512-token prompt (default 920, the card's);
                                other sizes follow the card's curve (prefill_rate)
    VLLM_STANDIN_DECODE_TPS     generated tokens per second (default 28)
    VLLM_STANDIN_OOM_ABOVE      the fraction of GPU memory free at start (default 0.93): a
                                --gpu-memory-utilization above it fails vLLM's free-memory check
    VLLM_STANDIN_FAULT          a fault, below (default none)
    VLLM_STANDIN_STATE_DIR      where the crash-once markers live (default /tmp)
    VLLM_STANDIN_CONTROL_FILE   JSON object overriding fault, load_seconds, prefill_tps,
                                decode_tps, oom_above and state_dir (default
                                /models-control/standin.json; absent: none)

A second control file, ``MODEL/.vllm-standin.json`` (same keys), is read after the first and
wins: a deployment mounts only the model directory, so this is how the lab injects faults into
a container it does not start itself. The real image ignores the file. vLLM's own environment
is read too: VLLM_API_KEY, VLLM_KEEP_ALIVE_ON_ENGINE_DEATH, VLLM_NO_USAGE_STATS,
VLLM_DO_NOT_TRACK / DO_NOT_TRACK, VLLM_CONFIG_ROOT, VLLM_DISABLE_LOG_LOGO.

Faults (a ``:N`` is seconds after the server started serving; each fault that happens "once"
creates its marker in the state directory and does not happen while the marker exists, so a
restarted server stays up; with ``--ipc=host`` a state_dir under /dev/shm is the host's and
outlives the container, so a new container started by systemd stays up too):

- ``engine_death_after_start:N`` -- vLLM's real engine death (marker
  ``vllm-standin-engine-died``): the engine core logs "EngineCore encountered a fatal error."
  with its cause (v1/engine/core.py), "Engine core proc EngineCore_DP0 died unexpectedly,
  shutting down client." (v1/engine/core_client.py), "AsyncLLM output_handler failed." and
  ``vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace
  (above) for the root cause.`` (v1/engine/async_llm.py). From then on /health and /ping answer
  503 (serve/instrumentator/health.py) and generation 500 with an empty body
  (entrypoints/launcher.py). The watchdog (launcher.py, every 5 s), or at once a request that
  meets the dead engine, stops uvicorn ("Shutting down", "Waiting for application shutdown.",
  "Application shutdown complete.", "Finished server process [PID]"); serve_http returns and
  the process **exits 0** (vllm#48966). With VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1 (envs.py) it
  stays up answering 503/500.
- ``unready_after_start:N`` -- the same death, but the server never stops: an engine wedged
  under KEEP_ALIVE or a build whose watchdog does not fire (vllm#39863); marker
  ``vllm-standin-unready``.
- ``unhealthy`` -- a dead engine from the start under KEEP_ALIVE: /health 503, generation 500
  with an empty body, never stops; no marker.
- ``crash_after_start:N`` -- the process dies with status 1 after logging the engine's death
  (not what 0.16 does on an engine death: a process killed some other way); marker
  ``vllm-standin-crashed``.
- ``oom_at_start`` -- torch's CUDA OOM after the load, in the engine core; status 1.
- ``startup_memory:free|cache_blocks|kv_cache`` -- vLLM 0.16's own start-up memory errors, in
  the engine core ("EngineCore failed to start.", v1/engine/core.py) then the API server
  (``RuntimeError: Engine core initialization failed. See root cause above. Failed core
  proc(s): {'EngineCore_DP0': 1}``, v1/engine/utils.py), status 1: ``free`` before the load,
  "ValueError: Free memory on device cuda:0 (F/T GiB) on startup is less than desired GPU
  memory utilization (U, R GiB). Decrease GPU memory utilization or reduce GPU memory used by
  other processes." (v1/worker/utils.py request_memory; on a Spark free memory is the
  system's available memory, utils/mem_utils.py); ``cache_blocks`` after the load, "ValueError:
  No available memory for the cache blocks. Try increasing `gpu_memory_utilization` ..." and
  ``kv_cache`` after the load, "ValueError: To serve at least one request with the models's max
  seq len (L), (X GiB KV cache is needed, which is larger than the available KV cache memory
  (Y GiB). Based on the available memory, the estimated maximum model length is M. Try
  increasing `gpu_memory_utilization` or decreasing `max_model_len` ..."
  (v1/core/kv_cache_utils.py _check_enough_kv_cache_memory). A --gpu-memory-utilization above
  the OOM threshold gives the ``free`` error (free = the threshold), as 0.16 does on a Spark.

Stopping: SIGTERM (or SIGINT) while loading raises KeyboardInterrupt("terminated")
(api_server.py setup_server); uncaught, CPython exits through SIGINT, which the container's
PID 1 ignores (the avarok image has no init), so the status is **130**. While serving, a stop
logs "Shutting down FastAPI HTTP server." (launcher.py) and uvicorn's shutdown, status 0.

Routes (and the API key's scope: only paths starting with /v1 need it, scheme "bearer" in any
case, else 401 {"error":"Unauthorized"}: entrypoints/openai/server_utils.py
AuthenticationMiddleware; vllm#58144): /health, /ping (GET, POST), /load, /version, /metrics,
/v1/models, /v1/chat/completions, /v1/completions, and open even with a key: POST /invocations
(a chat or completion request by its body, application/json only: sagemaker/api_router.py),
POST /tokenize and /detokenize (serve/tokenize), POST /inference/v1/generate (token ids in
and out, serve/disagg). Unknown paths 404 {"detail":"Not Found"}.

Default sampling (config/model.py get_diff_sampling_param): the model's generation_config.json
(``--generation-config auto``; none with ``vllm``), updated by ``--override-generation-config``,
reduced to repetition_penalty, temperature, top_k, top_p, min_p and max_new_tokens (as
max_tokens). When not empty, start-up logs "Default sampling parameters have been overridden by
the model's Hugging Face generation config ..." (WARNING) and "Using default chat sampling
params from model: {...}" (serving_chat.py; and completion). A request takes each value it does
not set from them (chat_completion/protocol.py to_sampling_params), else from SamplingParams'
defaults; with --enable-log-requests every chat and completion request logs "Received request
ID: params: SamplingParams(...)" with what it got (entrypoints/logger.py; a subset of the fields,
same names), which is how a test sees the defaults applied.

Output shapes: the chat message has ``reasoning`` and no ``reasoning_content`` (removed by vLLM
PR #33402 before 0.16; chat_completion/protocol.py ChatMessage); with minimax_m2_append_think
the reasoning is in ``content`` after "<think>" (reasoning/minimax_m2_reasoning_parser.py).
Streamed minimax_m2 tool calls arrive as the parser sends them (ToolCallStream).

Usage stats (usage/usage_lib.py), where a host can see them: unless VLLM_NO_USAGE_STATS=1,
VLLM_DO_NOT_TRACK=1 or DO_NOT_TRACK=1, or $VLLM_CONFIG_ROOT/do_not_track exists, a JSON line is
appended to $VLLM_CONFIG_ROOT/usage_stats.json (default ~/.config/vllm) at start-up; vLLM
also posts it to https://stats.vllm.ai, which the stand-in does not.

Prompt tokens: with ``tokenizers`` and MODEL/tokenizer.json, the tokenizer's count for each
message's content; otherwise an approximation counting words and punctuation marks separately
(regex ``\\w+|[^\\w\\s]``). Either way each message adds 3 tokens and the generation prompt 4
(the chat template's markers), and ``tools`` add their JSON. Generated tokens are words with
their leading spaces (newlines and ``</think>`` are tokens of their own). The first token comes
after prefill (uncached prompt tokens / prefill_rate(uncached), at most 120 s), each further
one after 1 / decode rate. With prefix caching (vLLM's default) whole 16-token blocks seen
before are not prefilled again. The stand-in does not derive memory failures from its own
memory model (a lab host's settings would then fail where the Spark's do not): only the faults
and the OOM threshold make them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import signal
import socket
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
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"  # vllm serve without a model
CRASH_MARKER = "vllm-standin-crashed"
MODEL_CONTROL_FILE = ".vllm-standin.json"
GPU_TOTAL_GIB = 119.7  # what torch reports for a GB10
WEIGHTS_AND_OVERHEAD_GIB = 96.0  # the 99 GB checkpoint plus activations and CUDA graphs
BLOCK_SIZE = 16
MAX_PREFILL_SECONDS = 120.0
GENERATION_PROMPT = ["]~b]ai", "\n", "<think>", "\n"]
REASONING_PARSER_NAMES = (  # vllm/reasoning/__init__.py, in registration order
    "deepseek_r1 deepseek_v3 ernie45 glm45 openai_gptoss granite holo2 hunyuan_a13b kimi_k2 "
    "minimax_m2 minimax_m2_append_think mistral olmo3 qwen3 seed_oss step3 step3p5"
)
TOOL_PARSER_NAMES = (  # vllm/tool_parsers/__init__.py, in registration order
    "deepseek_v3 deepseek_v31 deepseek_v32 ernie45 glm45 glm47 granite hermes hunyuan_a13b "
    "internlm jamba kimi_k2 llama3_json llama4_json llama4_pythonic longcat minimax_m2 minimax "
    "mistral olmo3 openai phi4_mini_json pythonic qwen3_coder qwen3_xml seed_oss step3 step3p5 "
    "xlam gigachat3 functiongemma"
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


def traceback(exception_line: str, frames: list[str], proc: str | None = None) -> None:
    """A Python-style traceback ending in ``exception_line`` on stderr; with ``proc``, each
    line prefixed as vLLM's decorate_logs prefixes a process's output."""
    lines = ["Traceback (most recent call last):"]
    lines += [f'  File "/opt/venv/lib/python3.12/site-packages/vllm/{f}"' for f in frames]
    lines += exception_line.split("\n")
    prefix = f"({proc} pid={os.getpid()}) " if proc else ""
    print("\n".join(prefix + line for line in lines), file=sys.stderr, flush=True)


DECORATED: list[str] = []  # "APIServer" once run_server has called decorate_logs


def die(exception_line: str, frames: list[str], status: int = 1) -> NoReturn:
    """A traceback ending in ``exception_line``, then exit (1: an uncaught exception)."""
    traceback(exception_line, frames, DECORATED[0] if DECORATED else None)
    sys.exit(status)


# --------------------------------------------------------------------------- knobs


FAULTS = {  # name: whether it takes a number of seconds
    "none": False,
    "oom_at_start": False,
    "crash_after_start": True,
    "engine_death_after_start": True,
    "unready_after_start": True,
    "unhealthy": False,
    "startup_memory": False,  # takes free | cache_blocks | kv_cache instead
}
STARTUP_MEMORY_KINDS = ("free", "cache_blocks", "kv_cache")
MARKERS = {  # fault: its crash-once marker in the state directory
    "crash_after_start": CRASH_MARKER,
    "engine_death_after_start": "vllm-standin-engine-died",
    "unready_after_start": "vllm-standin-unready",
}


@dataclass(frozen=True)
class Knobs:
    """Simulation settings: the environment, overridden by the control file."""

    fault: str
    after: float | None  # the N of crash_after_start:N, engine_death_after_start:N, ...
    memory: str | None  # the kind of startup_memory:KIND
    load_seconds: float
    prefill_tps: float
    decode_tps: float
    oom_above: float
    state_dir: Path

    @property
    def crash_after(self) -> float | None:
        return self.after if self.fault == "crash_after_start" else None


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
    spec = str(values["fault"]).strip() or "none"
    fault, _, argument = spec.partition(":")
    if fault not in FAULTS:
        die(f"ValueError: unknown VLLM_STANDIN_FAULT {spec!r}", [])
    after: float | None = None
    memory: str | None = None
    try:
        if FAULTS[fault]:
            after = float(argument)
        elif fault == "startup_memory":
            if argument not in STARTUP_MEMORY_KINDS:
                raise ValueError(f"startup_memory takes one of {', '.join(STARTUP_MEMORY_KINDS)}")
            memory = argument
        elif argument:
            raise ValueError(f"{fault} takes no argument")
        knobs = Knobs(
            fault=fault,
            after=after,
            memory=memory,
            load_seconds=float(values["load_seconds"]),
            prefill_tps=float(values["prefill_tps"]),
            decode_tps=float(values["decode_tps"]),
            oom_above=float(values["oom_above"]),
            state_dir=Path(str(values["state_dir"])),
        )
    except ValueError as exc:
        die(f"ValueError: stand-in settings: fault {spec!r}: {exc}", [])
    if min(knobs.prefill_tps, knobs.decode_tps) <= 0:
        die("ValueError: stand-in prefill_tps and decode_tps must be positive", [])
    return knobs


# --------------------------------------------------------------------------- CLI


# vLLM 0.16's `vllm serve` options, by the shape argparse gives them, read from the 0.16.0 wheel:
# FrontendArgs (entrypoints/openai/cli_args.py), EngineArgs.add_cli_args and
# AsyncEngineArgs.add_cli_args (engine/arg_utils.py), whose types come from the config dataclasses
# through get_kwargs(): bool -> --x/--no-x (BooleanOptionalAction), a config dataclass or a dict ->
# JSON (which also takes the dot form --x.key=value), list -> one or more values, int/float ->
# number, Literal -> choices, anything else -> a string. Short aliases follow "|".
SERVE_OPTIONS = """
str:
    --runner --convert --tokenizer --tokenizer-mode --hf-config-path --allowed-local-media-path
    --revision --code-revision --tokenizer-revision --quantization|-q --config-format
    --logits-processor-pattern --generation-config --model-impl --override-attention-dtype
    --io-processor-plugin --load-format --download-dir --safetensors-load-strategy
    --attention-backend --reasoning-parser --reasoning-parser-plugin
    --distributed-executor-backend --master-addr --data-parallel-address|-dpa
    --data-parallel-backend|-dpb --worker-cls --worker-extension-cls --mm-encoder-attn-backend
    --show-hidden-metrics-for-version --otlp-traces-endpoint --scheduler-cls
    --optimization-level --config --host --uds --disable-access-log-for-endpoints
    --chat-template --response-role --ssl-keyfile --ssl-certfile --ssl-ca-certs --ssl-ciphers
    --root-path --tool-call-parser --tool-parser-plugin --tool-server --log-config-file
bool:
    --trust-remote-code --allow-deprecated-quantization --enforce-eager
    --enable-return-routed-experts --disable-sliding-window --disable-cascade-attn
    --skip-tokenizer-init --enable-prompt-embeds --enable-sleep-mode --use-tqdm-on-load
    --data-parallel-hybrid-lb|-dph --data-parallel-external-lb|-dpe --enable-expert-parallel|-ep
    --enable-dbo --disable-nccl-for-dp-synchronization --enable-eplb --ray-workers-use-nsight
    --disable-custom-all-reduce --enable-prefix-caching --calculate-kv-scales
    --kv-sharing-fast-prefill --enable-mm-embeds --mm-encoder-only --interleave-mm-strings
    --skip-mm-profiling --enable-lora --enable-tower-connector-lora --fully-sharded-loras
    --specialize-active-lora --kv-cache-metrics --cudagraph-metrics
    --enable-layerwise-nvtx-tracing --enable-mfu-metrics --enable-logging-iteration-details
    --enable-chunked-prefill --disable-chunked-mm-input --disable-hybrid-kv-cache-manager
    --async-scheduling --enable-flashinfer-autotune --enable-log-requests --disable-log-requests
    --disable-uvicorn-access-log --allow-credentials --trust-request-chat-template
    --enable-ssl-refresh --return-tokens-as-token-ids --disable-frontend-multiprocessing
    --enable-request-id-headers --enable-auto-tool-choice --exclude-tools-when-tool-choice-none
    --disable-fastapi-docs --enable-prompt-tokens-details --enable-server-load-tracking
    --enable-force-include-usage --enable-tokenizer-info-endpoint --enable-log-outputs
    --enable-log-deltas --log-error-stack --tokens-only --enable-offline-docs
int:
    --seed --max-logprobs --pipeline-parallel-size|-pp --master-port --nnodes|-n --node-rank|-r
    --tensor-parallel-size|-tp --decode-context-parallel-size|-dcp
    --dcp-kv-cache-interleave-size --cp-kv-cache-interleave-size
    --prefill-context-parallel-size|-pcp --data-parallel-size|-dp --data-parallel-rank|-dpn
    --data-parallel-start-rank|-dpr --data-parallel-size-local|-dpl
    --data-parallel-rpc-port|-dpp --ubatch-size --dbo-decode-token-threshold
    --dbo-prefill-token-threshold --max-parallel-loading-workers --num-gpu-blocks-override
    --mamba-block-size --mm-shm-cache-max-object-size-mb --max-loras --max-cpu-loras
    --max-num-seqs --max-num-partial-prefills --max-long-partial-prefills
    --long-prefill-token-threshold --stream-interval --max-cudagraph-capture-size
    --api-server-count|-asc --port --ssl-cert-reqs --max-log-len --h11-max-incomplete-event-size
    --h11-max-header-count
human_int:
    --kv-cache-memory-bytes --max-num-batched-tokens
human_int_or_auto:
    --max-model-len
float:
    --gpu-memory-utilization --swap-space --cpu-offload-gb --kv-offloading-size
    --mm-processor-cache-gb --video-pruning-rate --kv-cache-metrics-sample
list:
    --allowed-media-domains --served-model-name --logits-processors --ignore-patterns
    --collect-detailed-traces --api-key --lora-modules
int_list:
    --cudagraph-capture-sizes
append:
    --middleware
store_true:
    --disable-log-stats --aggregate-engine-logging --headless
optional_value:
    --hf-token
json_or_str:
    --hf-overrides --pt-load-map-location --additional-config
json:
    --pooler-config --override-generation-config --model-loader-extra-config --eplb-config
    --limit-mm-per-prompt --media-io-kwargs --mm-processor-kwargs --default-mm-loras
    --speculative-config --kv-transfer-config --kv-events-config --ec-transfer-config
    --compilation-config|-cc --attention-config|-ac --kernel-config --structured-outputs-config
    --profiler-config --weight-transfer-config --allowed-origins --allowed-methods
    --allowed-headers --default-chat-template-kwargs
choices --dtype auto bfloat16 float float16 float32 half
choices --logprobs-mode processed_logits processed_logprobs raw_logits raw_logprobs
choices --all2all-backend allgather_reducescatter deepep_high_throughput deepep_low_latency
    flashinfer_all2allv mori naive pplx
choices --expert-placement-strategy linear round_robin
int_choices --block-size 1 8 16 32 64 128 256
choices --kv-cache-dtype auto bfloat16 fp8 fp8_ds_mla fp8_e4m3 fp8_e5m2 fp8_inc
choices --prefix-caching-hash-algo sha256 sha256_cbor xxhash xxhash_cbor
choices --mamba-cache-dtype auto float16 float32
choices --mamba-ssm-cache-dtype auto float16 float32
choices --mamba-cache-mode align all none
choices --kv-offloading-backend lmcache native
choices --mm-processor-cache-type lru shm
choices --mm-encoder-tp-mode data weights
int_choices --max-lora-rank 1 8 16 32 64 128 256 320 512
choices --lora-dtype auto bfloat16 float16
choices --scheduling-policy fcfs priority
choices --uvicorn-log-level critical debug error info trace warning
choices --chat-template-content-format auto openai string
"""
# Defaults that are not None or False (a flag given with its default is not a "non-default arg").
SERVE_DEFAULTS: dict[str, Any] = {
    "runner": "auto", "convert": "auto", "tokenizer_mode": "auto", "dtype": "auto",
    "allowed_local_media_path": "", "max_logprobs": 20, "logprobs_mode": "raw_logprobs",
    "config_format": "auto", "generation_config": "auto", "model_impl": "auto",
    "load_format": "auto", "safetensors_load_strategy": "lazy", "use_tqdm_on_load": True,
    "pt_load_map_location": "cpu", "reasoning_parser": "", "reasoning_parser_plugin": "",
    "pipeline_parallel_size": 1, "master_addr": "127.0.0.1", "master_port": 29501, "nnodes": 1,
    "tensor_parallel_size": 1, "decode_context_parallel_size": 1,
    "dcp_kv_cache_interleave_size": 1, "cp_kv_cache_interleave_size": 1,
    "prefill_context_parallel_size": 1, "data_parallel_size": 1, "data_parallel_backend": "mp",
    "all2all_backend": "allgather_reducescatter", "dbo_decode_token_threshold": 32,
    "dbo_prefill_token_threshold": 512, "expert_placement_strategy": "linear",
    "worker_cls": "auto", "worker_extension_cls": "", "gpu_memory_utilization": 0.9,
    "swap_space": 4, "kv_cache_dtype": "auto", "prefix_caching_hash_algo": "sha256",
    "mamba_cache_dtype": "auto", "mamba_ssm_cache_dtype": "auto", "mamba_cache_mode": "none",
    "kv_offloading_backend": "native", "mm_processor_cache_gb": 4,
    "mm_processor_cache_type": "lru", "mm_shm_cache_max_object_size_mb": 128,
    "mm_encoder_tp_mode": "weights", "max_loras": 1, "max_lora_rank": 16, "lora_dtype": "auto",
    "kv_cache_metrics_sample": 0.01, "max_num_partial_prefills": 1,
    "max_long_partial_prefills": 1, "scheduling_policy": "fcfs", "stream_interval": 1,
    "port": 8000, "uvicorn_log_level": "info", "chat_template_content_format": "auto",
    "response_role": "assistant", "tool_parser_plugin": "", "enable_log_deltas": True,
    "disable_log_requests": True, "allowed_origins": ["*"], "allowed_methods": ["*"],
    "allowed_headers": ["*"], "middleware": [],
}  # fmt: skip


def human_int(text: str) -> int:
    """vLLM's human_readable_int: 65536, 64k / 1.5m (x1000), 64K / 1M (x1024, no decimals)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", text.strip())
    if match:
        number, suffix = match.groups()
        if suffix.islower():
            return int(float(number) * 1000 ** ("kmgt".index(suffix) + 1))
        if "." in number:
            raise argparse.ArgumentTypeError(
                f"Decimals are not allowed with binary suffixes like {suffix}. Did you mean to "
                f"use {number}{suffix.lower()} instead?"
            )
        return int(number) * int(1024 ** ("KMGT".index(suffix) + 1))
    return int(text)


def converter(kind: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """vLLM's optional_type(parse_type(...)): "" and "None" are None, bad values an error."""

    def parse(text: str) -> Any:
        if text in ("", "None"):
            return None
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"Value {text} cannot be converted to {kind}."
            ) from None

    return parse


def json_or_str(text: str) -> Any:
    return json.loads(text) if re.match(r"(?s)^\s*{.*}\s*$", text) else text


CONVERTERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": converter("int", int),
    "human_int": converter("human_readable_int", human_int),
    "human_int_or_auto": converter(
        "human_readable_int_or_auto",
        lambda t: -1 if t.strip().lower() in ("-1", "auto") else human_int(t),
    ),
    "float": converter("float", float),
    "json": converter("json.loads", json.loads),
    "json_or_str": converter("json.loads", json_or_str),
}


def serve_options() -> list[tuple[str, list[str], list[str]]]:
    """SERVE_OPTIONS as (kind, option names, choices)."""
    entries: list[tuple[str, list[str], list[str]]] = []
    kind = ""
    for line in SERVE_OPTIONS.strip().splitlines():
        words = line.split()
        if line.endswith(":"):
            kind = line[:-1]
        elif words[0] in ("choices", "int_choices"):
            kind = words[0]
            entries.append((kind, words[1].split("|"), words[2:]))
        elif kind in ("choices", "int_choices"):
            entries[-1][2].extend(words)  # a choices line continued
        else:
            entries += [(kind, names.split("|"), []) for names in words]
    return entries


def build_parser() -> argparse.ArgumentParser:
    """`vllm serve` with every 0.16 option (SERVE_OPTIONS); only given options are set."""
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM CLI")
    commands = parser.add_subparsers(dest="subparser", required=False)
    serve = commands.add_parser("serve", usage="vllm serve [model_tag] [options]")
    serve.add_argument("model_tag", nargs="?", default=None)
    unset = argparse.SUPPRESS
    for kind, names, choices in serve_options():
        if kind in ("choices", "int_choices"):
            convert: Callable[[str], Any] = str
            values: list[Any] = choices
            if kind == "int_choices":
                values, convert = [int(c) for c in choices], CONVERTERS["int"]
            serve.add_argument(*names, type=convert, choices=values, default=unset)
        elif kind == "bool":
            serve.add_argument(*names, action=argparse.BooleanOptionalAction, default=unset)
        elif kind == "store_true":
            serve.add_argument(*names, action="store_true", default=unset)
        elif kind == "list":
            serve.add_argument(*names, nargs="+", default=unset)
        elif kind == "int_list":
            serve.add_argument(*names, nargs="+", type=CONVERTERS["int"], default=unset)
        elif kind == "append":
            serve.add_argument(*names, action="append", default=unset)
        elif kind == "optional_value":
            serve.add_argument(*names, nargs="?", const=True, default=unset)
        else:
            serve.add_argument(*names, type=CONVERTERS[kind], default=unset)
    return parser


def flexible_args(argv: list[str]) -> list[str]:
    """What vLLM's FlexibleArgumentParser.parse_args does to argv before argparse sees it.

    (utils/argparse_utils.py) `--model X` moves to the model_tag position; underscores in option
    names become dashes; -O3 / -O 3 mean --optimization-level 3; the dot form of JSON options
    (--override-generation-config.min_p=0.01, --x.key value, --x.list+ a,b) is merged into one
    JSON value per option, passed last.
    """
    if argv and argv[0] == "serve":
        for i, arg in enumerate(argv):
            if arg == "--model" and i + 1 < len(argv):
                argv = ["serve", argv[i + 1], *argv[1:i], *argv[i + 2 :]]
                break
            if arg.startswith("--model="):
                argv = ["serve", arg.removeprefix("--model="), *argv[1:i], *argv[i + 1 :]]
                break
    processed: list[str] = []
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            head, dot, tail = key.partition(".")
            processed.append(head.replace("_", "-") + dot + tail + eq + value)
        elif arg.startswith("-O") and arg != "-O":
            processed += ["--optimization-level", arg[3:] if arg[2:3] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(argv) and argv[i + 1] in {"0", "1", "2", "3"}:
            processed.append("--optimization-level")
        else:
            processed.append(arg)
    merged: dict[str, dict[str, Any]] = {}
    out: list[str] = []
    skip = False
    for i, arg in enumerate(processed):
        if skip:
            skip = False
            continue
        if not (arg.startswith("-") and "." in arg.partition("=")[0]):
            out.append(arg)
            continue
        key, eq, value = arg.partition("=")
        if not eq:
            if i + 1 >= len(processed):
                out.append(arg)  # argparse reports it
                continue
            value, skip = processed[i + 1], True
        if key.endswith("+"):
            key, value = key[:-1], json.dumps(value.split(","))
        option, *path = key.split(".")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        for part in reversed(path):
            parsed = {part: parsed}
        merge(merged.setdefault(option, {}), parsed)
    for option, nested in merged.items():
        out += [option, json.dumps(nested)]
    return out


def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif isinstance(value, list) and isinstance(into.get(key), list):
            into[key] += value
        else:
            into[key] = value


def parse_serve_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """(args with the stand-in's defaults filled in, the non-default args as vLLM logs them)."""
    given = build_parser().parse_args(flexible_args(argv))
    if getattr(given, "subparser", None) != "serve":
        build_parser().error("the stand-in only has the serve subcommand")
    values = {k: v for k, v in vars(given).items() if k != "subparser"}
    if values.get("model_tag") is not None:
        values["model"] = values["model_tag"]
    non_default = {k: v for k, v in values.items() if v != SERVE_DEFAULTS.get(k) and v is not None}
    defaults: dict[str, Any] = {
        "model_tag": DEFAULT_MODEL, "host": None, "port": 8000, "gpu_memory_utilization": 0.9,
        "max_model_len": None, "max_num_seqs": 256, "served_model_name": None, "api_key": None,
        "kv_cache_dtype": "auto", "enable_auto_tool_choice": False, "tool_call_parser": None,
        "reasoning_parser": "", "enable_prefix_caching": None,
        "disable_access_log_for_endpoints": None, "disable_uvicorn_access_log": False,
        "uvicorn_log_level": "info", "enable_log_outputs": False, "enable_log_requests": False,
        "chat_template": None, "generation_config": "auto", "override_generation_config": None,
    }  # fmt: skip
    args = argparse.Namespace(**{**defaults, **{k: v for k, v in values.items() if v is not None}})
    if args.max_model_len == -1:
        args.max_model_len = None  # "auto": the stand-in takes the model's own length
    return args, non_default


def validate_args(args: argparse.Namespace) -> None:
    """vLLM's validate_parsed_serve_args (before anything is logged)."""
    frames = [
        "entrypoints/cli/main.py",
        "entrypoints/cli/serve.py",
        "entrypoints/openai/cli_args.py",
    ]
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        die("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser", frames)
    if args.enable_log_outputs and not args.enable_log_requests:
        die("TypeError: Error: --enable-log-outputs requires --enable-log-requests", frames)


def validate_api_server_args(args: argparse.Namespace) -> None:
    """vLLM's validate_api_server_args (after the non-default args line)."""
    frames = ["entrypoints/cli/serve.py", "entrypoints/openai/api_server.py"]
    for kind, name, known, checked in (
        ("tool call", args.tool_call_parser, TOOL_PARSER_NAMES.split(),
         args.enable_auto_tool_choice),
        ("reasoning", args.reasoning_parser, REASONING_PARSER_NAMES.split(), True),
    ):  # fmt: skip
        if checked and name and name not in known:
            choices = ",".join(known)
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

PREFILL_REFERENCE_TOKENS = 512  # VLLM_STANDIN_PREFILL_TPS is the rate at this prompt size
PREFILL_PLATEAU_TOKENS = 4096  # the card's largest measured prompt: no faster beyond it
PREFILL_GROWTH = math.log(1916 / 920) / math.log(4096 / 512)  # the card: 920 @512, 1916 @4096


def prefill_rate(rate_at_512: float, tokens: int) -> float:
    """Prompt tokens per second for a prefill of ``tokens``: the card's power law.

    rate = rate_at_512 * (tokens / 512) ** 0.353, which goes through both rows of the card's
    table (920 tok/s at 512, 1916 at 4096) at the default rate; held at the 4096-token rate for
    longer prompts (the card measures nothing longer; attention only slows long prefills down)
    and continued below 512 (a short prompt is latency-bound: its prefill time still grows with
    its size, n ** 0.647).
    """
    size = min(max(tokens, 1), PREFILL_PLATEAU_TOKENS)
    return rate_at_512 * math.pow(size / PREFILL_REFERENCE_TOKENS, PREFILL_GROWTH)


# config/model.py get_diff_sampling_param: the generation-config keys that become defaults.
GENERATION_KEYS = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p", "max_new_tokens")
# SamplingParams' own defaults (sampling_params.py), for what neither side sets.
SAMPLING_DEFAULTS: dict[str, Any] = {
    "repetition_penalty": 1.0, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
}  # fmt: skip


def default_sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The server's default sampling, as vLLM 0.16's get_diff_sampling_param builds it: the
    model's generation_config.json (--generation-config auto; a directory holding one; none
    with "vllm"), updated by --override-generation-config, reduced to GENERATION_KEYS
    (max_new_tokens becomes max_tokens)."""
    source = str(args.generation_config or "auto")
    config: dict[str, Any] = {}
    if source != "vllm":
        path = Path(args.model_tag if source == "auto" else source) / "generation_config.json"
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            loaded = {}
        config = loaded if isinstance(loaded, dict) else {}
    override = args.override_generation_config
    if isinstance(override, dict):
        config.update(override)
    diff = {k: config[k] for k in GENERATION_KEYS if config.get(k) is not None}
    if "max_new_tokens" in diff:
        diff["max_tokens"] = diff.pop("max_new_tokens")
    return diff


def sampling_params(request: dict[str, Any], defaults: dict[str, Any], max_tokens: int) -> str:
    """The request's SamplingParams as vLLM logs them: what the request sets, else the server's
    defaults (chat_completion/protocol.py to_sampling_params), else SamplingParams' own."""
    values = {k: request.get(k) if request.get(k) is not None else defaults.get(k, v)
              for k, v in SAMPLING_DEFAULTS.items()}  # fmt: skip
    return (
        f"SamplingParams(n=1, presence_penalty=0.0, frequency_penalty=0.0, "
        f"repetition_penalty={values['repetition_penalty']}, temperature={values['temperature']}, "
        f"top_p={values['top_p']}, top_k={values['top_k']}, min_p={values['min_p']}, seed=None, "
        f"stop=[], stop_token_ids=[], ignore_eos={bool(request.get('ignore_eos'))}, "
        f"max_tokens={max_tokens}, min_tokens={int(request.get('min_tokens') or 0)}, "
        "logprobs=None, prompt_logprobs=None, skip_special_tokens=True)"
    )


class Engine:
    """Timing, concurrency, prefix cache and metrics of the simulated model."""

    def __init__(self, args: argparse.Namespace, knobs: Knobs, kv_capacity: int) -> None:
        self.args = args
        self.knobs = knobs
        self.kv_capacity = kv_capacity
        self.served_names: list[str] = args.served_model_name or [args.model_tag]
        self.api_keys: list[str] = args.api_key or []
        self.default_sampling = default_sampling(args)
        # A dead engine (EngineDeadError): /health 503, generation 500 with an empty body.
        self.dead = knobs.fault == "unhealthy"
        self.workers: Any = None  # ray_executor.RayWorkers with the Ray backend and TP > 1
        self.keep_alive = os.environ.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH", "0") not in ("", "0")
        self.should_exit = threading.Event()  # uvicorn's server.should_exit
        self.quiet_paths: set[str] = set()  # --disable-access-log-for-endpoints
        self.access_log = not args.disable_uvicorn_access_log and args.uvicorn_log_level in (
            "info",
            "debug",
            "trace",
        )
        if args.disable_access_log_for_endpoints:
            paths = str(args.disable_access_log_for_endpoints).split(",")
            self.quiet_paths = {p.strip() for p in paths if p.strip()}
        self.token_pieces: dict[int, str] = {}  # for /detokenize without a tokenizer
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

    def step_workers(self) -> None:
        """A model step on the Ray workers, if any: a worker gone kills the engine."""
        if self.workers is None or self.dead:
            return
        try:
            self.workers.step()
        except Exception as exc:  # Ray's ActorDiedError, GetTimeoutError, ...
            engine_dies(
                self,
                f"{type(exc).__module__}.{type(exc).__name__}: {str(exc).splitlines()[0]}",
                ["v1/executor/ray_executor.py", "v1/executor/ray_utils.py"],
            )

    def terminate_if_errored(self) -> None:
        """vLLM's launcher.terminate_if_errored: a dead engine stops the server unless
        VLLM_KEEP_ALIVE_ON_ENGINE_DEATH is set."""
        if self.dead and not self.keep_alive:
            self.should_exit.set()

    def token_ids(self, text: str) -> list[int]:
        """Token ids for /tokenize (the tokenizer's, or a stable hash of each piece)."""
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        ids = []
        for piece in APPROX_TOKEN_RE.findall(text):
            ids.append(self.token_id(piece))
            self.token_pieces[ids[-1]] = piece
        return ids

    def detokenize(self, ids: list[int]) -> str:
        if self.tokenizer is not None:
            return str(self.tokenizer.decode(ids, skip_special_tokens=False))
        return " ".join(self.token_pieces.get(i, "") for i in ids)

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
            uncached = len(prompt) - cached
            prefill = uncached / prefill_rate(self.knobs.prefill_tps, uncached)
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


class ToolCallStream:
    """The deltas of vLLM 0.16's minimax_m2 tool parser while it streams one call.

    tool_parsers/minimax_m2_tool_parser.py, extract_tool_calls_streaming: at most one delta per
    generated token, in this order: once `<invoke name="...">` is complete, the header (id
    call_<24 hex>, type, name, arguments ""); on the next token "{"; one '"key": value'
    fragment (", " between them, values typed by the tool's schema) per complete
    </parameter>; "}" once </invoke> has come and every parameter was sent.
    """

    def __init__(self, name: str, arguments: dict[str, Any]) -> None:
        self.name = name
        self.arguments = list(arguments.items())
        self.text = ""
        self.sent_header = self.opened = self.closed = False
        self.sent_params = 0

    def feed(self, piece: str) -> dict[str, Any] | None:
        self.text += piece
        if not self.sent_header:
            start = self.text.find("<invoke name=")
            if start == -1 or ">" not in self.text[start:]:
                return None
            self.sent_header = True
            function = {"name": self.name, "arguments": ""}
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            return {"id": call_id, "type": "function", "index": 0, "function": function}
        if not self.opened:
            self.opened = True
            return {"index": 0, "function": {"arguments": "{"}}
        if self.closed:
            return None
        if "</invoke>" in self.text and self.sent_params >= len(self.arguments):
            self.closed = True
            return {"index": 0, "function": {"arguments": "}"}}
        if self.sent_params < len(self.arguments) and (
            self.text.count("</parameter>") > self.sent_params
        ):
            key, value = self.arguments[self.sent_params]
            fragment = f'"{key}": {json.dumps(value, ensure_ascii=False)}'
            self.sent_params += 1
            return {"index": 0, "function": {"arguments": fragment if self.sent_params == 1
                                             else ", " + fragment}}  # fmt: skip
        return None


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
        """uvicorn's access line, unless the access log is off or the path is excluded."""
        engine = self.engine
        if not engine.access_log or urlsplit(self.path).path in engine.quiet_paths:
            return
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
        if self.command != "HEAD":
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

    def do_HEAD(self) -> None:
        # FastAPI's APIRoute (fastapi/routing.py) takes only the methods it is declared with,
        # unlike Starlette's Route, which adds HEAD to GET: vLLM's GET routes answer 405 to HEAD.
        self.route("HEAD", b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.route("POST", self.rfile.read(length) if length > 0 else b"")

    def authorized(self) -> bool:
        """vLLM's AuthenticationMiddleware: scheme "bearer" in any case, one of the keys."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token in self.engine.api_keys

    def route(self, method: str, body: bytes) -> None:
        path = urlsplit(self.path).path
        # Only paths under /v1 need the key (server_utils.AuthenticationMiddleware, vllm#58144):
        # /invocations, /tokenize, /detokenize and /inference/v1/generate are open.
        if self.engine.api_keys and path.startswith("/v1") and not self.authorized():
            self.send_json(401, {"error": "Unauthorized"})
            return
        handlers: dict[tuple[str, str], Callable[[], None]] = {
            ("GET", "/health"): self.health,
            ("GET", "/ping"): self.health,
            ("POST", "/ping"): self.health,
            ("GET", "/load"): lambda: self.send_json(200, {"server_load": 0}),
            ("GET", "/version"): lambda: self.send_json(200, {"version": VERSION}),
            ("GET", "/metrics"): self.metrics,
            ("GET", "/v1/models"): lambda: self.send_json(200, self.models()),
            ("POST", "/v1/chat/completions"): lambda: self.generation(body, self.chat),
            ("POST", "/v1/completions"): lambda: self.generation(body, self.completion),
            ("POST", "/invocations"): lambda: self.generation(body, self.invocations, True),
            ("POST", "/tokenize"): lambda: self.generation(body, self.tokenize, engine=False),
            ("POST", "/detokenize"): lambda: self.generation(body, self.detokenize, engine=False),
            ("POST", "/inference/v1/generate"): lambda: self.generation(
                body, self.generate_tokens, True
            ),
        }
        handler = handlers.get((method, path))
        if handler is not None:
            handler()
        elif any(p == path for _, p in handlers):
            self.send_json(405, {"detail": "Method Not Allowed"})
        else:
            self.send_json(404, {"detail": "Not Found"})

    def health(self) -> None:
        self.send_body(503 if self.engine.dead else 200, b"", None)

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

    def generation(
        self,
        body: bytes,
        endpoint: Callable[[dict[str, Any]], None],
        json_only: bool = False,
        engine: bool = True,
    ) -> None:
        try:
            media_type = self.headers.get("content-type", "").lower().split(";", 1)[0].strip()
            if json_only and media_type != "application/json":
                raise RequestError(
                    400,
                    "[\"Unsupported Media Type: Only 'application/json' is allowed\"]",
                    "Bad Request",
                )
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
            if engine:
                self.engine.step_workers()
            if engine and self.engine.dead:
                # launcher.py: EngineDeadError -> an empty 500, and the server stops unless
                # VLLM_KEEP_ALIVE_ON_ENGINE_DEATH is set
                self.engine.terminate_if_errored()
                self.send_body(500, b"", None)
                return
            endpoint(request)
        except RequestError as exc:
            self.send_json(exc.status, exc.payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def invocations(self, request: dict[str, Any]) -> None:
        """sagemaker/api_router.py: the first request type the body validates as."""
        if isinstance(request.get("messages"), list):
            self.chat(request)
        elif "prompt" in request:
            self.completion(request)
        else:
            raise RequestError(
                400,
                "Cannot find suitable handler for request. Expected one of: "
                "['ChatCompletionRequest', 'CompletionRequest']",
            )

    def tokenize(self, request: dict[str, Any]) -> None:
        """serve/tokenize: {"prompt"} or {"messages"} -> count, max_model_len, tokens."""
        if isinstance(request.get("messages"), list):
            text = "\n".join(text_of(m.get("content")) for m in request["messages"])
        elif isinstance(request.get("prompt"), str):
            text = request["prompt"]
        else:
            raise RequestError(400, "Field required: prompt or messages", "Bad Request")
        tokens = self.engine.token_ids(text)
        self.send_json(
            200,
            {
                "count": len(tokens),
                "max_model_len": self.engine.args.max_model_len,
                "tokens": tokens,
                "token_strs": None,
            },
        )

    def detokenize(self, request: dict[str, Any]) -> None:
        tokens = request.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RequestError(400, "Field required: tokens (a list of integers)", "Bad Request")
        self.send_json(200, {"prompt": self.engine.detokenize(tokens)})

    def generate_tokens(self, request: dict[str, Any]) -> None:
        """serve/disagg: /inference/v1/generate, token ids in, token ids out."""
        prompt = request.get("token_ids")
        params = request.get("sampling_params")
        if not isinstance(prompt, list) or not prompt or not isinstance(params, dict):
            raise RequestError(400, "Field required: token_ids and sampling_params", "Bad Request")
        max_tokens = self.max_tokens(params, len(prompt), 16)
        pieces, finish = plan_pieces(" " + reasoning_and_answer("")[1], params, max_tokens)
        for _ in self.engine.generate(list(prompt), pieces):
            pass
        self.engine.finished(finish)
        choice = {
            "index": 0,
            "logprobs": None,
            "finish_reason": finish,
            "token_ids": [self.engine.token_id(p) for p in pieces],
        }
        self.send_json(
            200,
            {
                "request_id": str(request.get("request_id") or uuid.uuid4().hex),
                "choices": [choice],
                "prompt_logprobs": None,
                "kv_transfer_params": None,
            },
        )

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
        max_tokens = self.max_tokens(
            request, len(prompt), self.engine.default_sampling.get("max_tokens")
        )
        self.log_sampling("chatcmpl", request, max_tokens)
        pieces, finish = plan_pieces(raw, request, max_tokens)
        if TOOL_END not in pieces:
            parsed = None  # cut off by max_tokens: the parser finds no complete call
        plan = Plan(pieces, finish, args.reasoning_parser, parsed)
        if request.get("stream"):
            self.stream_chat(request, prompt, plan)
        else:
            self.complete_chat(request, prompt, plan)

    def log_sampling(self, kind: str, request: dict[str, Any], max_tokens: int) -> None:
        """--enable-log-requests: vLLM's RequestLogger line with the sampling the request gets
        (entrypoints/logger.py log_inputs)."""
        if self.engine.args.enable_log_requests:
            params = sampling_params(request, self.engine.default_sampling, max_tokens)
            log("INFO", "logger.py:49", f"Received request {kind}-{uuid.uuid4().hex}: params: "
                f"{params}, lora_request: None.")  # fmt: skip

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
            "reasoning": reasoning,  # no reasoning_content: removed before 0.16 (PR #33402)
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
        tool_stream: ToolCallStream | None = None
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
                elif plan.tool is not None and (tool_stream is not None or piece == TOOL_START):
                    if tool_stream is None:
                        tool_stream = ToolCallStream(*plan.tool)
                    call = tool_stream.feed(piece)
                    delta = {"tool_calls": [call]} if call else {}
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
        self.log_sampling("cmpl", request, max_tokens)
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
    return kv_gib, int(kv_gib * 1024**3 // kv_bytes_per_token(args, config))


def kv_bytes_per_token(args: argparse.Namespace, config: dict[str, Any]) -> int:
    dtype_bytes = 1 if str(args.kv_cache_dtype).startswith("fp8") else 2
    layers = int(config.get("num_hidden_layers", 62))
    per_token = 2 * dtype_bytes * layers * int(config.get("num_key_value_heads", 8))
    return per_token * int(config.get("head_dim", 128))


def gib(value: float) -> str:
    """vLLM's format_gib: GiB rounded to 2 decimals, as Python prints the float."""
    return str(round(value, 2))


ENGINE_CORE = "EngineCore_DP0"
CONSERVING_MEMORY = "https://docs.vllm.ai/en/latest/configuration/conserving_memory/"


def engine_core_failed(exception_line: str, frames: list[str]) -> NoReturn:
    """vLLM 0.16's start-up failure in the engine core, then in the API server: exit 1.

    v1/engine/core.py run_engine_core logs "EngineCore failed to start." with the traceback
    (the engine core process exits 1); v1/engine/utils.py wait_for_engine_startup then raises
    "Engine core initialization failed ..." in the API server, which ends the process with
    status 1.
    """
    log("ERROR", "core.py:1006", "EngineCore failed to start.", ENGINE_CORE)
    traceback(exception_line, ["v1/engine/core.py", "v1/engine/core.py", *frames], proc=ENGINE_CORE)
    die(
        "RuntimeError: Engine core initialization failed. See root cause above. "
        f"Failed core proc(s): {{'{ENGINE_CORE}': 1}}",
        ["entrypoints/cli/main.py", "entrypoints/cli/serve.py",
         "entrypoints/openai/api_server.py", "v1/engine/async_llm.py",
         "v1/engine/core_client.py", "v1/engine/utils.py"],
    )  # fmt: skip


def out_of_memory(util: float) -> NoReturn:
    """oom_at_start: torch's CUDA OOM during the load (a real failure, not 0.16's checks)."""
    free = max(0.1, (1 - util) * GPU_TOTAL_GIB - 7.5)
    engine_core_failed(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        f"total capacity of {GPU_TOTAL_GIB:.2f} GiB of which {free:.2f} GiB is free. Including "
        f"non-PyTorch memory, this process has {GPU_TOTAL_GIB - free:.2f} GiB memory in use. Of "
        "the allocated memory 104.12 GiB is allocated by PyTorch, and 1.21 GiB is reserved by "
        "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
        "documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
        ["v1/worker/gpu_worker.py", "v1/worker/gpu_model_runner.py"],
    )


def free_memory_too_low(util: float, free_fraction: float) -> NoReturn:
    """v1/worker/utils.py request_memory, called by gpu_worker.init_device before the load.

    On a Spark (SM 12.1, unified memory) free memory is psutil's available system memory
    (utils/mem_utils.py MemorySnapshot.measure), so page cache and other processes count.
    """
    total = GPU_TOTAL_GIB
    requested = math.ceil(total * 1024**3 * util) / 1024**3
    free = max(0.0, free_fraction) * total
    engine_core_failed(
        f"ValueError: Free memory on device cuda:0 ({gib(free)}/{gib(total)} GiB) on startup "
        f"is less than desired GPU memory utilization ({util}, {gib(requested)} GiB). Decrease "
        "GPU memory utilization or reduce GPU memory used by other processes.",
        ["v1/executor/uniproc_executor.py", "v1/worker/worker_base.py",
         "v1/worker/gpu_worker.py", "v1/worker/utils.py"],
    )  # fmt: skip


def no_cache_blocks() -> NoReturn:
    """v1/core/kv_cache_utils.py _check_enough_kv_cache_memory: nothing left for the KV cache."""
    log("INFO", "gpu_worker.py:373", f"Available KV cache memory: {gib(-2.35)} GiB", ENGINE_CORE)
    engine_core_failed(
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine. See "
        f"{CONSERVING_MEMORY} for more details.",
        ["v1/core/kv_cache_utils.py", "v1/core/kv_cache_utils.py"],
    )


def kv_cache_too_small(max_model_len: int, per_token: int) -> NoReturn:
    """v1/core/kv_cache_utils.py _check_enough_kv_cache_memory: max_model_len does not fit."""
    needed = max_model_len * per_token
    available = needed // 4
    estimated = available // per_token // BLOCK_SIZE * BLOCK_SIZE
    log("INFO", "gpu_worker.py:373", f"Available KV cache memory: {gib(available / 1024**3)} GiB",
        ENGINE_CORE)  # fmt: skip
    engine_core_failed(
        "ValueError: To serve at least one request with the models's max seq len "
        f"({max_model_len}), ({gib(needed / 1024**3)} GiB KV cache is needed, which is larger "
        f"than the available KV cache memory ({gib(available / 1024**3)} GiB). Based on the "
        f"available memory, the estimated maximum model length is {estimated}. Try increasing "
        "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine. "
        f"See {CONSERVING_MEMORY} for more details.",
        ["v1/core/kv_cache_utils.py", "v1/core/kv_cache_utils.py"],
    )


def report_usage(args: argparse.Namespace, architecture: str) -> None:
    """vLLM's usage stats (usage/usage_lib.py), as far as a host can observe them.

    Unless VLLM_NO_USAGE_STATS=1, VLLM_DO_NOT_TRACK=1 (or, without it, DO_NOT_TRACK=1) or the
    file $VLLM_CONFIG_ROOT/do_not_track, the worker appends a JSON line to
    $VLLM_CONFIG_ROOT/usage_stats.json (VLLM_CONFIG_ROOT: default $XDG_CONFIG_HOME/vllm, else
    ~/.config/vllm) and posts it to VLLM_USAGE_STATS_SERVER (https://stats.vllm.ai). The
    stand-in writes the file and posts nothing.
    """
    env = os.environ
    config_home = env.get("XDG_CONFIG_HOME", os.path.join(os.path.expanduser("~"), ".config"))
    root = Path(os.path.expanduser(env.get("VLLM_CONFIG_ROOT", os.path.join(config_home, "vllm"))))
    do_not_track = (env.get("VLLM_DO_NOT_TRACK") or env.get("DO_NOT_TRACK") or "0") == "1"
    if do_not_track or env.get("VLLM_NO_USAGE_STATS", "0") == "1":
        return
    if (root / "do_not_track").exists():
        return
    data = {
        "uuid": str(uuid.uuid4()),
        "provider": "UNKNOWN",
        "num_cpu": os.cpu_count(),
        "gpu_count": 1,
        "gpu_type": "NVIDIA GB10",
        "architecture": "aarch64",
        "model_architecture": architecture,
        "vllm_version": VERSION,
        "context": "OPENAI_API_SERVER",
        "log_time": time.time_ns(),
        "source": env.get("VLLM_USAGE_SOURCE", "production"),
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "kv_cache_dtype": str(args.kv_cache_dtype),
        "enable_prefix_caching": args.enable_prefix_caching is not False,
    }
    try:
        root.mkdir(parents=True, exist_ok=True)
        with (root / "usage_stats.json").open("a") as out:
            out.write(json.dumps(data) + "\n")
    except OSError:
        pass  # a thread in vLLM: its failure does not stop the server


def schedule_crash(knobs: Knobs, engine: Engine) -> None:
    """crash_after_start:N: the engine dies, then the process with status 1, once per marker."""
    marker = knobs.state_dir / CRASH_MARKER
    if knobs.crash_after is None:
        return
    if marker.exists():
        log("INFO", "standin", f"crash marker {marker} present: not crashing this time")
        return

    def crash() -> None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"crashed at {time.time():.0f}\n")
        engine_dies(engine)
        uvicorn_log("Shutting down")
        os._exit(1)

    timer = threading.Timer(knobs.crash_after, crash)
    timer.daemon = True
    timer.start()


CUDA_FAULT = (
    "torch.AcceleratorError: CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect."
)
CUDA_FAULT_FRAMES = ["v1/executor/uniproc_executor.py", "v1/worker/gpu_worker.py",
                     "v1/worker/gpu_model_runner.py"]  # fmt: skip


def engine_dies(engine: Engine, cause: str = CUDA_FAULT, frames: list[str] | None = None) -> None:
    """What vLLM 0.16 logs when its engine core dies while serving; the engine is dead after.

    v1/engine/core.py:1008 logs the fatal error with its root cause (here a CUDA illegal
    address, the likely one on a GB10), the engine core process exits, core_client.py:617
    notices, and async_llm.py:710's output handler fails with EngineDeadError
    (v1/engine/exceptions.py).
    """
    log("ERROR", "core.py:1008", "EngineCore encountered a fatal error.", ENGINE_CORE)
    traceback(
        cause,
        ["v1/engine/core.py", "v1/engine/core.py", "v1/engine/core.py",
         *(CUDA_FAULT_FRAMES if frames is None else frames)],
        proc=ENGINE_CORE,
    )  # fmt: skip
    log("ERROR", "core_client.py:617",
        f"Engine core proc {ENGINE_CORE} died unexpectedly, shutting down client.")  # fmt: skip
    log("ERROR", "async_llm.py:710", "AsyncLLM output_handler failed.")
    traceback(
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack "
        "trace (above) for the root cause.",
        ["v1/engine/async_llm.py", "v1/engine/core_client.py"],
        proc="APIServer",
    )
    engine.dead = True


def schedule_engine_death(knobs: Knobs, engine: Engine) -> None:
    """engine_death_after_start:N and unready_after_start:N, once per marker file."""
    if knobs.fault not in ("engine_death_after_start", "unready_after_start"):
        return
    marker = knobs.state_dir / MARKERS[knobs.fault]
    if marker.exists():
        log("INFO", "standin", f"{knobs.fault} marker {marker} present: not failing this time")
        return

    def die_now() -> None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{knobs.fault} at {time.time():.0f}\n")
        if knobs.fault == "unready_after_start":
            engine.keep_alive = True  # wedged: the watchdog never stops the server
        engine_dies(engine)

    timer = threading.Timer(knobs.after or 0.0, die_now)
    timer.daemon = True
    timer.start()


WATCHDOG_SECONDS = 5.0  # launcher.py watchdog_loop: VLLM_WATCHDOG_TIME_S


def watchdog(engine: Engine, server: StandinServer) -> None:
    """launcher.py's watchdog: every 5 s, a dead engine stops the server (unless
    VLLM_KEEP_ALIVE_ON_ENGINE_DEATH); a request that met the dead engine stops it at once."""
    while not engine.should_exit.wait(WATCHDOG_SECONDS):
        engine.terminate_if_errored()
    server.shutdown()


class Stop(Exception):
    """SIGTERM or SIGINT while serving."""


def main(argv: list[str] | None = None) -> int:
    args, non_default = parse_serve_args(sys.argv[1:] if argv is None else argv)
    validate_args(args)
    if not args.api_key and os.environ.get("VLLM_API_KEY"):
        args.api_key = [os.environ["VLLM_API_KEY"]]
    knobs = load_knobs(os.environ, args.model_tag)
    DECORATED.append("APIServer")  # api_server.py run_server: decorate_logs("APIServer")
    if os.environ.get("VLLM_DISABLE_LOG_LOGO", "0") not in ("", "0"):
        log("INFO", "utils.py:299", f"vLLM server version {VERSION}, serving model {args.model}")
    else:
        log("INFO", "utils.py:299", "")
        for line in ("       █     █     █▄   ▄█",
                     f" ▄▄ ▄█ █     █     █ ▀▄▀ █  version {VERSION}",
                     f"  █▄█▀ █     █     █     █  model   {args.model_tag}",
                     "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀", ""):  # fmt: skip
            print(f"(APIServer pid={os.getpid()}) {line}", flush=True)
    log("INFO", "utils.py:233", f"non-default args: {non_default}")
    validate_api_server_args(args)
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

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("terminated")  # api_server.py setup_server's handler

    signal.signal(signal.SIGTERM, interrupt)
    # SIGINT raises KeyboardInterrupt, as in the container's PID 1; set explicitly, since a
    # process started in the background by a shell inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        engine.workers = start_ray_workers(args)
        load(args, knobs, config, shards, kv_gib, kv_tokens, architecture)
    except KeyboardInterrupt as exc:
        # uncaught: CPython ends through SIGINT (exit_sigint), which as the container's PID 1
        # (no init, the avarok image) is ignored, so the process exits with 128 + 2 = 130
        line = f"KeyboardInterrupt: {exc}" if str(exc) else "KeyboardInterrupt"
        die(line, ["entrypoints/cli/main.py", "entrypoints/cli/serve.py",
                   "entrypoints/openai/api_server.py"], status=130)  # fmt: skip
    if engine.default_sampling:
        log(
            "WARNING",
            "model.py:1602",
            "Default sampling parameters have been overridden by the "
            "model's Hugging Face generation config recommended from the model creator. If this "
            "is not intended, please relaunch vLLM instance with `--generation-config vllm`.",
        )
        source = "model" if args.generation_config == "auto" else args.generation_config
        for where, kind in (
            ("serving_chat.py:130", "chat"),
            ("serving_completion.py:68", "completion"),
        ):
            log("INFO", where, f"Using default {kind} sampling params from {source}: "
                f"{engine.default_sampling}")  # fmt: skip
    log("INFO", "api_server.py:1094", f"Starting vLLM API server 0 on http://{host}:{args.port}")
    log("INFO", "launcher.py:38", "Available routes are:")
    for route, methods in (("/health", "GET"), ("/load", "GET"), ("/ping", "GET, POST"),
                           ("/invocations", "POST"), ("/tokenize", "POST"),
                           ("/detokenize", "POST"), ("/inference/v1/generate", "POST"),
                           ("/version", "GET"), ("/v1/models", "GET"),
                           ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"),
                           ("/metrics", "GET")):  # fmt: skip
        log("INFO", "launcher.py:46", f"Route: {route}, Methods: {methods}")
    server.server_activate()
    uvicorn_log(f"Started server process [{os.getpid()}]")
    uvicorn_log("Waiting for application startup.")
    uvicorn_log("Application startup complete.")
    stopped_by_signal = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        # launcher.py serve_http: the signal cancels the server task
        stopped_by_signal.set()
        engine.should_exit.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    schedule_crash(knobs, engine)
    schedule_engine_death(knobs, engine)
    threading.Thread(target=watchdog, args=(engine, server), daemon=True).start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    if stopped_by_signal.is_set():
        log("INFO", "launcher.py:117", "Shutting down FastAPI HTTP server.")
    uvicorn_log("Shutting down")
    uvicorn_log("Waiting for application shutdown.")
    uvicorn_log("Application shutdown complete.")
    if not stopped_by_signal.is_set():
        uvicorn_log(f"Finished server process [{os.getpid()}]")
    return 0  # serve_http returns normally, whatever stopped it (vllm#48966)


def start_ray_workers(args: argparse.Namespace) -> Any:
    """With ``--distributed-executor-backend ray`` and a tensor parallel size above 1, join
    the Ray cluster and start the workers (ray_executor.py); vLLM's start-up errors end the
    engine core (exit 1). None otherwise."""
    world_size = int(getattr(args, "tensor_parallel_size", 1) or 1)
    if getattr(args, "distributed_executor_backend", None) != "ray" or world_size <= 1:
        return None
    ray_executor: Any = importlib.import_module("ray_executor")  # beside this file

    # vllm/utils/network_utils.py get_ip: VLLM_HOST_IP first
    host_ip = os.environ.get("VLLM_HOST_IP") or socket.gethostbyname(socket.gethostname())
    wait = float(os.environ.get("VLLM_STANDIN_PG_WAIT_SECONDS", ray_executor.PG_WAIT_TIMEOUT))
    frames = ["v1/executor/abstract.py", "v1/executor/ray_executor.py", "v1/executor/ray_utils.py"]
    try:
        return ray_executor.initialize(
            world_size,
            host_ip,
            wait,
            lambda level, where, msg: log(level, where, msg, ENGINE_CORE),
            args.model_tag,
        )
    except ModuleNotFoundError as exc:  # ray_utils.py assert_ray_available
        engine_core_failed(
            f"ValueError: Failed to import Ray: {exc}. Please install Ray with `pip install ray`.",
            frames,
        )
    # vLLM's ValueErrors, ConnectionError without a cluster, and a worker's failure to load its
    # weights as Ray raises it (RayTaskError(...), naming the worker's node)
    except Exception as exc:
        engine_core_failed(f"{type(exc).__name__}: {exc}", frames)


def load(
    args: argparse.Namespace,
    knobs: Knobs,
    config: dict[str, Any],
    shards: list[str],
    kv_gib: float,
    kv_tokens: int,
    architecture: str,
) -> None:
    """The engine core's start-up, as logged by vLLM 0.16, with the start-up faults."""
    log(
        "INFO",
        "core.py:97",
        f"Initializing a V1 LLM engine (v{VERSION}) with config: "
        f"model='{args.model_tag}', max_seq_len={args.max_model_len}, "
        f"kv_cache_dtype={args.kv_cache_dtype}",
        ENGINE_CORE,
    )
    util = args.gpu_memory_utilization
    if util > knobs.oom_above:
        free_memory_too_low(util, knobs.oom_above)
    if knobs.memory == "free":
        free_memory_too_low(util, util - 0.05)
    report_usage(args, architecture)
    log("INFO", "gpu_model_runner.py:3461", f"Starting to load model {args.model_tag}...",
        ENGINE_CORE)  # fmt: skip
    started = time.monotonic()
    for done in range(1, len(shards) + 1):
        time.sleep(knobs.load_seconds / len(shards))
        print(
            f"Loading safetensors checkpoint shards: {done * 100 // len(shards):3d}% Completed "
            f"| {done}/{len(shards)}",
            flush=True,
        )
    took = time.monotonic() - started
    log("INFO", "default_loader.py:314", f"Loading weights took {took:.2f} seconds", ENGINE_CORE)
    if knobs.fault == "oom_at_start":
        out_of_memory(util)
    log(
        "INFO",
        "gpu_model_runner.py:3560",
        f"Model loading took 93.47 GiB memory and {took:.2f} seconds",
        ENGINE_CORE,
    )
    if knobs.memory == "cache_blocks":
        no_cache_blocks()
    if knobs.memory == "kv_cache":
        kv_cache_too_small(args.max_model_len, kv_bytes_per_token(args, config))
    log("INFO", "gpu_worker.py:373", f"Available KV cache memory: {gib(kv_gib)} GiB", ENGINE_CORE)
    log("INFO", "kv_cache_utils.py:1087", f"GPU KV cache size: {kv_tokens:,} tokens", ENGINE_CORE)
    log(
        "INFO",
        "kv_cache_utils.py:1091",
        f"Maximum concurrency for {args.max_model_len:,} "
        f"tokens per request: {kv_tokens / args.max_model_len:.2f}x",
        ENGINE_CORE,
    )


if __name__ == "__main__":
    sys.exit(main())
