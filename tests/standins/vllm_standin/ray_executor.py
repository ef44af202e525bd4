"""The stand-in's Ray executor: what vLLM 0.16 does with Ray when ``vllm serve`` runs with
``--distributed-executor-backend ray --tensor-parallel-size N`` (the avarok entrypoint's serve
mode with ``TENSOR_PARALLEL_SIZE`` > 1), on a real Ray cluster (ray from PyPI).

Sources: the vllm==0.16.0 wheel, ``v1/executor/ray_utils.py`` (initialize_ray_cluster,
_wait_until_pg_ready, _verify_bundles) and ``v1/executor/ray_executor.py`` (_init_executor,
check_health).

- ``ray.init(address=None)`` joins the cluster named by ``RAY_ADDRESS`` (the entrypoint sets it to
  ``HEAD_IP:6379``); without a running cluster Ray raises ConnectionError, as in vLLM.
- The placement group is ``[{"GPU": 1.0}] * N``, the first bundle pinned to the driver's node by
  ``node:<VLLM_HOST_IP>`` = 0.001, strategy PACK. A driver node without a free GPU fails at once
  ("Current node has no GPU available. ..."). Otherwise vLLM waits for the group, logging every
  10, 20, 40 ... seconds, up to PG_WAIT_TIMEOUT (1800 s in vLLM; ``VLLM_STANDIN_PG_WAIT_SECONDS``
  shortens it in the lab), then raises ValueError("Cannot provide a placement group requiring N
  GPUs ..."). These ValueErrors end the engine core's start-up (exit 1).
- One actor per bundle stands for vLLM's RayWorkerWrapper. Each loads its part of the weights
  from the model path on its own node (``load_model`` run on every worker, as vLLM's
  collective_rpc("load_model") does), so a worker whose host lacks the model fails the start-up:
  ``check_local_weights`` below. vLLM's RayDistributedExecutor
  .check_health does nothing ("Assume that the Ray workers are healthy"): a worker that leaves
  while the server is idle goes unnoticed, /health stays 200; the next model step (a request)
  fails with Ray's ActorDiedError, which kills the engine (EngineDeadError).
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

PG_WAIT_TIMEOUT = 1800.0  # v1/executor/ray_utils.py
INDEX_FILE = "model.safetensors.index.json"  # transformers' SAFE_WEIGHTS_INDEX_NAME
MAX_HEADER_SIZE = 100_000_000  # safetensors' limit on a header (tensor.rs MAX_HEADER_SIZE)


def check_local_weights(model: str) -> int:
    """What one rank of vLLM 0.16 does with its own copy of the model before it loads its part
    of the weights; returns the number of safetensors shards it would read.

    Sources: the vllm==0.16.0 wheel, ``model_executor/model_loader/default_loader.py``
    (``_prepare_weights``: ``is_local = os.path.isdir(model)``, the ``*.safetensors`` glob,
    ``filter_duplicate_safetensors_files`` keeping the files the index names, then
    ``RuntimeError("Cannot find any model weights with `<model>`")``), ``weight_utils.py``
    (``download_weights_from_hf``: a path that is no directory is asked of the Hub as a repo id,
    which huggingface_hub's ``validate_repo_id`` refuses), and safetensors' ``safe_open`` of each
    shard (the 8-byte little-endian header length, the JSON header, the data it describes).

    Raises ValueError (the Hub's HFValidationError) when ``model`` is no directory (the unit's
    bind mount creates an empty one, so the role meets the next error); RuntimeError when it
    holds no weights; FileNotFoundError for a shard the index names and the directory lacks --
    stricter than vLLM, which loads the shards it finds and, for a quantized model, does not
    notice the missing weights; ValueError (safetensors' SafetensorError) for a shard whose
    header is unreadable or whose data is shorter than its header says.
    """
    if not os.path.isdir(model):
        if model.count("/") > 1:
            raise ValueError(
                "Repo id must be in the form 'repo_name' or 'namespace/repo_name':"
                f" '{model}'. Use `repo_type` argument if needed."
            )
        raise ValueError(
            "Repo id must use alphanumeric chars, '-', '_' or '.'. The name cannot start or end"
            f" with '-' or '.' and the maximum length is 96: '{model}'."
        )
    index = os.path.join(model, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            names = sorted(set(json.load(handle)["weight_map"].values()))
    else:
        names = sorted(n for n in os.listdir(model) if n.endswith(".safetensors"))
    if not names:
        raise RuntimeError(f"Cannot find any model weights with `{model}`")
    for name in names:
        path = os.path.join(model, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"[Errno 2] No such file or directory: '{path}'")
        _check_shard(path)
    return len(names)


def _check_shard(path: str) -> None:
    """safetensors' header checks of ``path`` (SafetensorError's words, as ValueError)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if length < 0 or length > MAX_HEADER_SIZE or length + 8 > size:
            raise ValueError(f"Error while deserializing header: header too large or short: {path}")
        try:
            header = json.loads(handle.read(length))
        except ValueError as exc:
            raise ValueError(
                f"Error while deserializing header: InvalidHeaderDeserialization: {path}"
            ) from exc
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    if 8 + length + max(ends, default=0) != size:
        raise ValueError(f"Error while deserializing header: MetadataIncompleteBuffer: {path}")


class RayWorkers:
    """The N worker actors of one placement group (bundle i holds rank i)."""

    def __init__(self, ray: Any, actors: list[Any], ips: list[str]) -> None:
        self.ray = ray
        self.actors = actors
        self.ips = ips

    def step(self, timeout: float = 60.0) -> None:
        """One model step on every worker; raises Ray's error (ActorDiedError, ...) when one
        is gone, as compiled-DAG execution does in vLLM."""
        self.ray.get([actor.execute_model.remote() for actor in self.actors], timeout=timeout)


def initialize(
    world_size: int,
    host_ip: str,
    wait_seconds: float,
    log: Callable[[str, str, str], None],
    model: str,
) -> RayWorkers:
    """Join the cluster, get the placement group, start one worker actor per GPU bundle and
    have each load the weights of ``model`` (a path) on its own node.

    Raises ValueError with vLLM's messages (above), ConnectionError when there is no cluster,
    Ray's RayTaskError (naming the worker's node and the error of ``check_local_weights``)
    when a worker cannot load its weights.
    ``log(level, where, message)`` prints in vLLM's format.
    """
    ray: Any = importlib.import_module("ray")  # only in the pair image
    # the workers' check_local_weights travels with them (this module is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    state: Any = importlib.import_module("ray._private.state")  # vLLM imports it from here too
    strategies: Any = importlib.import_module("ray.util.scheduling_strategies")

    ray.init(address=None, logging_level="WARNING", log_to_driver=False)
    log(
        "INFO",
        "ray_utils.py:402",
        "No current placement group found. Creating a new placement group.",
    )
    if ray.cluster_resources().get("GPU", 0) < world_size:
        log(
            "WARNING",
            "ray_utils.py:408",
            "The number of required GPUs exceeds the total number of available GPUs in the "
            "placement group.",
        )
    specs: list[dict[str, float]] = [{"GPU": 1.0} for _ in range(world_size)]
    node_id = ray.get_runtime_context().get_node_id()
    node_resources = state.available_resources_per_node().get(node_id, {})
    if node_resources.get("GPU", 0) < 1:
        raise ValueError(
            f"Current node has no GPU available. current_node_resource={node_resources!r}. "
            "vLLM engine cannot start without GPU. Make sure you have at least 1 GPU available "
            f"in a node current_node_id={node_id!r} current_ip={host_ip!r}."
        )
    specs[0][f"node:{host_ip}"] = 0.001
    group = ray.util.placement_group(specs, strategy="PACK")
    _wait_until_ready(ray, group, specs, wait_seconds, log)

    class Worker:
        """RayWorkerWrapper's part the stand-in needs: where it runs, a model step. Defined
        here, so that Ray ships it to the nodes by value (the module is not on their path)."""

        def node_ip(self) -> str:
            return str(ray.util.get_node_ip_address())

        def execute_model(self) -> bool:
            return True

        def load_model(self, path: str) -> int:
            return check_local_weights(path)

    worker = ray.remote(num_cpus=0, num_gpus=1)(Worker)
    actors = [
        worker.options(
            scheduling_strategy=strategies.PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=rank
            )
        ).remote()
        for rank in range(world_size)
    ]
    ips = ray.get([actor.node_ip.remote() for actor in actors], timeout=wait_seconds)
    log("INFO", "ray_executor.py:90", f"Ray workers (rank: node ip): {dict(enumerate(ips))}")
    # gpu_model_runner.py load_model on every rank (collective_rpc), each from its own disk
    shards = ray.get([actor.load_model.remote(model) for actor in actors])
    log("INFO", "default_loader.py:314", f"Weights found on every rank (shards: {shards})")
    return RayWorkers(ray, actors, ips)


