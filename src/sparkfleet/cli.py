"""The ``sparkfleet`` command: run a fleet operation and show it per host.

In a terminal a live table shows each host's state, task, download and elapsed time; otherwise
(a pipe, a log, CI) one plain line per host result is printed; ``--json`` prints only the result
as JSON. Ctrl-C (or SIGTERM) stops gracefully: the tasks in flight finish, no new task starts; a
second Ctrl-C kills the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml
from rich.console import Console

from sparkfleet import __version__
from sparkfleet.display import HostBoard, LiveView, PlainView, print_summary
from sparkfleet.errors import FleetError
from sparkfleet.events import EventCallback
from sparkfleet.fleet import OPERATIONS, Fleet
from sparkfleet.result import ExitCode, RunResult

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0    every host ok
  1    a host failed (its task and message are printed), or the run did not finish
  2    a host was unreachable (takes precedence over 1)
  3    bad usage or input, nothing ran (options, inventory, playbook, no host matched)
  130  stopped by Ctrl-C / SIGTERM before the end"""


def parse_extravars(values: Sequence[str]) -> dict[str, Any]:
    """``-e`` values as Ansible reads them: ``key=value`` (a string), ``@file`` (YAML/JSON) or
    an inline YAML/JSON mapping; later ones win."""
    out: dict[str, Any] = {}
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise click.BadParameter(f"{value}: {exc}", param_hint="-e") from exc
            if not isinstance(loaded, dict):
                raise click.BadParameter(f"{value}: not a mapping", param_hint="-e")
            out.update(loaded)
        elif value.lstrip().startswith("{"):
            try:
                loaded = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise click.BadParameter(f"{value!r}: {exc}", param_hint="-e") from exc
            if not isinstance(loaded, dict):
                raise click.BadParameter(f"{value!r}: not a mapping", param_hint="-e")
            out.update(loaded)
        elif "=" in value:
            for pair in value.split():
                key, sep, val = pair.partition("=")
                if not sep or not key:
                    raise click.BadParameter(f"{pair!r}: expected key=value", param_hint="-e")
                out[key] = val
        else:
            raise click.BadParameter(
                f"{value!r}: expected key=value, @file or a mapping", param_hint="-e"
            )
    return out


def _split(values: Sequence[str]) -> list[str] | None:
    items = [t.strip() for v in values for t in v.split(",") if t.strip()]
    return items or None


