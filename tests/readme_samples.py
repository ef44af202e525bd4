"""Record the README's sample outputs from current runs and write them into README.md.

Each sample in the README is the code block right after a marker line
``<!-- sample: NAME -->``; this script runs what the sample shows and replaces the block.

    .venv/bin/python -m tests.readme_samples            # every sample (needs the lab)
    .venv/bin/python -m tests.readme_samples help bench # only these (no lab needed)

Samples:

- ``help``, ``deploy-help``: ``sparkfleet --help`` and ``sparkfleet deploy --help`` (80 columns);
  ``tests/unit/test_readme_samples.py`` checks that the README holds what they print now.
- ``preflight-terminal``, ``preflight-plain``: ``sparkfleet preflight`` on three hosts (a
  simulated Spark of its own, ``readme-sim-1``; the same host with ``spark_preflight_expected_
  arch=aarch64``; an address no host has), as the terminal view ends (the live table and the
  summary, rendered by the CLI's own ``HostBoard`` and ``print_summary``) and as plain lines (the
  CLI's output to a pipe; lines between the first results and the last are cut to ``[...]``).
- ``bench``: ``playbooks/benchmark.yml`` on the controller against a vLLM stand-in started here
  at the model card's rates: the fleet table as the play prints it, and the host's TTFT row.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKER = re.compile(
    r"^<!-- sample: (?P<name>[\w-]+) -->\n```[^\n]*\n(?P<body>.*?)^```$", re.M | re.S
)
NO_HOST_ADDRESS = "172.29.78.254"  # on the lab network, held by no container


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _env(**more: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1", **more}


def cli(*argv: str, cwd: Path = REPO) -> str:
    """``sparkfleet ARGV`` to a pipe, 80 columns: its output (stdout then stderr)."""
    proc = subprocess.run(
        [_bin("sparkfleet"), *argv],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        check=False,
    )
    return proc.stdout + proc.stderr


def sample_help() -> str:
    """``sparkfleet --help``."""
    return "$ sparkfleet --help\n" + cli("--help")


def sample_deploy_help() -> str:
    """``sparkfleet deploy --help``."""
    return "$ sparkfleet deploy --help\n" + cli("deploy", "--help")


def _preflight_inventory(work: Path) -> tuple[Path, Callable[[], None]]:
    import yaml

    from tests.lab import access, hosts
    from tests.lab.config import LabConfig

    cfg = LabConfig(host_prefix="readme-sim", host_label="sparklab.readme")
    hosts.remove_hosts(cfg)
    (host,) = hosts.start_hosts(cfg, 1, f"{cfg.sim_image}:latest")
    ssh = access.ansible_host_vars(cfg, hosts.host_address(cfg, host), sudo_password=False)
    group_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/spark.yml").read_text())
    members = {
        host: ssh,
        "readme-sim-bad": {**ssh, "spark_preflight_expected_arch": "aarch64"},
        "readme-sim-gone": {**ssh, "ansible_host": NO_HOST_ADDRESS},
    }
    inventory = work / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"spark": {"vars": group_vars, "hosts": members}}))
    return inventory, lambda: hosts.remove_hosts(cfg)


def sample_preflight(work: Path) -> dict[str, str]:
    """The preflight of three hosts, as the terminal view ends and as plain lines."""
    from rich.console import Console

    from sparkfleet import Fleet
    from sparkfleet.display import HostBoard, print_summary

    inventory, cleanup = _preflight_inventory(work)
    try:
        plain = cli("preflight", "-i", str(inventory), cwd=work)
        board = HostBoard(title="sparkfleet preflight (site.yml)")
        result = Fleet(str(inventory)).preflight(on_event=board.update)
        board.finish(result)
        with open(os.devnull, "w") as devnull:
            console = Console(record=True, width=240, color_system=None, file=devnull)
            console.print(board.render())
            print_summary(console, result)
            terminal = console.export_text()
    finally:
        cleanup()
    lines = plain.splitlines()
    tail_from = next(i for i, line in enumerate(lines) if line.startswith("preflight ("))
    facts = [i for i, line in enumerate(lines[:tail_from]) if "Gathering Facts" in line]
    keep_to = max(facts) + 2  # the first results, and the first task after them
    failed = [ln for ln in lines[keep_to:tail_from] if " failed " in ln]
    cut = [*lines[:keep_to], "[...]", *failed, *(["[...]"] if failed else []), *lines[tail_from:]]
    return {
        "preflight-terminal": "\n".join(ln.rstrip() for ln in terminal.splitlines()) + "\n",
        "preflight-plain": "\n".join(cut) + "\n",
    }


def sample_bench(work: Path) -> str:
    """benchmark.yml against a local vLLM stand-in at the card's rates: the fleet table."""
    import tokenizers

    from tests import model_profile
    from tests.unit.test_vllm_standin import CARD_ARGS, launch, make_model_dir

    model = make_model_dir(work)
    corpus = (REPO / "roles/llm_benchmark/files/prompt-corpus.txt").read_text().split()
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(corpus)))}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = tokenizers.decoders.WordPiece()  # joins the words with spaces
    tokenizer.save(str(model / "tokenizer.json"))
    card = model_profile.load().performance
    standin = launch(
        work,
        model,
        CARD_ARGS,
        VLLM_STANDIN_PREFILL_TPS=str(card["prefill_512_tps"]),
        VLLM_STANDIN_DECODE_TPS=str(card["decode_tps"]),
    )
    try:
        standin.wait_ready()
        inventory = work / "local.yml"
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        inventory.write_text(json.dumps({"spark": {"hosts": {"spark-01": local}}}))
        extra = {
            "llm_benchmark_base_url": f"{standin.base}/v1",
            "llm_benchmark_model_dir": str(model),
            "llm_benchmark_served_model_name": str(model),
            "llm_benchmark_results_dir": str(work / "results"),
            "llm_benchmark_decode_tokens": 32,
            "llm_benchmark_long_context_tokens": 2048,
            "llm_benchmark_runs": 2,
        }
        subprocess.run(
            [_bin("ansible-playbook"), "-i", str(inventory), "playbooks/benchmark.yml",
             "-e", json.dumps(extra)],
            capture_output=True, text=True, cwd=REPO, check=True,
            env=_env(ANSIBLE_CONFIG=str(REPO / "ansible.cfg")),
        )  # fmt: skip
    finally:
        standin.stop()
    (run_dir,) = (work / "results").iterdir()
    table = [ln for ln in (run_dir / "fleet.md").read_text().splitlines() if ln.startswith("|")]
    ttft = [ln for ln in (run_dir / "spark-01.md").read_text().splitlines() if "| TTFT" in ln]
    return "\n".join([*table, "", "spark-01.md:", *ttft]) + "\n"


