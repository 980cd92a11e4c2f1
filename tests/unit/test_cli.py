"""gateway.cli: check-config output and exit codes, argument parsing, lazy delegation."""

import argparse
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gateway import cli

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "demo.yaml"

BAD_CONFIG = """\
store:
  url: sqlite:///var/x.db
mqtt:
  client_id: test
carriers:
  - name: alpha
    host: 127.0.0.1
    port: 2775
    system_id: gw
    password: pw
  - name: beta
    host: 127.0.0.1
    port: 99999
    system_id: gw
    passwrd: pw
routes:
  - prefix: "+86"
    carriers: [alpha, gamma]
"""


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_check_config_valid_via_python_m() -> None:
    result = run_module("check-config", "--config", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith("ok: 2 carriers (alpha 1 bind, beta 2 binds), 2 routes, store sqlite, ")
    assert "mqtt 127.0.0.1:1883 prefix sms" in result.stdout
    assert "demo" not in result.stdout  # neither the password nor anything else of it
    assert result.stderr == ""


def test_check_config_invalid_via_python_m(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIG)
    result = run_module("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "carriers[1].port: must be between 1 and 65535",
        "carriers[1].passwrd: unknown key",
        "carriers[1].password: required key is missing: give one of password, password_env, password_file",
        'routes[0].carriers[1]: unknown carrier "gamma"',
    ]


def test_check_config_in_process(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["check-config", "--config", str(REPO / "config" / "gateway.example.yaml")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: ") and err == ""
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("store: [\n")
    assert cli.main(["check-config", "--config", str(syntax)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"{syntax}: line ")


@pytest.mark.parametrize("text", ["", "- a\n"])
def test_check_config_empty_or_not_a_mapping(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    assert cli.main(["check-config", "-c", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}: ")


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["check-config", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(cli.CONFIG_ENV, str(DEMO))
    assert cli.main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_config_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.CONFIG_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main(["check-config"])
    assert info.value.code == 2


def test_missing_command_module_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli._delegate("gateway.no_such_module", "main") == 1
    err = capsys.readouterr().err
    assert err == "smsgw: gateway.no_such_module is not available in this build\n"


def test_missing_function_fails_cleanly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "gateway.daemon", types.ModuleType("gateway.daemon"))
    assert cli.main(["run", "--config", str(DEMO)]) == 1
    assert "gateway.daemon has no run()" in capsys.readouterr().err


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, function: str, calls: list[Any], result: int = 0) -> None:
    """Install a module whose function records its arguments."""
    module = types.ModuleType(name)

    def target(*args: Any) -> int:
        calls.append(args)
        return result

    setattr(module, function, target)
    monkeypatch.setitem(sys.modules, name, module)


def test_run_delegates_to_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    fake_module(monkeypatch, "gateway.daemon", "run", calls, result=0)
    assert cli.main(["run", "--config", "x.yaml"]) == 0
    assert calls == [("x.yaml",)]


def test_send_delegates_with_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    fake_module(monkeypatch, "gateway.tools.send", "main", calls, result=1)
    argv = ["send", "--config", "c.yaml", "--to", "+8613800138000", "--text", "hi", "--priority", "otp",
            "--sender", "BRAND", "--id", "m-1", "--wait", "5", "--client", "billing", "--dry-run"]
    assert cli.main(argv) == 1
    [(args,)] = calls
    assert isinstance(args, argparse.Namespace)
    assert (args.config, args.to, args.text, args.priority, args.sender, args.id) == (
        "c.yaml", "+8613800138000", "hi", "otp", "BRAND", "m-1"
    )
    assert (args.wait, args.client, args.dry_run, args.validity_s, args.not_before) == (5.0, "billing", True, None, None)


def test_send_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    fake_module(monkeypatch, "gateway.tools.send", "main", calls)
    assert cli.main(["send", "-c", "c.yaml", "--to", "1", "--text", "t"]) == 0
    [(args,)] = calls
    assert (args.priority, args.id, args.wait, args.dry_run) == ("transactional", None, None, False)


def test_send_rejects_unknown_priority() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["send", "-c", "c.yaml", "--to", "1", "--text", "t", "--priority", "urgent"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("argv", "action", "extra"),
    [
        (["optout", "add", "-c", "c.yaml", "+8613800138000", "13900139000"], "add",
         {"numbers": ["+8613800138000", "13900139000"]}),
        (["optout", "remove", "-c", "c.yaml", "+8613800138000"], "remove", {"numbers": ["+8613800138000"]}),
        (["optout", "list", "-c", "c.yaml"], "list", {}),
        (["optout", "import", "-c", "c.yaml", "numbers.txt"], "import", {"file": "numbers.txt"}),
    ],
)
def test_optout_delegates(monkeypatch: pytest.MonkeyPatch, argv: list[str], action: str, extra: dict[str, Any]) -> None:
    calls: list[Any] = []
    fake_module(monkeypatch, "gateway.tools.optout", "main", calls)
    assert cli.main(argv) == 0
    [(args,)] = calls
    assert args.action == action and args.config == "c.yaml"
    for key, value in extra.items():
        assert getattr(args, key) == value


def test_demo_delegates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    fake_module(monkeypatch, "gateway.tools.demo", "main", calls)
    assert cli.main(["demo", "--config", "config/demo.yaml"]) == 0
    assert calls[0][0].config == "config/demo.yaml"


def test_status_delegates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    fake_module(monkeypatch, "gateway.tools.status", "main", calls, result=3)
    assert cli.main(["status", "-c", "c.yaml"]) == 3
    assert calls[0][0].json is False


def test_smsc_sim_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    fake_module(monkeypatch, "gateway.smpp.simulator", "main", calls)
    assert cli.main(["smsc-sim", "--port", "2775"]) == 0
    [(args,)] = calls
    assert (args.host, args.port, args.system_id, args.password) == ("127.0.0.1", 2775, None, None)
    assert (args.receipt_delay, args.undeliv, args.expired, args.rejectd) == (0.0, 0.0, 0.0, 0.0)
    assert (args.throttle_tps, args.error_rate, args.error_status, args.mo_every) == (0.0, 0.0, 8, 0.0)
    assert (args.mo_text, args.stats_interval, args.message_id_format, args.max_binds, args.quiet) == (
        "T", 1.0, "hex", None, False
    )
    calls.clear()
    argv = ["smsc-sim", "--host", "0.0.0.0", "--port", "2776", "--system-id", "gw", "--password", "pw",
            "--receipt-delay", "0.5", "--undeliv", "0.1", "--expired", "0.05", "--rejectd", "0.01",
            "--throttle-tps", "50", "--error-rate", "0.2", "--error-status", "0x58", "--mo-every", "2",
            "--mo-text", "STOP", "--stats-interval", "5", "--message-id-format", "uuid", "--max-binds", "4",
            "--quiet"]
    assert cli.main(argv) == 0
    [(args,)] = calls
    assert (args.port, args.system_id, args.password, args.error_status, args.max_binds, args.quiet) == (
        2776, "gw", "pw", 0x58, 4, True
    )
    assert (args.undeliv, args.throttle_tps, args.message_id_format) == (0.1, 50.0, "uuid")


@pytest.mark.parametrize("argv", [["smsc-sim", "--undeliv", "1.5"], ["smsc-sim", "--port", "70000"],
                                  ["smsc-sim", "--receipt-delay", "-1"], []])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
