"""Print the digest under which the lab registry holds this tree's vLLM stand-in image.

The lab registry's tag ``avarok/dgx-vllm-nvfp4-kernel:v23`` follows whichever checkout
published last; the scenario pins the image by this digest (``vllm_image_digest``) so that it
runs the stand-in built from this tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.lab import images, services
from tests.lab.config import VLLM_IMAGE, LabConfig


def digest(cfg: LabConfig) -> str:
    """The registry digest of this tree's stand-in, publishing it when it is not there yet."""
    ref = images.build_vllm_standin(cfg, images.build_base(cfg))
    repo = f"{cfg.registry_push}/{VLLM_IMAGE.split(':', 1)[0]}@"
    for _ in range(2):
        out = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", ref],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = [d.split("@", 1)[1] for d in json.loads(out) or [] if d.startswith(repo)]
        if found:
            return found[0]
        services.push_vllm_image(cfg, ref)
    raise SystemExit(f"{ref} has no digest in the lab registry after a push")


if __name__ == "__main__":
    print(digest(LabConfig()))
