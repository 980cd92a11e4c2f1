"""`smsgw optout add|remove|list|import` as a subprocess (`python -m gateway optout …`) against a
real SQLite file, including while another process (standing in for the daemon) holds the store
open and writes to it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from gateway.queue.store import Store

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]
A = "+8613800138000"
B = "+8613900139000"
C = "+14155552671"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A minimal valid config whose store is a SQLite file under tmp_path (not created yet)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps({
        "store": {"url": f"sqlite:///{tmp_path / 'state' / 'gateway.db'}"},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "client_id": "smsgw-test"},
        "carriers": [{"name": "alpha", "host": "127.0.0.1", "port": 2775, "system_id": "gw",
                      "password": "secret"}],
    }))
    return path


def optout(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "gateway", "optout", *args, "--config", str(config)],
        cwd=REPO, input=stdin, capture_output=True, text=True, timeout=60,
    )


def db_url(config: Path) -> str:
    return str(json.loads(config.read_text())["store"]["url"])


def test_add_list_remove(config: Path) -> None:
    added = optout(config, "add", "8613800138000", "+86 139 0013 9000", A)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [f"{A} added", f"{B} added"]  # normalised, deduplicated

    again = optout(config, "add", A)
    assert again.stdout.splitlines() == [f"{A} already opted out"]

    listed = optout(config, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [r[0] for r in rows] == [A, B]
    assert all(r[2] == "cli" for r in rows)
    added_at = datetime.fromisoformat(rows[0][1])
    assert added_at.utcoffset() is not None and abs(added_at.timestamp() - time.time()) < 120

    removed = optout(config, "remove", A, C)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines() == [f"{A} removed", f"{C} was not opted out"]
    assert [line.split("\t")[0] for line in optout(config, "list").stdout.splitlines()] == [B]


def test_bad_numbers_are_reported_and_the_rest_applied(config: Path) -> None:
    result = optout(config, "add", "hello", A)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{A} added"]
    assert "hello: bad number: contains letters" in result.stderr


def test_import_file(config: Path, tmp_path: Path) -> None:
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(
        "\ufeff# exported 2026-11-23\n"
        f"{A}\n"
        "\n"
        "8613900139000   # from the web form\n"
        "not-a-number\n"
        f"{A}\n"
        "+86123\n"
        f"{C}\n",
        encoding="utf-8",
    )
    result = optout(config, "import", str(numbers))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{A} added", f"{B} added", f"{C} added"]
    errors = result.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"{numbers}:5: bad number 'not-a-number'")
    assert errors[1].startswith(f"{numbers}:7: bad number '+86123'")
    rows = [line.split("\t") for line in optout(config, "list").stdout.splitlines()]
    assert sorted(r[0] for r in rows) == sorted([A, B, C])
    assert {r[2] for r in rows} == {"import:numbers.txt"}


def test_import_from_stdin_all_good_exits_zero(config: Path) -> None:
    result = optout(config, "import", "-", stdin=f"{A}\n{B}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{A} added", f"{B} added"]


def test_missing_import_file_and_bad_config(config: Path, tmp_path: Path) -> None:
    missing = optout(config, "import", str(tmp_path / "nope.txt"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {}\n")
    assert optout(bad, "list").returncode == 2


async def test_works_while_another_process_holds_the_store(config: Path) -> None:
    url = db_url(config)
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    store = await Store.open(url)  # the "daemon": store open, writing opt-outs from MOs
    try:
        stop = asyncio.Event()

        async def daemon_writes() -> int:
            n = 0
            while not stop.is_set():
                await store.add_opt_out(f"+861380013{n % 10000:04d}", "mo:alpha", time.time())
                n += 1
                await asyncio.sleep(0.002)
            return n

        writer = asyncio.create_task(daemon_writes())
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gateway", "optout", "add", C, "--config", str(config), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        stop.set()
        written = await writer
        assert proc.returncode == 0, err.decode()
        assert out.decode().splitlines() == [f"{C} added"]
        assert written > 0
        # the "daemon" sees the CLI's change at once, and the CLI sees the daemon's
        assert await store.opted_out([C, "+8613800130000"]) == {C, "+8613800130000"}
        listed = optout(config, "list").stdout
        assert "+8613800130000\t" in listed and "mo:alpha" in listed
    finally:
        await store.close()
