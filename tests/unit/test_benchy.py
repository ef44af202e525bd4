"""sparkfleet.benchy: the API key reaches llama-benchy's arguments from standard input only."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from llama_benchy import __main__ as benchy_main_module

from sparkfleet import benchy

pytestmark = pytest.mark.nolab


def test_the_key_from_stdin_is_added_inside_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(benchy_main_module, "main", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-secret\n"))
    benchy.main(["--api-key-stdin", "--base-url", "http://h:8000/v1"])
    assert seen == [["llama-benchy", "--base-url", "http://h:8000/v1", "--api-key", "sk-secret"]]


def test_without_the_flag_no_key_is_added_and_stdin_is_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(benchy_main_module, "main", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "stdin", io.StringIO("not-a-key\n"))
    benchy.main(["--base-url", "http://h:8000/v1"])
    assert seen == [["llama-benchy", "--base-url", "http://h:8000/v1"]]
    assert sys.stdin.read() == "not-a-key\n"


def test_an_empty_stdin_with_the_flag_exits_2_naming_the_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sparkfleet.benchy", "--api-key-stdin", "--help"],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode == 2, proc.stderr
    assert "--api-key-stdin given but standard input is empty" in proc.stderr
