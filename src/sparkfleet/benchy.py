"""Run llama-benchy with its API key read from standard input, never from argv or the environment.

``python -m sparkfleet.benchy [--api-key-stdin] ARGS...`` runs ``llama-benchy ARGS...``; with
``--api-key-stdin`` the first line of standard input is the key, and ``--api-key KEY`` is added to
llama-benchy's arguments inside this process only (``sys.argv``, never exec'd). The key so stays
out of the process list, out of every process's environment (Ansible's ``environment:`` keyword
prefixes the remote shell's command line, which ``ps`` shows), and out of Ansible's output when the
task that passes it (``ansible.builtin.command``'s ``stdin``) is ``no_log``.

Raises:
    SystemExit: with ``--api-key-stdin`` and an empty first line (status 2, as argparse exits).
"""

from __future__ import annotations

import sys

API_KEY_STDIN = "--api-key-stdin"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run llama-benchy with the given arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [API_KEY_STDIN]:
        args = args[1:]
        key = sys.stdin.readline().strip()
        if not key:
            print(f"sparkfleet.benchy: {API_KEY_STDIN} given but standard input is empty",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(2)
        args += ["--api-key", key]
    sys.argv = ["llama-benchy", *args]
    from llama_benchy.__main__ import main as benchy_main

    benchy_main()


if __name__ == "__main__":
    main()
