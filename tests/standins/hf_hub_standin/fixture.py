"""Stand-in for the Hugging Face Hub, used only by the project's test lab: synthetic repo builder.

Builds, on disk, a synthetic model repository with the layout of
``saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10`` (config, generation config, safetensors index,
N safetensors shards, tokenizer files, README, .gitattributes) so that the stand-in Hub server
(``server.py``) can serve it. The weights are random bytes from a seeded PRNG laid out as valid
safetensors files; the tokenizer is a small byte-level BPE trained on generated text. Nothing in
it is usable for inference: it exists so that downloads, checksums and file layouts can be tested.

Output::

    DIR/files/<repo files>
    DIR/repo.json          commit sha, and per file: size, sha256, git blob oid, LFS flag

CLI::

    python fixture.py --out DIR [--shard-size BYTES] [--shards N] [--seed S]

The output is deterministic: the same arguments give byte-identical files and the same commit
sha. Shards are written in streaming fashion (a shard is never held in memory). Only the stdlib is
used, plus ``tokenizers`` (imported lazily, only to build ``tokenizer.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_REPO_ID = "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
DEFAULT_SHARD_SIZE = 1 << 20
DEFAULT_SHARDS = 20
LFS_MIN_SIZE = 10 * 1000 * 1000
# Fixed timestamps keep repo.json deterministic.
CREATED_AT = "2026-02-20T00:00:00.000Z"
LAST_MODIFIED = "2026-02-21T00:00:00.000Z"
WRITE_CHUNK = 1 << 20

# Architecture facts of MiniMax-M2.5 (REAP-pruned to 192 experts) as published with the model.
NUM_LAYERS = 62
NUM_EXPERTS = 192
HIDDEN_SIZE = 3072

SPECIAL_TOKENS = [
    "]~!b[",
    "]~b]",
    "[e~[",
    "<think>",
    "</think>",
    "<minimax:tool_call>",
    "</minimax:tool_call>",
]
BOS_TOKEN = "]~!b["
EOS_TOKEN = "[e~["

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "]~!b[]~b]system\nYou are a helpful assistant.[e~[\n"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "]~!b[]~b]system\n{{ message['content'] }}[e~[\n"
    "{%- elif message['role'] == 'user' -%}"
    "]~b]user\n{{ message['content'] }}[e~[\n"
    "{%- elif message['role'] == 'assistant' -%}"
    "]~b]ai\n{{ message['content'] }}[e~[\n"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}]~b]ai\n<think>\n{%- endif -%}"
)

GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
tokenizer.json filter=lfs diff=lfs merge=lfs -text
"""

README = """\
---
license: other
license_name: modified-mit
library_name: transformers
pipeline_tag: text-generation
base_model: cerebras/MiniMax-M2.5-REAP-172B-A10B
tags:
- minimax_m2
- moe
- reap
- nvfp4
- compressed-tensors
---

# MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10 (synthetic test fixture)

This repository is a synthetic fixture served by a stand-in for the Hugging Face Hub in a test lab.
It mirrors the file layout of `saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10`: an NVFP4
(compressed-tensors) quantization of `cerebras/MiniMax-M2.5-REAP-172B-A10B`, a REAP prune of
`MiniMaxAI/MiniMax-M2.5` from 256 to 192 experts, 20 safetensors shards.

`config.json` carries the published architecture fields. Everything else is synthetic: the shard
contents are random bytes (valid safetensors files with made-up tensor shapes), and the tokenizer
is a small byte-level BPE with MiniMax-style special tokens. Nothing here can run inference.
"""