def run_options(func: F) -> F:
    """The options every operation takes."""
    options = [
        click.option("-i", "--inventory", required=True, envvar="SPARKFLEET_INVENTORY",
                     help="Inventory path (file or directory) or a comma-separated host list "
                          "[env SPARKFLEET_INVENTORY]."),
        click.option("-l", "--limit", help="Only these hosts or groups (Ansible pattern)."),
        click.option("-e", "--extra-vars", "extra_vars", multiple=True, metavar="K=V|@FILE",
                     help="Extra variables: key=value, @file.yml or a YAML/JSON mapping (repeat)."),
        click.option("-t", "--tags", multiple=True, help="Only tasks with these tags."),
        click.option("--skip-tags", multiple=True, help="Skip tasks with these tags."),
        click.option("-f", "--forks", type=click.IntRange(min=1), help="Hosts run in parallel."),
        click.option("--vault-password-file", type=click.Path(exists=True, dir_okay=False),
                     help="File (or script) that gives the vault password."),
        click.option("--check", is_flag=True, help="Report what would change, change nothing."),
        click.option("--diff", is_flag=True, help="Show the changes made to files."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print only the result, as JSON (no table, no lines)."),
        click.option("--plain", is_flag=True, help="Plain lines even in a terminal."),
        click.option("--project-dir", type=click.Path(exists=True, file_okay=False),
                     help="Project dir (ansible.cfg, playbooks/, roles/) [default: installed]."),
        click.option("--artifacts-dir", type=click.Path(file_okay=False),
                     help="Keep ansible-runner's artifacts (stdout, events) here."),
        click.option("--grace", type=click.FloatRange(min=0), default=120.0, show_default=True,
                     help="Seconds a graceful stop may take before the run is killed."),
        click.option("-v", "--verbose", count=True, help="ansible-playbook verbosity (-v..-vvvv)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def execute(operation: str, opts: dict[str, Any], **op_kwargs: Any) -> int:
    """Run one operation with the CLI's options and show it; returns the exit code."""
    as_json: bool = opts["as_json"]
    fleet = Fleet(
        opts["inventory"],
        extravars=parse_extravars(opts["extra_vars"]),
        project_dir=opts["project_dir"],
        forks=opts["forks"],
        vault_password_file=opts["vault_password_file"],
        artifacts_dir=opts["artifacts_dir"],
        cancel_grace_s=opts["grace"],
        verbosity=opts["verbose"],
    )
    method: Callable[..., RunResult] = getattr(fleet, operation)
    kwargs: dict[str, Any] = {
        "limit": opts["limit"],
        "skip_tags": _split(opts["skip_tags"]),
        "check": opts["check"],
        "diff": opts["diff"],
        "handle_signals": True,
        **op_kwargs,
    }
    tags = _split(opts["tags"])
    if tags is not None:
        kwargs["tags"] = tags
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True)
    op = OPERATIONS[operation]
    fleet.project.playbook(op.playbook, needed_by=f"sparkfleet {operation}")
    title = f"sparkfleet {operation} ({op.playbook})"
    if as_json:
        result = method(**kwargs)
        click.echo(result.to_json())
        return int(result.exit_code)
    board = HostBoard(title=title)
    if console.is_terminal and not opts["plain"]:
        with LiveView(board, console) as live:
            result = method(on_event=live.on_event, **kwargs)
            board.finish(result)
    else:
        plain = PlainView(sys.stdout)
        callback: EventCallback = plain.on_event
        click.echo(f"{title}: starting")
        result = method(on_event=callback, **kwargs)
    print_summary(console, result)
    return int(result.exit_code)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES,
)
@click.version_option(__version__, prog_name="sparkfleet")
def cli() -> None:
    """Provision and operate a fleet of DGX Spark hosts serving MiniMax-M2.5 with vLLM.

    Each command runs one of the project's playbooks on the inventory's hosts (group
    "spark") and reports per host. Ctrl-C stops gracefully (tasks in flight finish);
    a second Ctrl-C kills the run.
    """


def _command(name: str, operation: str, help_text: str) -> None:
    @cli.command(name=name, help=help_text, epilog=EXIT_CODES)
    @run_options
    def command(**opts: Any) -> int:
        return execute(operation, opts)


_command("deploy", "deploy", "Take the hosts from bare to serving, health-checked (site.yml).")
_command("preflight", "preflight", "Check and report each host; change nothing.")
_command("fetch", "fetch_model", "Fetch and verify the model on each host.")
_command("health", "health", "Check each endpoint: /health, /v1/models, a chat completion.")
_command("bench", "benchmark", "Benchmark each endpoint (benchmark.yml).")
_command("status", "status", "Report each host's state (status.yml).")


@cli.command(epilog=EXIT_CODES)
@run_options
@click.option(
    "--rolling/--all-at-once",
    default=True,
    show_default=True,
    help="One host at a time (each healthy before the next), or all together.",
)
def restart(rolling: bool, **opts: Any) -> int:
    """Restart the vLLM service (rolling_restart.yml)."""
    return execute("restart", opts, rolling=rolling)


@cli.command(epilog=EXIT_CODES)
@run_options
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall(yes: bool, **opts: Any) -> int:
    """Stop and remove the service from the hosts (uninstall.yml)."""
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("uninstall needs --yes when not run from a terminal")
        target = opts["limit"] or "every host in the inventory"
        click.confirm(f"Remove the vLLM service from {target}?", abort=True)
    return execute("uninstall", opts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparkfleet`` console script; returns the exit code."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="sparkfleet",
                      standalone_mode=False)  # fmt: skip
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return int(ExitCode.USAGE)
    except click.ClickException as exc:
        exc.show()
        return int(ExitCode.USAGE)
    except FleetError as exc:
        click.echo(f"Error: {exc}", err=True)
        return int(ExitCode.USAGE)
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["EXIT_CODES", "cli", "main", "parse_extravars"]
