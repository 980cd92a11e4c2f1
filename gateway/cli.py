"""The `smsgw` command line (also `python -m gateway`): argument parsing only.

Each subcommand calls into the module that does the work, imported when the command runs so that
`smsgw check-config` stays quick and a command whose module is missing fails with a message:

    run           gateway.daemon.run(config_path) -> int
    check-config  gateway.config (here)
    send          gateway.tools.send.main(args) -> int
    status        gateway.tools.status.main(args) -> int
    optout        gateway.tools.optout.main(args) -> int     (args.action: add|remove|list|import)
    smsc-sim      gateway.smpp.simulator.main(args) -> int
    demo          gateway.tools.demo.main(args) -> int        (`make demo`: simulators + daemon + one OTP)

Exit codes: 0 success, 1 failure reported by the command, 2 invalid usage or configuration.
"""

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from importlib.metadata import PackageNotFoundError, version

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
PRIORITIES = ("otp", "transactional", "marketing")
CONFIG_ENV = "SMSGW_CONFIG"


# --------------------------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------------------------


def _non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _share(text: str) -> float:
    """argparse type: a share between 0 and 1."""
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text!r}")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port (0 lets the OS choose, for tests)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535: {text!r}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _command_status(text: str) -> int:
    """argparse type: a command_status as a number (`88`, `0x58`)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a command_status number: {text!r}") from None


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _add_config(parser: argparse.ArgumentParser) -> None:
    """`--config PATH` (default: $SMSGW_CONFIG)."""
    default = os.environ.get(CONFIG_ENV)
    parser.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=default,
        required=default is None,
        help=f"the YAML configuration (default: ${CONFIG_ENV})",
    )


def _add_run(commands: Any) -> None:
    parser = commands.add_parser("run", help="run the daemon in the foreground")
    _add_config(parser)


def _add_check_config(commands: Any) -> None:
    parser = commands.add_parser("check-config", help="validate a configuration file")
    _add_config(parser)


def _add_send(commands: Any) -> None:
    parser = commands.add_parser("send", help="publish one message to {prefix}/submit")
    _add_config(parser)
    parser.add_argument("--to", required=True, metavar="NUMBER", help="international number, + optional")
    parser.add_argument("--text", required=True)
    parser.add_argument("--priority", choices=PRIORITIES, default="transactional")
    parser.add_argument("--sender", metavar="ID")
    parser.add_argument("--id", dest="id", metavar="ID", help="idempotency key (a new one is printed if absent)")
    parser.add_argument("--client", metavar="NAME", help="the submitting service (selects a signature)")
    parser.add_argument("--validity", dest="validity_s", type=_non_negative_float, metavar="SECONDS")
    parser.add_argument("--not-before", dest="not_before", metavar="ISO8601")
    parser.add_argument(
        "--wait",
        type=_non_negative_float,
        metavar="SECONDS",
        help="print each event until a final one or this timeout; exit 0 only when delivered",
    )
    parser.add_argument("--dry-run", action="store_true", help="print encoding and parts; publish nothing")


def _add_status(commands: Any) -> None:
    parser = commands.add_parser("status", help="binds, windows, rates and queues of the running daemon")
    _add_config(parser)
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON as is")


def _add_optout(commands: Any) -> None:
    parser = commands.add_parser("optout", help="manage the marketing opt-out list")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text in (("add", "opt numbers out"), ("remove", "opt numbers back in")):
        sub = actions.add_parser(action, help=help_text)
        _add_config(sub)
        sub.add_argument("numbers", nargs="+", metavar="NUMBER")
    listing = actions.add_parser("list", help="print opted-out numbers")
    _add_config(listing)
    importing = actions.add_parser("import", help="opt out every number in FILE (one a line, - for stdin)")
    _add_config(importing)
    importing.add_argument("file", metavar="FILE")


def _add_demo(commands: Any) -> None:
    parser = commands.add_parser("demo", help="simulated carriers + the daemon + one OTP (make demo)")
    _add_config(parser)
    parser.add_argument("--once", action="store_true",
                        help="stop after the demo message reached a final status")


def _add_smsc_sim(commands: Any) -> None:
    parser = commands.add_parser("smsc-sim", help="an SMSC (carrier) simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=2775)
    parser.add_argument("--system-id", dest="system_id", help="accept only this system_id (default: any)")
    parser.add_argument("--password", help="accept only this password (default: any)")
    parser.add_argument("--receipt-delay", dest="receipt_delay", type=_non_negative_float, default=0.0, metavar="S")
    parser.add_argument("--undeliv", type=_share, default=0.0, help="share of receipts UNDELIV")
    parser.add_argument("--expired", type=_share, default=0.0, help="share of receipts EXPIRED")
    parser.add_argument("--rejectd", type=_share, default=0.0, help="share of receipts REJECTD")
    parser.add_argument("--throttle-tps", dest="throttle_tps", type=_non_negative_float, default=0.0,
                        help="answer ESME_RTHROTTLED above this rate (0 = off)")
    parser.add_argument("--error-rate", dest="error_rate", type=_share, default=0.0,
                        help="share of submit_sm answered with --error-status")
    parser.add_argument("--error-status", dest="error_status", type=_command_status, default=0x08,
                        help="command_status for injected errors (default 0x08 ESME_RSYSERR)")
    parser.add_argument("--mo-every", dest="mo_every", type=_non_negative_float, default=0.0, metavar="S",
                        help="send an MO deliver_sm this often (0 = off)")
    parser.add_argument("--mo-text", dest="mo_text", default="T")
    parser.add_argument("--stats-interval", dest="stats_interval", type=_non_negative_float, default=1.0,
                        metavar="S")
    parser.add_argument("--message-id-format", dest="message_id_format", choices=("hex", "decimal", "uuid"),
                        default="hex")
    parser.add_argument("--max-binds", dest="max_binds", type=_positive_int, default=None)
    parser.add_argument("--quiet", action="store_true", help="no per-interval stats")


def _version() -> str:
    """The installed distribution's version."""
    try:
        return version("smsgw")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The whole `smsgw` argument parser."""
    parser = argparse.ArgumentParser(prog="smsgw", description="SMPP carrier gateway daemon")
    parser.add_argument("--version", action="version", version=f"smsgw {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_run, _add_check_config, _add_send, _add_status, _add_optout, _add_smsc_sim, _add_demo):
        add(commands)
    return parser


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _load(module: str, function: str) -> Callable[..., Any] | None:
    """Import `module.function` lazily; print why and return None when it is not available."""
    try:
        found = getattr(importlib.import_module(module), function)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        absent = missing is not None and (module == missing or module.startswith(f"{missing}."))
        reason = "is not available in this build" if absent else f"cannot be loaded: {exc}"
        print(f"smsgw: {module} {reason}", file=sys.stderr)
        return None
    except AttributeError:
        print(f"smsgw: {module} has no {function}()", file=sys.stderr)
        return None
    return found if callable(found) else None


def _delegate(module: str, function: str, *args: Any) -> int:
    """Call a command implemented elsewhere; its integer result is the exit code."""
    target = _load(module, function)
    if target is None:
        return EXIT_FAILURE
    result = target(*args)
    return int(result) if result is not None else EXIT_OK


def check_config(path: str) -> int:
    """`smsgw check-config`: summary on stdout and 0, or one `PATH: message` per problem on stderr and 2."""
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    print(config.summary())
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen subcommand."""
    command = args.command
    if command == "check-config":
        return check_config(args.config)
    if command == "run":
        return _delegate("gateway.daemon", "run", args.config)
    if command == "smsc-sim":
        return _delegate("gateway.smpp.simulator", "main", args)
    if command in ("send", "status", "optout", "demo"):
        return _delegate(f"gateway.tools.{command}", "main", args)
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover - argparse prevents it


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `smsgw` and `python -m gateway`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
