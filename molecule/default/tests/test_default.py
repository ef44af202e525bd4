"""Verify a converged simulated DGX Spark: unit, container, model files, endpoint."""

from __future__ import annotations

import json
import shlex
from typing import Any

CARD_ENV = {
    "VLLM_NVFP4_GEMM_BACKEND": "marlin",
    "VLLM_TEST_FORCE_FP8_MARLIN": "1",
    "VLLM_USE_FLASHINFER_MOE_FP4": "0",
    "VLLM_MARLIN_USE_ATOMIC_ADD": "1",
    "MODEL": "/models/MiniMax-M2.5-REAP-172B-NVFP4",
    "PORT": "8000",
    "MAX_MODEL_LEN": "65536",
    "GPU_MEMORY_UTIL": "0.93",
    "VLLM_EXTRA_ARGS": (
        "--trust-remote-code --kv-cache-dtype fp8 --attention-backend flashinfer "
        "--enable-auto-tool-choice --tool-call-parser minimax_m2 --reasoning-parser "
        "minimax_m2_append_think --served-model-name MiniMax-M2.5-REAP-172B-NVFP4"
    ),
}
MODEL_DIR = "/opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4"
SERVED = "MiniMax-M2.5-REAP-172B-NVFP4"


def _json(host: Any, cmd: str) -> Any:
    return json.loads(host.check_output(cmd))


def _env(entries: list[str]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in entries)


def test_unit_enabled_and_active(host: Any) -> None:
    svc = host.service("vllm")
    assert svc.is_enabled
    assert svc.is_running
    text = host.file("/etc/systemd/system/vllm.service").content_string
    assert text.startswith("#\n# Ansible managed")
    exec_start = " ".join(text.split("ExecStart=", 1)[1].split("\n#", 1)[0].split())
    exec_start = exec_start.replace(" \\ ", " ")
    assert exec_start.startswith(
        "/usr/bin/docker run --rm --name minimax --pull=never --gpus all --ipc=host "
        f"-v {MODEL_DIR}:/models/MiniMax-M2.5-REAP-172B-NVFP4:ro -p 8000:8000 "
        "--env-file /etc/vllm/vllm.env "
    )
    assert exec_start.endswith(" avarok/dgx-vllm-nvfp4-kernel:v23")
    assert "127.0.0.1:8000/health" in exec_start
    for line in ["Restart=on-failure", "TimeoutStartSec=900", "SuccessExitStatus=143"]:
        assert f"\n{line}\n" in text
    assert host.run("systemd-analyze verify /etc/systemd/system/vllm.service").rc == 0


def test_env_file_is_private(host: Any) -> None:
    env_file = host.file("/etc/vllm/vllm.env")
    assert env_file.mode == 0o600
    assert env_file.user == "root"
    entries = [line for line in env_file.content_string.splitlines() if not line.startswith("#")]
    assert dict(e.split("=", 1) for e in entries) == CARD_ENV  # no API key configured


def test_image_is_recorded(host: Any) -> None:
    record = json.loads(host.file("/etc/vllm/vllm.image.json").content_string)
    running = host.check_output("docker inspect -f '{{.Image}}' minimax")
    assert record == {
        "current": {"ref": "avarok/dgx-vllm-nvfp4-kernel:v23", "id": running},
        "previous": None,
    }


def test_container_runs_with_exactly_the_card_environment(host: Any) -> None:
    info = _json(host, "docker inspect minimax")[0]
    assert info["State"]["Running"]
    image_env = _env(
        _json(host, "docker image inspect " + shlex.quote(info["Image"]))[0]["Config"]["Env"] or []
    )
    container_env = _env(info["Config"]["Env"])
    added = {k: v for k, v in container_env.items() if image_env.get(k) != v}
    assert added == CARD_ENV
    assert info["Config"]["Image"] == "avarok/dgx-vllm-nvfp4-kernel:v23"
    assert info["HostConfig"]["IpcMode"] == "host"
    assert "127.0.0.1:8000/health" in info["Config"]["Healthcheck"]["Test"][1]
    assert [r["Capabilities"] for r in info["HostConfig"]["DeviceRequests"]] == [[["gpu"]]]


def test_model_mounted_read_only(host: Any) -> None:
    mounts = _json(host, "docker inspect minimax")[0]["Mounts"]
    assert [(m["Source"], m["Destination"], m["RW"]) for m in mounts] == [
        (MODEL_DIR, "/models/MiniMax-M2.5-REAP-172B-NVFP4", False)
    ]


def test_model_files_present(host: Any) -> None:
    manifest = json.loads(host.file(f"{MODEL_DIR}/.sparkfleet-manifest.json").content_string)
    assert manifest["repo_id"] == "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
    assert len(manifest["commit"]) == 40
    shards = [f"model-{i:05d}-of-00020.safetensors" for i in range(1, 21)]
    for name in [*shards, "config.json", "model.safetensors.index.json", "tokenizer.json"]:
        f = host.file(f"{MODEL_DIR}/{name}")
        assert f.is_file, name
        assert f.size == manifest["files"][name]["size"], name


def test_docker_has_the_nvidia_runtime(host: Any) -> None:
    assert "nvidia" in _json(host, "docker info --format '{{json .Runtimes}}'")


def test_endpoint_answers_the_cards_curl_example(host: Any) -> None:
    models = _json(host, "curl -fsS http://localhost:8000/v1/models")
    assert [m["id"] for m in models["data"]] == [SERVED]
    assert models["data"][0]["max_model_len"] == 65536
    body = json.dumps(
        {
            "model": SERVED,
            "messages": [{"role": "user", "content": "Hello! What can you do?"}],
            "max_tokens": 512,
            "temperature": 1.0,
            "top_p": 0.95,
            "top_k": 40,
            "min_p": 0.01,
        }
    )
    answer = _json(
        host,
        "curl -fsS http://localhost:8000/v1/chat/completions "
        "-H 'Content-Type: application/json' -d " + shlex.quote(body),
    )
    content = answer["choices"][0]["message"]["content"]
    assert content.startswith("<think>")
    assert content.split("</think>", 1)[1].strip()