def write(samples: dict[str, str], readme: Path = README) -> list[str]:
    """Put each sample into the block after its marker; the names written."""
    text = readme.read_text()
    done: list[str] = []

    def put(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in samples:
            return match.group(0)
        done.append(name)
        head = match.group(0)[: match.start("body") - match.start(0)]
        return head + samples[name] + "```"

    readme.write_text(MARKER.sub(put, text))
    return done


def recorded(readme: Path = README) -> dict[str, str]:
    """The samples the README holds now, by name."""
    return {m.group("name"): m.group("body") for m in MARKER.finditer(readme.read_text())}


def main(argv: list[str]) -> int:
    """Record the named samples (default: all) and write them into README.md."""
    wanted = set(argv) or {"help", "deploy-help", "preflight", "bench"}
    samples: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="readme-samples-") as tmp:
        work = Path(tmp)
        if "help" in wanted:
            samples["help"] = sample_help()
        if "deploy-help" in wanted:
            samples["deploy-help"] = sample_deploy_help()
        if "bench" in wanted:
            (work / "bench").mkdir()
            samples["bench"] = sample_bench(work / "bench")
        if "preflight" in wanted:
            (work / "preflight").mkdir()
            samples.update(sample_preflight(work / "preflight"))
    for name in write(samples):
        print(f"README.md: sample {name} recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
