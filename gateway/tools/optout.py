"""`smsgw optout add|remove|list|import`: the marketing opt-out list, edited in the store.

Opens the store named by the config's `store.url` directly rather than asking the daemon: the
list must be editable while the daemon is stopped (before a first campaign, after a restore),
and while it runs a second process is safe (SQLite in WAL mode lets one writer wait for the
other through `busy_timeout`, with retries on top; PostgreSQL is PostgreSQL). The daemon reads
the list at every admission batch, so a change applies to the next marketing message.

Output is one line per number on stdout, saying what happened, so that it can be piped and
diffed: `+8613800138000 added`, `… already opted out`, `… removed`, `… was not opted out`.
Numbers are normalised to E.164 exactly as submissions are (`+` optional, `00` accepted,
separators tolerated). An invalid number is reported on stderr (for `import`, with its line
number) and makes the exit code 1; the valid ones are still applied. `list` prints
`number<TAB>added_at<TAB>source`, `added_at` in ISO 8601 UTC, `source` as recorded (`cli`,
`import:FILE`, `mo:CARRIER`).

Exit codes: 0 all done, 1 a bad number or the store cannot be opened, 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from gateway.config import ConfigError, load_config
from gateway.model import Rejection
from gateway.queue.store import Store
from gateway.queue.submission import normalise_number

__all__ = ["main", "parse_import"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
_CHUNK = 1000  # numbers per store call: one transaction each, bounded memory for huge files
SOURCE_CLI = "cli"


@dataclass(frozen=True, slots=True)
class BadNumber:
    """An input that is not an international number: where it was and why."""

    where: str  # "NUMBER" for arguments, "FILE:LINE" for an import
    value: str
    why: str


def _normalise(value: str) -> str:
    """E.164, or raises ValueError with the reason (the submission parser's, minus its `to`)."""
    result = normalise_number(value)
    if isinstance(result, Rejection):
        raise ValueError(result.detail.removeprefix("to ").strip())
    return result


def _check(values: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[BadNumber]]:
    """(where, raw) pairs → ([(where, e164)], [bad]) keeping the input order."""
    good: list[tuple[str, str]] = []
    bad: list[BadNumber] = []
    for where, raw in values:
        try:
            good.append((where, _normalise(raw)))
        except ValueError as exc:
            bad.append(BadNumber(where, raw, str(exc)))
    return good, bad


def parse_import(lines: Iterable[str], name: str) -> Iterator[tuple[str, str]]:
    """One number per line → (`NAME:LINE`, number) pairs. Blank lines and `#` comments (whole
    lines or after the number) are skipped; a UTF-8 BOM on the first line is ignored (files
    exported from spreadsheets carry one)."""
    for lineno, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if lineno == 1:
            text = text.removeprefix("\ufeff").strip()
        if text:
            yield f"{name}:{lineno}", text


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _unique(numbers: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(numbers))


async def _add(store: Store, numbers: Sequence[str], source: str, out: TextIO) -> None:
    now = time.time()
    for chunk in _chunks(_unique(numbers)):
        for number, added in zip(chunk, await store.add_opt_outs(chunk, source, now), strict=True):
            print(f"{number} {'added' if added else 'already opted out'}", file=out)


async def _remove(store: Store, numbers: Sequence[str], out: TextIO) -> None:
    for chunk in _chunks(_unique(numbers)):
        for number, removed in zip(chunk, await store.remove_opt_outs(chunk), strict=True):
            print(f"{number} {'removed' if removed else 'was not opted out'}", file=out)


async def _list(store: Store, out: TextIO) -> None:
    after: str | None = None
    while True:  # paged by number, so a list of millions never sits in memory at once
        page = await store.list_opt_outs(after=after, limit=_CHUNK)
        for entry in page:
            added = datetime.fromtimestamp(entry.added_at, UTC).isoformat(timespec="seconds")
            print(f"{entry.number}\t{added}\t{entry.source or ''}", file=out)
        if len(page) < _CHUNK:
            return
        after = page[-1].number


def _read_import(path: str) -> tuple[str, list[str]]:
    """The file's display name and its lines; `-` reads stdin."""
    if path == "-":
        return "<stdin>", sys.stdin.read().splitlines()
    return path, Path(path).read_text(encoding="utf-8").splitlines()


async def _run(args: argparse.Namespace, url: str) -> int:
    action = args.action
    pairs: list[tuple[str, str]] = []
    source = SOURCE_CLI
    if action in ("add", "remove"):
        pairs = [(raw, raw) for raw in args.numbers]
    elif action == "import":
        try:
            name, lines = _read_import(args.file)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"smsgw optout: cannot read {args.file}: {reason}", file=sys.stderr)
            return EXIT_FAILURE
        pairs = list(parse_import(lines, name))
        source = f"import:{Path(name).name}"
    good, bad = _check(pairs)
    for problem in bad:
        if action == "import":
            print(f"{problem.where}: bad number {problem.value!r}: {problem.why}", file=sys.stderr)
        else:
            print(f"{problem.value}: bad number: {problem.why}", file=sys.stderr)

    # Bad numbers do not stop the good ones: an operator importing 10,000 numbers with one typo
    # wants 9,999 opted out now and the typo pointed at, not nothing done.
    numbers = [number for _, number in good]
    if action == "list" or numbers:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
        store = await Store.open(url)
        try:
            if action == "list":
                await _list(store, sys.stdout)
            elif action == "remove":
                await _remove(store, numbers, sys.stdout)
            else:
                await _add(store, numbers, source, sys.stdout)
        finally:
            await store.close()
    return EXIT_FAILURE if bad else EXIT_OK


def main(args: argparse.Namespace) -> int:
    """Entry point of `smsgw optout`; returns the exit code."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args, cfg.store.resolved_url()))
    except Exception as exc:  # the store cannot be opened or written: say so, no traceback
        print(f"smsgw optout: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
