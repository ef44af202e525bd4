#!/bin/sh
# Stand-in for the entrypoint of avarok/dgx-vllm-nvfp4-kernel:v23, used only by the test lab.
#
# Source: entrypoint.sh of github.com/Avarok-Cybersecurity/dgx-vllm (the public repository the
# image is built from; the v23 tag's exact script is not published, so this follows the
# repository's current one, whose serve mode matches the image as inspected).
#
# Like the real one, "serve" (the default mode) builds the vLLM command line from MODEL,
# PORT (default 8888), HOST, GPU_MEMORY_UTIL, MAX_MODEL_LEN, MAX_NUM_SEQS and VLLM_EXTRA_ARGS
# and runs it unquoted: VLLM_EXTRA_ARGS is word-split, so quotes or JSON inside it reach the
# server as literal characters. The server is the stand-in's server.py
# (VLLM_STANDIN_SERVER, default /opt/vllm-standin/server.py).
#
# Ray, as in the real script: the node address is WORKER_IP, else HEAD_IP, else the IPv4
# address of NCCL_SOCKET_IFNAME (default enp1s0f0np0), else 127.0.0.1.
# - ray-head: `ray start --head --node-ip-address NODE_IP --port 6379 --dashboard-host=0.0.0.0
#   --num-gpus ${NUM_GPUS:-1} --disable-usage-stats`, then `tail -f /dev/null`: the container
#   outlives its Ray processes. The port is 6379 in every mode (not configurable). Ray's dashboard
#   (with the pair image's ray[default]) listens on 0.0.0.0:8265 and takes job submissions.
# - ray-worker: HEAD_IP required (exit 1 without it); `ray start --address HEAD_IP:6379
#   --node-ip-address NODE_IP --num-gpus ${NUM_GPUS:-1} --disable-usage-stats`, then the same
#   tail. `ray start` fails (exit 1) when the head cannot be reached.
# - serve with TENSOR_PARALLEL_SIZE > 1: HEAD_IP required (exit 1 without it); exports
#   RAY_ADDRESS=HEAD_IP:6379, VLLM_HOST_IP=HEAD_IP, MASTER_ADDR=HEAD_IP and passes
#   `--distributed-executor-backend ray --tensor-parallel-size N` (server.py and
#   ray_executor.py then do what vLLM does with them).
# Lab deviation, to fit several Ray nodes on a small machine: a small object store on both
# (VLLM_STANDIN_RAY_ARGS, default "--object-store-memory=80000000"). Ray is only in the pair
# stand-in image (sparklab/vllm-standin-ray); in the single-host one the Ray modes fail as a
# missing `ray` command does (exit 127).
set -eu

MODE="${1:-serve}"

if [ -n "${WORKER_IP:-}" ]; then
  NODE_IP="${WORKER_IP}"
elif [ -n "${HEAD_IP:-}" ]; then
  NODE_IP="${HEAD_IP}"
else
  NODE_IP="$(python3 "$(dirname "$0")/ifaddr.py" "${NCCL_SOCKET_IFNAME:-enp1s0f0np0}" 2>/dev/null || echo 127.0.0.1)"
fi
RAY_LAB_ARGS="${VLLM_STANDIN_RAY_ARGS:---object-store-memory=80000000}"

case "$MODE" in
  ray-head)
    echo "=== Starting Ray Head Node ==="
    echo "Node IP: ${NODE_IP}"
    # shellcheck disable=SC2086 # RAY_LAB_ARGS is a list of options
    ray start --head --node-ip-address="${NODE_IP}" --port=6379 \
      --dashboard-host=0.0.0.0 --num-gpus="${NUM_GPUS:-1}" --disable-usage-stats ${RAY_LAB_ARGS}
    echo "Ray head started at ${NODE_IP}:6379"
    exec tail -f /dev/null
    ;;
  ray-worker)
    echo "=== Starting Ray Worker Node ==="
    echo "Node IP: ${NODE_IP}"
    echo "Connecting to Ray head: ${HEAD_IP:-}:6379"
    if [ -z "${HEAD_IP:-}" ]; then
      echo "ERROR: HEAD_IP environment variable must be set for ray-worker mode"
      exit 1
    fi
    # shellcheck disable=SC2086
    ray start --address="${HEAD_IP}:6379" --node-ip-address="${NODE_IP}" \
      --num-gpus="${NUM_GPUS:-1}" --disable-usage-stats ${RAY_LAB_ARGS}
    echo "Ray worker started, connected to ${HEAD_IP}:6379"
    exec tail -f /dev/null
    ;;
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
    TENSOR_PARALLEL_SIZE="${TENSOR_PARALLEL_SIZE:-1}"
    echo "Model: ${MODEL}"
    echo "Port: ${PORT}"
    echo "Tensor Parallel Size: ${TENSOR_PARALLEL_SIZE}"
    DISTRIBUTED_ARGS=""
    if [ "${TENSOR_PARALLEL_SIZE}" -gt 1 ]; then
      if [ -z "${HEAD_IP:-}" ]; then
        echo "ERROR: HEAD_IP must be set for distributed execution (TP > 1)"
        exit 1
      fi
      echo "Distributed execution: connecting to Ray at ${HEAD_IP}:6379"
      export RAY_ADDRESS="${HEAD_IP}:6379" VLLM_HOST_IP="${HEAD_IP}" MASTER_ADDR="${HEAD_IP}"
      export RAY_memory_usage_threshold=0.98
      DISTRIBUTED_ARGS="--distributed-executor-backend ray --tensor-parallel-size ${TENSOR_PARALLEL_SIZE}"
    else
      echo "Single GPU execution"
    fi
    VLLM_CMD="serve ${MODEL} --host ${HOST} --port ${PORT} --max-model-len ${MAX_MODEL_LEN} --gpu-memory-utilization ${GPU_MEMORY_UTIL} --max-num-seqs ${MAX_NUM_SEQS} ${DISTRIBUTED_ARGS} ${VLLM_EXTRA_ARGS:-}"
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
    echo "Valid modes: ray-head, ray-worker, serve, bash" >&2
    exit 1
    ;;
esac
