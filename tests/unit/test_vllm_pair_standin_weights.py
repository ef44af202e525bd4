"""The pair stand-in's worker ranks read their own copy of the model (``ray_executor``
``check_local_weights``), without Ray or the lab: what vLLM 0.16's loader and safetensors'
``safe_open`` do with the files on a rank's node, on small safetensors files written here in the
format's layout (8-byte little-endian header length, JSON header, data). The same check running
in a Ray actor on a worker node is exercised in the lab (``test_vllm_pair_standin_lab.py``)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.standins.vllm_standin import ray_executor

pytestmark = pytest.mark.nolab


def shard(path: Path, tensors: dict[str, int]) -> None:
    """A safetensors file of uint8 tensors ``{name: length in bytes}``."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, size in tensors.items():
        header[name] = {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def model(where: Path) -> Path:
    """A model directory of two shards and their index."""
    shard(where / "model-00001-of-00002.safetensors", {"a.weight": 64, "b.weight": 32})
    shard(where / "model-00002-of-00002.safetensors", {"c.weight": 16})
    weight_map = {"a.weight": "model-00001-of-00002.safetensors",
                  "b.weight": "model-00001-of-00002.safetensors",
                  "c.weight": "model-00002-of-00002.safetensors"}  # fmt: skip
    (where / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return where


def test_a_complete_copy_is_read(tmp_path: Path) -> None:
    assert ray_executor.check_local_weights(str(model(tmp_path))) == 2


def test_shards_without_an_index_are_found(tmp_path: Path) -> None:
    (model(tmp_path) / "model.safetensors.index.json").unlink()
    assert ray_executor.check_local_weights(str(tmp_path)) == 2


def test_an_empty_directory_has_no_weights(tmp_path: Path) -> None:
    # what a worker whose host lacks the model meets: the unit's bind mount makes the directory
    with pytest.raises(RuntimeError, match=r"^Cannot find any model weights with `.*`$"):
        ray_executor.check_local_weights(str(tmp_path))


def test_no_directory_is_asked_of_the_hub(tmp_path: Path) -> None:
    missing = str(tmp_path / "models" / "MiniMax")
    with pytest.raises(ValueError, match="Repo id must be in the form 'repo_name' or"):
        ray_executor.check_local_weights(missing)


def test_a_shard_the_index_names_must_be_there(tmp_path: Path) -> None:
    (model(tmp_path) / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model-00002-of-00002\.safetensors"):
        ray_executor.check_local_weights(str(tmp_path))


def test_a_truncated_shard_is_refused(tmp_path: Path) -> None:
    path = model(tmp_path) / "model-00001-of-00002.safetensors"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="MetadataIncompleteBuffer"):
        ray_executor.check_local_weights(str(tmp_path))


def test_a_shard_with_a_broken_header_is_refused(tmp_path: Path) -> None:
    path = model(tmp_path) / "model-00002-of-00002.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"{" * (len(raw) - 8))
    with pytest.raises(ValueError, match="Error while deserializing header"):
        ray_executor.check_local_weights(str(tmp_path))
