"""Structured logging: JSON lines on stderr, with phone numbers, secrets and message text kept out.

`configure_logging(level, stream)` sets up structlog (and routes the standard `logging` module of
third-party libraries through the same processors), `get_logger(name)` returns a bound logger,
`mask_number(s)` masks every phone number in a string.

What the redaction processor does to every event, at every level:
- any run of 7 or more digits, optionally after `+`, is masked, keeping the country code (after
  `+`), the first 3 national digits and the last 4: `+8613800138000` → `+86138****8000`,
  `13800138000` → `138****8000`; shorter national parts keep less. Fractions of ISO timestamps
  (`…:00.1234567`) and basic-format dates (`20261123T…`) are left alone.
- values of keys named like `password`, `passwd`, `secret`, `token` (or ending in `_password`, …)
  become `"***"`;
- values of `text`, `short_message`, `message_payload`, `payload`, `raw` become `"<redacted N chars>"`
  unless the event is logged at debug level.
Nested dicts, lists and tuples are redacted too. Integers are not numbers in this sense: log phone
numbers as strings (they are, everywhere in the gateway).
"""

import logging
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping
from functools import lru_cache
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "get_logger", "mask_number", "redact_event"]

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# A run of digits (any script), optionally after "+"; the lookbehind makes runs maximal.
_NUMBER = re.compile(r"(?<!\d)\+?\d{7,}")
_FRACTION_BEFORE = re.compile(r"\d[.,]\Z")
_MAX_FRACTION = 9
_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "authorization"})
_SECRET_SUFFIXES = ("_password", "_passwd", "_secret", "_token", "_api_key")
_TEXT_KEYS = frozenset({"text", "short_message", "message_payload", "payload", "raw"})
_MAX_DEPTH = 6


# --------------------------------------------------------------------------------------------
# Number masking
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _country_codes() -> frozenset[str]:
    """ITU country calling codes (from phonenumbers' metadata), loaded on first use."""
    try:
        import phonenumbers

        return frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    except ImportError:  # pragma: no cover - phonenumbers is a dependency
        return frozenset()


def _country_code_length(digits: str) -> int:
    """Length of the country code at the start of an international number (1-3; 2 if unknown)."""
    codes = _country_codes()
    head = digits[:3] if digits[:3].isascii() else "".join(str(int(c)) for c in digits[:3])
    for length in (1, 2, 3):
        if head[:length] in codes:
            return length
    return 2