def _wait_until_ready(
    ray: Any,
    group: Any,
    specs: list[dict[str, float]],
    wait_seconds: float,
    log: Callable[[str, str, str], None],
) -> None:
    """ray_utils._wait_until_pg_ready: wait with doubling log intervals, then vLLM's error."""
    started = time.time()
    ready_ref = group.ready()
    interval = 10.0
    while time.time() - started < wait_seconds:
        left = wait_seconds - (time.time() - started)
        ready, _ = ray.wait([ready_ref], timeout=min(interval, max(left, 0.1)))
        if ready:
            return
        interval *= 2
        log(
            "INFO",
            "ray_utils.py:252",
            f"Waiting for creating a placement group of specs for {int(time.time() - started)} "
            f"seconds. specs={specs}. Check `ray status` and `ray list nodes` to see if you have "
            "enough resources, and make sure the IP addresses used by ray cluster are the same "
            "as VLLM_HOST_IP environment variable specified in each node if you are running on "
            "a multi-node.",
        )
    gpus = sum(spec.get("GPU", 0) for spec in specs)
    raise ValueError(
        f"Cannot provide a placement group requiring {gpus} GPUs (placement_group_specs={specs}) "
        f"within {int(wait_seconds)} seconds.\nTensor parallel size may exceed available GPUs in "
        "your cluster. Check resources with `ray status` and `ray list nodes`.\nIf running on "
        "K8s with limited GPUs, consider reducing --tensor-parallel-size to match available GPU "
        "resources."
    )