@dataclass(frozen=True)
class Tensor:
    """One tensor of a shard: name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Byte length of the tensor's data."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * DTYPE_SIZES[self.dtype]


DTYPE_SIZES = {"U8": 1, "F8_E4M3": 1, "BF16": 2, "F32": 4}
PACKED_COLS = 64  # bytes per packed row (two FP4 values per byte)
SCALE_COLS = PACKED_COLS * 2 // 16  # one F8 scale per group of 16 FP4 values
NORM_DIM = 64
SMALL_DIM = 8


def shard_name(index: int, total: int) -> str:
    """File name of shard ``index`` (1-based) out of ``total``."""
    return f"model-{index:05d}-of-{total:05d}.safetensors"


def _layers_of_shard(shard: int, shards: int) -> list[int]:
    return [layer for layer in range(NUM_LAYERS) if layer * shards // NUM_LAYERS == shard]


def _quantized_linear(prefix: str, rows: int) -> list[Tensor]:
    return [
        Tensor(f"{prefix}.weight_packed", "U8", (rows, PACKED_COLS)),
        Tensor(f"{prefix}.weight_scale", "F8_E4M3", (rows, SCALE_COLS)),
        Tensor(f"{prefix}.weight_global_scale", "F32", (1,)),
        Tensor(f"{prefix}.input_global_scale", "F32", (1,)),
    ]


def _linear_prefixes(layer: int) -> list[str]:
    base = f"model.layers.{layer}"
    prefixes = [f"{base}.self_attn.{proj}" for proj in ("q_proj", "k_proj", "v_proj", "o_proj")]
    prefixes += [f"{base}.block_sparse_moe.experts.0.{w}" for w in ("w1", "w2", "w3")]
    return prefixes


def _shard_tensors(shard: int, shards: int, rows: int) -> list[Tensor]:
    tensors: list[Tensor] = []
    if shard == 0:
        tensors.append(Tensor("model.embed_tokens.weight", "BF16", (256, NORM_DIM)))
    for layer in _layers_of_shard(shard, shards):
        base = f"model.layers.{layer}"
        tensors += [
            Tensor(f"{base}.input_layernorm.weight", "BF16", (NORM_DIM,)),
            Tensor(f"{base}.post_attention_layernorm.weight", "BF16", (NORM_DIM,)),
            Tensor(f"{base}.self_attn.q_norm.weight", "BF16", (NORM_DIM,)),
            Tensor(f"{base}.self_attn.k_norm.weight", "BF16", (NORM_DIM,)),
            Tensor(f"{base}.block_sparse_moe.gate.weight", "BF16", (NUM_EXPERTS, SMALL_DIM)),
            Tensor(f"{base}.block_sparse_moe.e_score_correction_bias", "F32", (NUM_EXPERTS,)),
        ]
        for prefix in _linear_prefixes(layer):
            tensors += _quantized_linear(prefix, rows)
    if shard == shards - 1:
        tensors.append(Tensor("model.norm.weight", "BF16", (NORM_DIM,)))
        tensors.append(Tensor("lm_head.weight", "BF16", (256, NORM_DIM)))
    return sorted(tensors, key=lambda t: t.name)


def _header_bytes(tensors: list[Tensor]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        end = offset + tensor.nbytes
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def plan_shard(shard: int, shards: int, shard_size: int) -> tuple[list[Tensor], bytes]:
    """Tensors and header of shard ``shard`` (0-based), sized to about ``shard_size`` bytes."""
    probe = _shard_tensors(shard, shards, 1)
    fixed = sum(t.nbytes for t in probe)
    per_row = sum(t.nbytes for t in probe if t.name.endswith(("weight_packed", "weight_scale")))
    header_len = len(_header_bytes(_shard_tensors(shard, shards, max(1, shard_size))))
    budget = shard_size - 8 - header_len - fixed
    rows = max(1, budget // max(1, per_row))
    tensors = _shard_tensors(shard, shards, rows)
    return tensors, _header_bytes(tensors)


class _Hasher:
    """Computes the sha256 and the git blob oid of a file while it is written."""

    def __init__(self, size: int) -> None:
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(f"blob {size}\0".encode())

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.git.update(data)


def _random_chunks(seed: str, length: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    remaining = length
    while remaining > 0:
        n = min(WRITE_CHUNK, remaining)
        yield rng.randbytes(n)
        remaining -= n


def _file_record(path: str, size: int, hasher: _Hasher) -> dict[str, Any]:
    sha256 = hasher.sha256.hexdigest()
    is_lfs = path.endswith(".safetensors") or path == "tokenizer.json" or size >= LFS_MIN_SIZE
    record: dict[str, Any] = {
        "path": path,
        "size": size,
        "sha256": sha256,
        "git_oid": hasher.git.hexdigest(),
        "lfs": is_lfs,
    }
    if is_lfs:
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
        ).encode()
        record["pointer_size"] = len(pointer)
        record["pointer_oid"] = hashlib.sha1(
            f"blob {len(pointer)}\0".encode() + pointer
        ).hexdigest()
    return record


def _write_bytes(files_dir: Path, path: str, data: bytes) -> dict[str, Any]:
    target = files_dir / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    hasher = _Hasher(len(data))
    hasher.update(data)
    return _file_record(path, len(data), hasher)


def _write_json(files_dir: Path, path: str, obj: Any) -> dict[str, Any]:
    return _write_bytes(files_dir, path, (json.dumps(obj, indent=2) + "\n").encode())


def _write_shard(
    files_dir: Path, name: str, header: bytes, tensors: list[Tensor], seed: int
) -> dict[str, Any]:
    data_len = sum(t.nbytes for t in tensors)
    size = 8 + len(header) + data_len
    hasher = _Hasher(size)
    with open(files_dir / name, "wb") as out:
        for piece in (len(header).to_bytes(8, "little"), header):
            out.write(piece)
            hasher.update(piece)
        for chunk in _random_chunks(f"hf-hub-standin:{seed}:{name}", data_len):
            out.write(chunk)
            hasher.update(chunk)
    return _file_record(name, size, hasher)


_COMMON_WORDS = (
    "the of and to in is that for it as with was on be by at this are from or have an they",
    "which one you were her all she there would their we him been has when who will more",
    "no if out so said what up its about into than them can only other new some could time",
    "these two may then do first any my now such like our over man me even most made after",
    "also did many before must through back years where much your way well down should",
    "because each just those people how too little state good very make world still own",
    "see men work long get here between both life being under never day same another know",
    "while last might us great old year off come since against go came right used take",
    "three model server token weight expert layer shard download cache spark network memory",
    "hello world think answer question tool call function result value number",
)


def _training_text(seed: int) -> list[str]:
    rng = random.Random(f"hf-hub-standin:{seed}:tokenizer-text")
    common = " ".join(_COMMON_WORDS).split()
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w"]
    onsets += ["br", "cl", "dr", "fr", "gl", "pl", "pr", "sh", "st", "str", "th", "tr", "wh"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "io", "oo", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "nt", "rk", "st", "ck", "sh"]
    suffixes = ["", "", "", "s", "ed", "ing", "er", "ly", "tion", "ment", "ness", "able", "ity"]
    invented = []
    for _ in range(6000):
        word = "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
            for _ in range(rng.randint(1, 3))
        )
        invented.append(word + rng.choice(suffixes))
    lines = []
    for _ in range(12000):
        words = [
            rng.choice(common) if rng.random() < 0.6 else rng.choice(invented)
            for _ in range(rng.randint(4, 18))
        ]
        sentence = " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!", ","])
        if rng.random() < 0.1:
            sentence += f" {rng.randint(0, 100000)}"
        lines.append(sentence)
    return lines


def build_tokenizer_json(seed: int, vocab_size: int = 4096) -> tuple[str, dict[str, int]]:
    """A byte-level BPE tokenizer (JSON text) and the ids of its special tokens."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(seed), trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS]
    )
    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise RuntimeError(f"special token {token!r} missing from the tokenizer")
        ids[token] = token_id
    return tokenizer.to_str(pretty=True) + "\n", ids