def _mask_national(digits: str) -> str:
    """Keep up to 3 leading and 4 trailing digits, hiding at least 4 (or all of a short number)."""
    n = len(digits)
    hidden = min(n, max(4, n - 7))
    shown = n - hidden
    head = min(3, shown // 2 if shown < 7 else 3)
    tail = shown - head
    return digits[:head] + "*" * hidden + (digits[n - tail :] if tail else "")


@lru_cache(maxsize=8192)
def _mask_run(run: str) -> str:
    """The masked form of one run of digits (with its optional "+"); cached, numbers recur."""
    if not run.startswith("+"):
        return _mask_national(run)
    digits = run[1:]
    cc = _country_code_length(digits)
    return "+" + digits[:cc] + _mask_national(digits[cc:])


def _in_timestamp(match: re.Match[str]) -> bool:
    """A fraction of seconds (`…:00.1234567`) or a basic-format date (`20261123T…`)."""
    run, start, text = match.group(), match.start(), match.string
    if run.startswith("+") or len(run) > _MAX_FRACTION:
        return False
    if _FRACTION_BEFORE.search(text, max(0, start - 2), start):
        return True
    return len(run) == 8 and text.startswith("T", match.end())


def _mask_match(match: re.Match[str]) -> str:
    """Mask one run of digits unless it is part of a timestamp."""
    if len(match.group()) <= _MAX_FRACTION and _in_timestamp(match):
        return match.group()
    return _mask_run(match.group())


def mask_number(text: str) -> str:
    """Every phone-number-like run of digits in `text` masked (`13800138000` → `138****8000`)."""
    return _NUMBER.sub(_mask_match, text)


# --------------------------------------------------------------------------------------------
# Redaction of whole events
# --------------------------------------------------------------------------------------------


_PLAIN = 0
_SECRET = 1
_TEXT = 2


@lru_cache(maxsize=4096)
def _key_kind(key: str) -> int:
    """Whether a key holds a credential, message text, or anything else."""
    lowered = key.lower()
    if lowered in _SECRET_KEYS or lowered.endswith(_SECRET_SUFFIXES):
        return _SECRET
    return _TEXT if key in _TEXT_KEYS else _PLAIN


def _redacted_text(value: object) -> str:
    """What stands in for message text above debug."""
    size = len(value) if isinstance(value, (str, bytes, bytearray)) else None
    return "<redacted>" if size is None else f"<redacted {size} chars>"


_SCALARS = (int, float, bool, type(None))


def _clean(value: object, keep_text: bool, depth: int = 0) -> object:
    """A copy of `value` with numbers masked and secrets/text removed, recursively."""
    if isinstance(value, str):
        return _NUMBER.sub(_mask_match, value)
    if isinstance(value, _SCALARS):
        return value
    if depth >= _MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, Mapping):
        return {k: _clean_item(k, v, keep_text, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v, keep_text, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return _NUMBER.sub(_mask_match, bytes(value).decode("utf-8", "replace"))
    return _NUMBER.sub(_mask_match, str(value))


def _clean_item(key: object, value: object, keep_text: bool, depth: int) -> object:
    """One key/value of a mapping."""
    kind = _key_kind(key) if isinstance(key, str) else _PLAIN
    if kind == _SECRET:
        return "***" if value is not None else None
    if kind == _TEXT and not keep_text and value is not None:
        return _redacted_text(value)
    return _clean(value, keep_text, depth)


def redact_event(_logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask numbers, drop secrets, and drop message text unless at debug."""
    keep_text = method_name == "debug"
    for key, value in event_dict.items():
        kind = _key_kind(key) if isinstance(key, str) else _PLAIN
        if kind == _PLAIN and type(value) is str:
            event_dict[key] = _NUMBER.sub(_mask_match, value)
        elif kind != _PLAIN or not isinstance(value, _SCALARS):
            event_dict[key] = _clean_item(key, value, keep_text, 0)
    return event_dict


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _serializer() -> Callable[..., str]:
    """orjson when available (fast, UTF-8 kept), else the json module."""
    try:
        import orjson

        def dumps(obj: Any, **_: Any) -> str:
            return orjson.dumps(obj, default=str).decode()

        return dumps
    except ImportError:  # pragma: no cover - orjson is a dependency
        import json

        def dumps_json(obj: Any, **_: Any) -> str:
            return json.dumps(obj, default=str, ensure_ascii=False)

        return dumps_json


def _level_number(level: str | int) -> int:
    """"info" / "INFO" / 20 → 20; ValueError for anything else."""
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str) and level.lower() in _LEVELS:
        return _LEVELS[level.lower()]
    raise ValueError(f"unknown log level {level!r}: use one of debug, info, warning, error, critical")


def _add_logger_name(logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The logger's name under `logger` (structlog loggers from `get_logger(name)`, stdlib records)."""
    if "logger" in event_dict:
        return event_dict
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name:
        event_dict["logger"] = name
    return event_dict


def _factory(stream: TextIO | None) -> Callable[..., "_LineWriter"]:
    """structlog logger factory: `get_logger(name)` passes the name through."""

    def make(*args: Any) -> _LineWriter:
        return _LineWriter(stream, str(args[0]) if args and args[0] is not None else None)

    return make


class _LineWriter:
    """structlog's final logger: one line per event on a stream (stderr looked up at write time)."""

    __slots__ = ("_stream", "name")

    def __init__(self, stream: TextIO | None = None, name: str | None = None) -> None:
        self._stream = stream
        self.name = name

    def msg(self, message: str) -> None:
        """Write one rendered event."""
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler we installed, so that reconfiguring replaces it."""


def _configure_stdlib(level: int, stream: TextIO, pre_chain: list[Any], renderer: Any) -> None:
    """Route the `logging` records of libraries through the same redaction and JSON rendering."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*pre_chain, _add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact_event, renderer],
    )
    handler = _OurHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _processors(renderer: Any) -> list[Any]:
    """structlog's chain: context, level, name, time, traceback, redaction, JSON."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_event,
        renderer,
    ]


def _configure_structlog(level: int, stream: TextIO | None) -> Any:
    """Configure structlog; returns the JSON renderer for reuse by the stdlib handler."""
    renderer = structlog.processors.JSONRenderer(serializer=_serializer())
    structlog.configure(
        processors=_processors(renderer),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_factory(stream),
        cache_logger_on_first_use=False,
    )
    return renderer


def configure_logging(level: str | int = "info", stream: TextIO | None = None) -> None:
    """JSON lines on `stream` (stderr by default) for structlog and stdlib logging alike.

    May be called again (e.g. by tests or on reload) to change the level or the stream; loggers
    obtained earlier follow (they are not cached).
    """
    number = _level_number(level)
    renderer = _configure_structlog(number, stream)
    pre_chain: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    _configure_stdlib(number, stream if stream is not None else sys.stderr, pre_chain, renderer)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger carrying `logger=name` (and any other initial key/values)."""
    return structlog.get_logger(name, **initial) if name is not None else structlog.get_logger(**initial)


# Until configure_logging runs, structlog loggers already redact and write JSON to stderr.
_configure_structlog(logging.INFO, None)
