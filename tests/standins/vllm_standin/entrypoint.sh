#!/bin/sh
# Stand-in for the entrypoint of avarok/dgx-vllm-nvfp4-kernel:v23, used only by the test lab.
#
# Like the real one, "serve" (the default mode) builds the vLLM command line from MODEL,
# PORT (default 8888), HOST, GPU_MEMORY_UTIL, MAX_MODEL_LEN, MAX_NUM_SEQS and VLLM_EXTRA_ARGS
# and runs it unquoted: VLLM_EXTRA_ARGS is word-split, so quotes or JSON inside it reach the
# server as literal characters. The server is the stand-in's server.py
# (VLLM_STANDIN_SERVER, default /opt/vllm-standin/server.py).
set -eu

MODE="${1:-serve}"

case "$MODE" in
  serve)
    echo "=== Starting vLLM Server ==="
    MODEL="${MODEL:-}"
    PORT="${PORT:-8888}"
    HOST="${HOST:-0.0.0.0}"
    MAX_MODEL_LEN="${MAX_MODEL_LEN:-131072}"
    GPU_MEMORY_UTIL="${GPU_MEMORY_UTIL:-0.75}"
    MAX_NUM_SEQS="${MAX_NUM_SEQS:-128}"
    if [ -z "$MODEL" ]; then
      echo "ERROR: MODEL environment variable must be set for serve mode" >&2
      echo "Example: MODEL=/models/MiniMax-M2.5-REAP-172B-NVFP4" >&2
      exit 1
    fi
    echo "Model: ${MODEL}"
    echo "Port: ${PORT}"
    VLLM_CMD="serve ${MODEL} --host ${HOST} --port ${PORT} --max-model-len ${MAX_MODEL_LEN} --gpu-memory-utilization ${GPU_MEMORY_UTIL} --max-num-seqs ${MAX_NUM_SEQS} ${VLLM_EXTRA_ARGS:-}"
    echo "Starting vLLM..."
    echo "Command: vllm ${VLLM_CMD}"
    # shellcheck disable=SC2086 # unquoted on purpose: the real entrypoint word-splits it too
    exec python3 "${VLLM_STANDIN_SERVER:-/opt/vllm-standin/server.py}" ${VLLM_CMD}
    ;;
  bash)
    exec /bin/bash
    ;;
  *)
    echo "Unknown mode: ${MODE}" >&2
    echo "Valid modes: serve, bash (the stand-in has no Ray modes)" >&2
    exit 1
    ;;
esac
