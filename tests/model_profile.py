"""The model profile as the tests read it: ``roles/model_profile/defaults/main.yml``, the one file
that holds the model card's verified single-Spark settings.

Tests take the card's values from here instead of copying them, and
``tests/unit/test_model_profile.py`` checks this file against the README's table of the card.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE_FILE = ROOT / "roles" / "model_profile" / "defaults" / "main.yml"


@dataclass(frozen=True)
class ModelProfile:
    """The profile's values, typed. Sizes in GB (10^9 bytes), lengths in tokens."""

    repo_id: str
    model_dir: str
    size_gb: float
    image: str
    image_size_gb: float
    served_model_name: str
    context_len: int
    max_model_len: int
    gpu_memory_util: float
    gpu_memory_util_max: float
    pair_max_model_len: int
    pair_gpu_memory_util: float
    kernel_env: dict[str, str]
    extra_args: list[str]
    sampling: dict[str, float]
    performance: dict[str, float]

    @property
    def model_mount(self) -> str:
        """The model's path inside the container, as vllm_service mounts it by default."""
        return "/models/" + os.path.basename(self.model_dir.rstrip("/"))

    def container_env(self, *, port: int = 18000, served: bool = True) -> dict[str, str]:
        """The container environment vllm_service writes for this profile with its defaults
        (no API key, no extra env): the card's kernel settings, the image's variables (vLLM on
        the host's loopback, 127.0.0.1:``port``, the role's vllm_internal_port), usage
        reporting off, and the access log quiet for /health and /metrics."""
        args = list(self.extra_args)
        if served:
            args += ["--served-model-name", self.served_model_name]
        args += ["--disable-access-log-for-endpoints", "/health,/metrics"]
        return {
            **self.kernel_env,
            "MODEL": self.model_mount,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MAX_MODEL_LEN": str(self.max_model_len),
            "GPU_MEMORY_UTIL": str(self.gpu_memory_util),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_EXTRA_ARGS": " ".join(args),
        }

    def chat_request(self, prompt: str, *, max_tokens: int = 512) -> dict[str, Any]:
        """An OpenAI chat-completion body as the card's examples send it (its sampling)."""
        return {
            "model": self.served_model_name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            **self.sampling,
        }


@functools.cache
def load(path: Path = PROFILE_FILE) -> ModelProfile:
    """Read the profile. Raises KeyError when a variable is missing from the file."""
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    v = {k.removeprefix("model_profile_"): val for k, val in data.items()}
    return ModelProfile(
        repo_id=v["repo_id"],
        model_dir=v["dir"],
        size_gb=float(v["size_gb"]),
        image=v["image"],
        image_size_gb=float(v["image_size_gb"]),
        served_model_name=v["served_model_name"],
        context_len=int(v["context_len"]),
        max_model_len=int(v["max_model_len"]),
        gpu_memory_util=float(v["gpu_memory_util"]),
        gpu_memory_util_max=float(v["gpu_memory_util_max"]),
        pair_max_model_len=int(v["pair_max_model_len"]),
        pair_gpu_memory_util=float(v["pair_gpu_memory_util"]),
        kernel_env={str(k): str(x) for k, x in v["kernel_env"].items()},
        extra_args=[str(a) for a in v["extra_args"]],
        sampling={str(k): x for k, x in v["sampling"].items()},
        performance={str(k): x for k, x in v["performance"].items()},
    )
