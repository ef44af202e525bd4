"""Run llama-benchy with its API key taken from the environment, never from the command line.

``python -m sparkfleet.benchy ARGS...`` runs ``llama-benchy ARGS...``; when
``SPARKFLEET_BENCH_API_KEY`` is set, ``--api-key`` is added inside this process only, so the key
does not appear in the process list or in Ansible's task output.
"""

from __future__ import annotations

import os
import sys

API_KEY_ENV = "SPARKFLEET_BENCH_API_KEY"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run llama-benchy with the given arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    key = os.environ.pop(API_KEY_ENV, "")
    if key:
        args += ["--api-key", key]
    sys.argv = ["llama-benchy", *args]
    from llama_benchy.__main__ import main as benchy_main

    benchy_main()


if __name__ == "__main__":
    main()
