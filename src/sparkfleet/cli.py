"""The ``sparkfleet`` command: run a fleet operation and show it per host.

In a terminal a live table shows each host's state, task, download and elapsed time; otherwise
(a pipe, a log, CI) one plain line per host result is printed; ``--json`` prints only the result
as JSON; ``sparkfleet status`` ends with a table of each host's serving state.

Options follow ``ansible-playbook``'s: ``-e`` reaches Ansible as given (``@vault.yml`` decrypted
with ``--vault-id`` / ``--vault-password-file`` / ``--ask-vault-pass``), ``-K`` asks for the
become password. Passwords are read without echo at a terminal, else one line each from stdin
(vault ids in the order given, then ``--ask-vault-pass``, then ``-K``); ansible-runner answers
ansible-playbook's prompts with them, from a 0600 file in the run's private directory, which is
removed at the end.

Ctrl-C (or SIGTERM) ends the run (ansible-runner's cancel; the roles converge when the command
runs again); with ``--graceful-stop`` the tasks in flight finish first, and a second Ctrl-C kills
the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console

from sparkfleet import __version__
from sparkfleet.display import (
    HostBoard,
    LiveView,
    PlainView,
    gateway_table,
    print_summary,
    status_table,
)
from sparkfleet.errors import FleetError
from sparkfleet.events import EventCallback
from sparkfleet.fleet import GRACEFUL_STOP_CORE, OPERATIONS, Fleet
from sparkfleet.options import (
    DEFAULT_VAULT_LABEL,
    Credentials,
    ExecutionEnvironment,
    RunOptions,
    VaultId,
)
from sparkfleet.result import ExitCode, RunResult

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0    every host ok
  1    a host failed (its task and message are printed), or the run did not finish
  2    a host was unreachable (takes precedence over 1)
  3    bad usage or input, nothing ran (options, inventory, playbook, no host matched)
  4    status: a host does not serve (unit not active, container not running, no /metrics)
  130  stopped by Ctrl-C / SIGTERM before the end"""


def read_secret(prompt: str) -> str:
    """A password: typed without echo at a terminal, else one line of stdin (without its end
    of line), so that scripts can pipe it in. It never goes to argv or to a file of ours."""
    if sys.stdin.isatty():
        value: str = click.prompt(prompt, hide_input=True, show_default=False, err=True)
        return value
    line = sys.stdin.readline()
    if not line:
        raise click.UsageError(f"{prompt}: stdin ended before the password")
    return line.rstrip("\r\n")