def model_config(bos_id: int, eos_id: int) -> dict[str, Any]:
    """config.json: the published MiniMax-M2.5 REAP-172B architecture, NVFP4 compressed-tensors."""
    quant_args: dict[str, Any] = {
        "actorder": None,
        "block_structure": None,
        "dynamic": False,
        "group_size": 16,
        "num_bits": 4,
        "observer": "minmax",
        "observer_kwargs": {},
        "strategy": "tensor_group",
        "symmetric": True,
        "type": "float",
    }
    return {
        "architectures": ["MiniMaxM2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": 0.02,
        "intermediate_size": 1536,
        "max_position_embeddings": 196608,
        "model_type": "minimax_m2",
        "num_attention_heads": 48,
        "num_experts_per_tok": 8,
        "num_hidden_layers": NUM_LAYERS,
        "num_key_value_heads": 8,
        "num_local_experts": NUM_EXPERTS,
        "output_router_logits": False,
        "qk_norm_type": "per_layer",
        "rms_norm_eps": 1e-06,
        "rope_theta": 5000000,
        "rotary_dim": 64,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "scoring_func": "sigmoid",
        "shared_intermediate_size": 0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "use_cache": True,
        "use_qk_norm": True,
        "use_routing_bias": True,
        "vocab_size": 200064,
        "quantization_config": {
            "config_groups": {
                "group_0": {
                    "format": "nvfp4-pack-quantized",
                    "input_activations": {**quant_args, "dynamic": "local"},
                    "output_activations": None,
                    "targets": ["Linear"],
                    "weights": quant_args,
                }
            },
            "format": "nvfp4-pack-quantized",
            "global_compression_ratio": None,
            "ignore": ["lm_head", "model.embed_tokens", "re:.*block_sparse_moe\\.gate$"],
            "kv_cache_scheme": None,
            "quant_method": "compressed-tensors",
            "quantization_status": "compressed",
            "sparsity_config": {},
            "transform_config": {},
            "version": "0.12.2",
        },
    }


def build_fixture(
    out: Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    shards: int = DEFAULT_SHARDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the synthetic repo under ``out`` and return the repo metadata (also in repo.json)."""
    if not 1 <= shards <= NUM_LAYERS:
        raise ValueError(f"shards must be between 1 and {NUM_LAYERS}")
    if shard_size < 1:
        raise ValueError("shard-size must be positive")
    files_dir = out / "files"
    if files_dir.exists():
        shutil.rmtree(files_dir)
    files_dir.mkdir(parents=True)
    (out / "repo.json").unlink(missing_ok=True)

    records: list[dict[str, Any]] = []
    tokenizer_text, special_ids = build_tokenizer_json(seed)
    bos_id, eos_id = special_ids[BOS_TOKEN], special_ids[EOS_TOKEN]
    records.append(_write_bytes(files_dir, "tokenizer.json", tokenizer_text.encode()))
    records.append(_write_bytes(files_dir, ".gitattributes", GITATTRIBUTES.encode()))
    records.append(_write_bytes(files_dir, "README.md", README.encode()))
    records.append(_write_json(files_dir, "config.json", model_config(bos_id, eos_id)))
    records.append(
        _write_json(
            files_dir,
            "generation_config.json",
            {
                "bos_token_id": bos_id,
                "do_sample": True,
                "eos_token_id": eos_id,
                "temperature": 1.0,
                "top_k": 40,
                "top_p": 0.95,
                "transformers_version": "4.57.1",
            },
        )
    )
    records.append(
        _write_json(
            files_dir,
            "tokenizer_config.json",
            {
                "add_bos_token": False,
                "add_eos_token": False,
                "add_prefix_space": False,
                "added_tokens_decoder": {
                    str(special_ids[t]): {
                        "content": t,
                        "lstrip": False,
                        "normalized": False,
                        "rstrip": False,
                        "single_word": False,
                        "special": True,
                    }
                    for t in SPECIAL_TOKENS
                },
                "bos_token": BOS_TOKEN,
                "chat_template": CHAT_TEMPLATE,
                "clean_up_tokenization_spaces": False,
                "eos_token": EOS_TOKEN,
                "model_max_length": 196608,
                "tokenizer_class": "GPT2Tokenizer",
            },
        )
    )

    weight_map: dict[str, str] = {}
    total_size = 0
    for shard in range(shards):
        name = shard_name(shard + 1, shards)
        tensors, header = plan_shard(shard, shards, shard_size)
        records.append(_write_shard(files_dir, name, header, tensors, seed))
        for tensor in tensors:
            weight_map[tensor.name] = name
            total_size += tensor.nbytes
    records.append(
        _write_json(
            files_dir,
            "model.safetensors.index.json",
            {
                "metadata": {"total_size": total_size},
                "weight_map": dict(sorted(weight_map.items())),
            },
        )
    )

    records.sort(key=lambda r: str(r["path"]))
    commit = hashlib.sha1()
    for record in records:
        commit.update(f"{record['path']}\0{record['git_oid']}\n".encode())
    meta: dict[str, Any] = {
        "format": 1,
        "repo_id": DEFAULT_REPO_ID,
        "sha": commit.hexdigest(),
        "created_at": CREATED_AT,
        "last_modified": LAST_MODIFIED,
        "generator": {"shard_size": shard_size, "shards": shards, "seed": seed},
        "total_size": sum(int(r["size"]) for r in records),
        "files": records,
    }
    tmp = out / "repo.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "repo.json")
    return meta


def derive_commit(src: Path, dst: Path, changes: dict[str, bytes]) -> dict[str, Any]:
    """A second commit of the repo in ``src``, written to ``dst``: ``changes`` maps paths to
    their new contents (a path not in ``src`` is added); every other file is hard-linked (or
    copied) unchanged. The new commit's sha covers the parent's sha and the changes, so the same
    changes to the same parent give the same commit. Returns the new repo.json."""
    meta: dict[str, Any] = json.loads((src / "repo.json").read_text())
    shutil.rmtree(dst, ignore_errors=True)
    records = {str(r["path"]): dict(r) for r in meta["files"]}
    for path in records:
        target = dst / "files" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path in changes:
            continue
        try:
            os.link(src / "files" / path, target)
        except OSError:
            shutil.copyfile(src / "files" / path, target)
    commit = hashlib.sha1(f"parent {meta['sha']}\n".encode())
    for path, data in sorted(changes.items()):
        records[path] = _write_bytes(dst / "files", path, data)
        commit.update(f"{path}\0{records[path]['git_oid']}\n".encode())
    files = sorted(records.values(), key=lambda r: str(r["path"]))
    derived = dict(meta, sha=commit.hexdigest(), files=files, generator={"parent": meta["sha"]})
    derived["total_size"] = sum(int(r["size"]) for r in files)
    (dst / "repo.json").write_text(json.dumps(derived, indent=1, sort_keys=True) + "\n")
    return derived


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the synthetic model repo served by the stand-in Hugging Face Hub."
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="approximate bytes per shard"
    )
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="number of shards")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        meta = build_fixture(
            args.out, shard_size=args.shard_size, shards=args.shards, seed=args.seed
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(
        f"wrote {len(meta['files'])} files, {meta['total_size']} bytes, commit {meta['sha']}"
        f" to {args.out} in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