def credentials(opts: Mapping[str, Any]) -> Credentials:
    """The run's credentials from the options, prompting (in this order) for each
    ``--vault-id LABEL@prompt``, for ``--ask-vault-pass`` and for ``--ask-become-pass``."""

    def ask(label: str) -> str:
        return read_secret(f"Vault password ({label})")

    try:
        ids = [VaultId(source=f) for f in opts["vault_password_file"]]
        ids += [VaultId.parse(spec, prompt=ask) for spec in opts["vault_id"]]
        if opts["ask_vault_pass"]:
            ids.append(VaultId(label=DEFAULT_VAULT_LABEL, password=read_secret("Vault password")))
    except FleetError as exc:
        raise click.BadParameter(str(exc), param_hint="--vault-id") from exc
    become = read_secret("BECOME password") if opts["ask_become_pass"] else None
    return Credentials(vault_ids=tuple(ids), become_password=become)


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
        click.option("-e", "--extra-vars", "extra_vars", multiple=True, metavar="VARS",
                     help="Extra variables, as ansible-playbook -e takes them (Ansible parses "
                          "them): key=value pairs, @FILE (vault-encrypted or not) or YAML/JSON; "
                          "repeat. Keep secrets in a vaulted @FILE."),
        click.option("-t", "--tags", multiple=True, help="Only tasks with these tags."),
        click.option("--skip-tags", multiple=True, help="Skip tasks with these tags."),
        click.option("-f", "--forks", type=click.IntRange(min=1), help="Hosts run in parallel."),
        click.option("--vault-id", multiple=True, metavar="[LABEL@]SOURCE",
                     help="A vault id: LABEL@FILE (file or script) or LABEL@prompt (repeat)."),
        click.option("--vault-password-file", "--vault-pass-file", multiple=True,
                     type=click.Path(exists=True, dir_okay=False),
                     help="File (or script) that gives the vault password (repeat)."),
        click.option("-J", "--ask-vault-pass", is_flag=True, help="Ask for the vault password."),
        click.option("-K", "--ask-become-pass", is_flag=True,
                     help="Ask for the privilege escalation (sudo) password."),
        click.option("--check", is_flag=True, help="Report what would change, change nothing."),
        click.option("--diff", is_flag=True, help="Show the changes made to files."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print only the result, as JSON (no table, no lines)."),
        click.option("--plain", is_flag=True, help="Plain lines even in a terminal."),
        click.option("--project-dir", type=click.Path(exists=True, file_okay=False),
                     help="Project dir (ansible.cfg, playbooks/, roles/) [default: this "
                          "package's checkout, else the installed collection sparkfleet.spark]."),
        click.option("--artifacts-dir", type=click.Path(file_okay=False),
                     help="Keep ansible-runner's artifacts (stdout, events) here."),
        click.option("--timeout", type=click.IntRange(min=1),
                     help="Seconds the run may take; then it is ended (status timeout)."),
        click.option("--graceful-stop", is_flag=True,
                     help="Ctrl-C lets the tasks in flight and their handlers finish (tested on "
                          "ansible-core " + ", ".join(GRACEFUL_STOP_CORE) + " only); without it "
                          "Ctrl-C ends the run, and running the command again converges."),
        click.option("--grace", type=click.FloatRange(min=0), default=120.0, show_default=True,
                     help="Seconds a graceful stop may take before the run is killed."),
        click.option("--container-image", metavar="IMAGE",
                     help="Run ansible-playbook in this execution environment image (it must "
                          "hold the collection sparkfleet.spark)."),
        click.option("--container-engine", type=click.Choice(["podman", "docker"]),
                     default="podman", show_default=True,
                     help="Engine that runs --container-image."),
        click.option("-v", "--verbose", count=True, help="ansible-playbook verbosity (-v..-vvvv)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def execute(operation: str, opts: dict[str, Any], *, rolling: bool = True) -> int:
    """Run one operation with the CLI's options and show it; returns the exit code."""
    as_json: bool = opts["as_json"]
    image = opts["container_image"]
    fleet = Fleet(
        opts["inventory"],
        project_dir=opts["project_dir"],
        artifacts_dir=opts["artifacts_dir"],
        graceful_stop=opts["graceful_stop"],
        cancel_grace_s=opts["grace"],
        execution_environment=(
            ExecutionEnvironment(image=image, engine=opts["container_engine"]) if image else None
        ),
        verbosity=opts["verbose"],
    )
    options = RunOptions(
        limit=opts["limit"],
        skip_tags=_split(opts["skip_tags"]),
        extra_vars_args=tuple(opts["extra_vars"]),
        forks=opts["forks"],
        credentials=credentials(opts),
        check=opts["check"],
        diff=opts["diff"],
        timeout_s=opts["timeout"],
        handle_signals=True,
    )
    tags = _split(opts["tags"])
    if tags is not None:
        options["tags"] = tags

    def method(**more: Any) -> RunResult:
        if operation == "restart":
            return fleet.restart(rolling=rolling, **options, **more)
        return fleet.operation(operation, **options, **more)

    console = Console(highlight=False)
    if not console.is_terminal:  # a log or a pipe: whole lines and whole table rows
        console = Console(highlight=False, soft_wrap=True, width=max(console.width, 240))
    op = OPERATIONS[operation]
    if fleet.project is not None:
        fleet.project.playbook(op.playbook, needed_by=f"sparkfleet {operation}")
    title = f"sparkfleet {operation} ({op.playbook})"
    if as_json:
        result = method()
        click.echo(result.to_json())
        return int(result.exit_code)
    board = HostBoard(title=title)
    if console.is_terminal and not opts["plain"]:
        with LiveView(board, console) as live:
            result = method(on_event=live.on_event)
            board.finish(result)
    else:
        plain = PlainView(sys.stdout)
        callback: EventCallback = plain.on_event
        click.echo(f"{title}: starting")
        result = method(on_event=callback)
    print_summary(console, result)
    if operation == "status":
        console.print(status_table(result))
        if (gateways := gateway_table(result)) is not None:
            console.print(gateways)
    return int(result.exit_code)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES,
)
@click.version_option(__version__, prog_name="sparkfleet")
def cli() -> None:
    """Provision and operate a fleet of DGX Spark hosts serving MiniMax-M2.5 with vLLM.

    Each command runs one of the project's playbooks on the inventory's hosts (group
    "spark") and reports per host. Ctrl-C ends the run (with --graceful-stop the tasks
    in flight finish first; a second Ctrl-C kills it).
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


__all__ = ["EXIT_CODES", "cli", "credentials", "main", "read_secret"]
