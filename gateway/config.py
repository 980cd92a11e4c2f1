"""The gateway's YAML configuration: parsed, typed and validated, with errors naming the YAML path.

`load_config(path)` reads a file, `parse_config(mapping)` validates an already-parsed mapping; both
return a frozen `Config` or raise `ConfigError` whose `problems` are lines `PATH: message`
(`carriers[1].port: must be between 1 and 65535`). Every key of CONTRACT.md is typed here, plus
the gateway's own optional extras (documented in `config/gateway.example.yaml`).

Conventions used by the rest of the gateway:
- durations are floats in seconds (`"30s"`, `"5m"`, `"1h"`, `"1d"` and plain numbers are accepted);
- secrets (`password`, `password_env`, `password_file`) are resolved at load time into a `Secret`
  whose `repr`/`str` never show the value: `cfg.carriers[0].password.get()`;
- `N/period` rates become `Rate(count, period_s, window)` where `window` is `"sliding"` (the
  contract's meaning) unless the extra mapping form asks for `"calendar"`;
- policy rules whose key is absent are off (`None` or empty), never filled with recommended values.
"""

import hmac
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

__all__ = [
    "DEFAULT_OPT_OUT_KEYWORDS",
    "CarrierConfig",
    "Config",
    "ConfigError",
    "DispatchConfig",
    "HttpConfig",
    "Listen",
    "MarketingPolicy",
    "MqttConfig",
    "OtpPolicy",
    "Policies",
    "Rate",
    "ReloadPlan",
    "RouteConfig",
    "Secret",
    "StoreConfig",
    "TimeWindow",
    "TlsOptions",
    "connection_key",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "reload_plan",
]

DEFAULT_OPT_OUT_KEYWORDS: tuple[str, ...] = ("T", "TD", "退订", "STOP", "UNSUBSCRIBE")
PRIORITIES: tuple[str, ...] = ("otp", "transactional", "marketing")
PASSWORD_KEYS: tuple[str, ...] = ("password", "password_env", "password_file")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """An invalid configuration: `problems` holds one `PATH: message` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


def _fail(message: str, *subpath: str | int) -> PydanticCustomError:
    """A validation error with our own message, optionally below the current location."""
    return PydanticCustomError("config", "{msg}", {"msg": message, "subpath": list(subpath)})


def format_path(loc: Iterable[str | int]) -> str:
    """`("carriers", 1, "port")` → `carriers[1].port`; odd mapping keys are quoted in brackets."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{_quote(part)}]"
    return out


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _quote(value: object) -> str:
    """Double-quoted for messages, with backslashes and quotes escaped."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


_SIMPLE_MESSAGES: dict[str, str] = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string (quote it in YAML)",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "frozen_set_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _message(error: Mapping[str, Any]) -> str:
    """A short operator-facing message for one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "config":
        return str(ctx["msg"])
    if kind in _SIMPLE_MESSAGES:
        return _SIMPLE_MESSAGES[kind]
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind in ("too_short", "string_too_short"):
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _problems_from(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into `PATH: message` lines."""
    problems = []
    for error in exc.errors():
        loc = [p for p in error["loc"] if p != "[key]"]
        ctx = error.get("ctx") or {}
        loc.extend(ctx.get("subpath", []) if error["type"] == "config" else [])
        path = format_path(loc) or "(top level)"
        problems.append(f"{path}: {_message(error)}")
    return problems


def _dedupe(items: Iterable[str]) -> list[str]:
    """Keep the first occurrence of each line, in order."""
    return list(dict.fromkeys(items))


# --------------------------------------------------------------------------------------------
# Scalars: numbers, durations, rates, time windows, ports, secrets
# --------------------------------------------------------------------------------------------

_UNIT_SECONDS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: object) -> float:
    """`30`, `1.5`, `"30s"`, `"5m"`, `"1h30m"`, `"1d"`, `"500ms"` → seconds (float). ValueError else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a duration such as 30s, 5m, 1h, 1d or a number of seconds")
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip().replace(" ", "")
    if _NUMBER.fullmatch(text):
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{_quote(value)} is not a duration such as 30s, 5m, 1h, 1d")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def _duration(value: object) -> float:
    """BeforeValidator form of `parse_duration`."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _number(value: object) -> float:
    """An int or float, never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail("must be a number")
    return float(value)


def _at_least(low: float) -> Callable[[Any], Any]:
    """AfterValidator: value >= low."""

    def check(value: Any) -> Any:
        if value < low:
            raise _fail(f"must be at least {low:g}")
        return value

    return check


def _above(low: float) -> Callable[[Any], Any]:
    """AfterValidator: value > low."""

    def check(value: Any) -> Any:
        if not value > low:
            raise _fail(f"must be greater than {low:g}")
        return value

    return check


def _between(low: float, high: float) -> Callable[[Any], Any]:
    """AfterValidator: low <= value <= high."""

    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise _fail(f"must be between {low:g} and {high:g}")
        return value

    return check


PositiveInt = Annotated[int, Strict(), AfterValidator(_at_least(1))]
Port = Annotated[int, Strict(), AfterValidator(_between(1, 65535))]
Octet = Annotated[int, Strict(), AfterValidator(_between(0, 255))]
NonNegativeNumber = Annotated[float, BeforeValidator(_number), AfterValidator(_at_least(0))]
Duration = Annotated[float, BeforeValidator(_duration), AfterValidator(_at_least(0))]
PositiveDuration = Annotated[float, BeforeValidator(_duration), AfterValidator(_above(0))]
Share = Annotated[float, BeforeValidator(_number), AfterValidator(_between(0, 1))]


def _non_empty(value: str) -> str:
    """AfterValidator: a string that is not blank."""
    if not value.strip():
        raise _fail("must not be empty")
    return value


def _max_chars(limit: int, why: str = "") -> Callable[[str], str]:
    """AfterValidator: at most `limit` characters."""

    def check(value: str) -> str:
        if len(value) > limit:
            raise _fail(f"must be at most {limit} characters{why}")
        return value

    return check


def _not_empty_list(message: str) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """AfterValidator: a list with at least one item."""

    def check(value: tuple[Any, ...]) -> tuple[Any, ...]:
        if not value:
            raise _fail(message)
        return value

    return check


NonEmptyStr = Annotated[str, Strict(), AfterValidator(_non_empty)]


_CARRIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _carrier_name(value: str) -> str:
    """AfterValidator: names are used in metrics labels, events and logs."""
    if not _CARRIER_NAME.fullmatch(value):
        raise _fail("must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return value


CarrierName = Annotated[str, Strict(), AfterValidator(_carrier_name)]

_PREFIX = re.compile(r"\+\d{1,15}")
_E164 = re.compile(r"\+[1-9]\d{5,14}")


def _prefix(value: object) -> object:
    """BeforeValidator: "" or "+digits"; a bare YAML integer (`+86` unquoted parses as 86) is accepted."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"+{value}"
    if isinstance(value, str) and (value == "" or _PREFIX.fullmatch(value)):
        return value
    raise _fail('must be "" or "+" followed by 1 to 15 digits (quote it in YAML)')


Prefix = Annotated[str, BeforeValidator(_prefix)]


def _phone(value: object) -> object:
    """BeforeValidator: an international number, `+` optional → E.164 with `+`."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        candidate = value.strip()
        candidate = candidate if candidate.startswith("+") else f"+{candidate}"
        if _E164.fullmatch(candidate):
            return candidate
    raise _fail("must be an international number such as +8613800138000")


PhoneNumber = Annotated[str, BeforeValidator(_phone)]


@dataclass(frozen=True, slots=True)
class Rate:
    """`N/period`: at most `count` in `period_s` seconds; `window` is "sliding" or "calendar"."""

    count: int
    period_s: float
    window: Literal["sliding", "calendar"] = "sliding"

    def __str__(self) -> str:
        return f"{self.count}/{_format_seconds(self.period_s)}" + (
            " calendar" if self.window == "calendar" else ""
        )


def _format_seconds(seconds: float) -> str:
    """60 → "1m", 86400 → "1d", 90 → "90s"."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


_RATE = re.compile(r"\s*(\d+)\s*/\s*((?:\d+(?:\.\d+)?)?)\s*(ms|s|m|h|d|w)\s*")


def parse_rate(text: str, window: Literal["sliding", "calendar"] = "sliding") -> Rate:
    """`"5/1h"` (or `"5/h"`) → `Rate(5, 3600.0)`. ValueError on anything else."""
    match = _RATE.fullmatch(text)
    if not match:
        raise ValueError(f'{_quote(text)} is not a rate such as "1/1m", "5/1h", "10/24h"')
    count, amount, unit = match.groups()
    period = float(amount or 1) * _UNIT_SECONDS[unit]
    if int(count) < 1:
        raise ValueError(f"{_quote(text)}: the count must be at least 1")
    if period <= 0:
        raise ValueError(f"{_quote(text)}: the period must be longer than 0")
    if window == "calendar" and not _calendar_friendly(period):
        raise ValueError(f"{_quote(text)}: a calendar window needs a period that divides a day or is whole days")
    return Rate(int(count), period, window)


def _calendar_friendly(period: float) -> bool:
    """Calendar windows are aligned to local midnight: the period must tile a day or be whole days."""
    if period >= 86400:
        return period % 86400 == 0
    return period >= 1 and 86400 % period == 0


def _rate(value: object) -> Rate:
    """BeforeValidator: `"1/1m"` or the extra form `{limit: "1/1m", window: calendar|sliding}`."""
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        try:
            return parse_rate(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    if isinstance(value, Mapping):
        return _rate_from_mapping(value)
    raise _fail('must be a rate such as "1/1m" or {limit: "1/1m", window: calendar}')


def _rate_from_mapping(value: Mapping[Any, Any]) -> Rate:
    """The extra mapping form of a rate."""
    for key in value:
        if key not in ("limit", "window"):
            raise _fail("unknown key", str(key))
    window = value.get("window", "sliding")
    if window not in ("sliding", "calendar"):
        raise _fail("must be one of 'sliding', 'calendar'", "window")
    limit = value.get("limit")
    if not isinstance(limit, str):
        raise _fail('required: a rate such as "1/1m"', "limit")
    try:
        return parse_rate(limit, window)
    except ValueError as exc:
        raise _fail(str(exc), "limit") from None


RateSpec = Annotated[Rate, BeforeValidator(_rate)]


class TimeWindow(NamedTuple):
    """A daily local window `HH:MM-HH:MM`: start included, end excluded, crossing midnight if start > end."""

    start_min: int
    end_min: int

    def contains_minute(self, minute_of_day: int) -> bool:
        """Whether the minute of the day (0..1439) lies inside the window."""
        if self.start_min < self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min

    def contains(self, moment: time) -> bool:
        """Whether a local wall-clock time lies inside the window (seconds count)."""
        minute = moment.hour * 60 + moment.minute
        return self.contains_minute(minute)

    @property
    def start(self) -> time:
        """The opening as a `datetime.time`."""
        return time(self.start_min // 60, self.start_min % 60)

    @property
    def end(self) -> time:
        """The closing as a `datetime.time` (24:00 is midnight)."""
        return time((self.end_min // 60) % 24, self.end_min % 60)

    @property
    def spans_midnight(self) -> bool:
        """True when the window starts later than it ends."""
        return self.start_min > self.end_min

    def __str__(self) -> str:
        return f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-{self.end_min // 60:02d}:{self.end_min % 60:02d}"


_WINDOW = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


def _time_window(value: object) -> TimeWindow:
    """BeforeValidator: `"08:00-20:00"` → TimeWindow(480, 1200)."""
    if isinstance(value, TimeWindow):
        return value
    match = _WINDOW.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise _fail('must be a window "HH:MM-HH:MM" such as "08:00-20:00"')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 1440:
        raise _fail(f"{_quote(value)}: times must be between 00:00 and 24:00")
    if start == end % 1440:
        raise _fail(f"{_quote(value)}: start and end must differ (00:00-24:00 is the whole day)")
    return TimeWindow(start, end)


TimeWindowSpec = Annotated[TimeWindow, BeforeValidator(_time_window)]


class Listen(NamedTuple):
    """A `host:port` listen address (`[::1]:9310` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})")


def _listen(value: object) -> Listen:
    """BeforeValidator: `"127.0.0.1:9310"` → Listen("127.0.0.1", 9310)."""
    if isinstance(value, Listen):
        return value
    match = _LISTEN.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise _fail('must be "host:port" such as "127.0.0.1:9310" ("[::1]:9310" for IPv6)')
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise _fail("port must be between 1 and 65535")
    return Listen(match["v6"] or match["host"], port)


ListenSpec = Annotated[Listen, BeforeValidator(_listen)]


class Secret:
    """A secret string: `get()` gives the value; `repr`/`str`/serialisation never show it."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "inline") -> None:
        self._value = value
        self.source = source

    def get(self) -> str:
        """The secret value itself."""
        return self._value

    get_secret_value = get

    def __repr__(self) -> str:
        return f"Secret('**********', source={self.source!r})"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        """Validate from a string (or a Secret); serialise as asterisks."""
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda s: str(s)),
        )

    @classmethod
    def _validate(cls, value: object) -> "Secret":
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return cls(value)
        raise _fail("must be a string (quote it in YAML)")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _secret_from_env(value: object) -> Secret:
    """BeforeValidator for `password_env`: the named variable must be set and non-empty."""
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise _fail("must be the name of an environment variable")
    if value not in os.environ:
        raise _fail(f"environment variable {value} is not set")
    if not os.environ[value]:
        raise _fail(f"environment variable {value} is empty")
    return Secret(os.environ[value], source=f"env:{value}")


def _base_dir(info: ValidationInfo) -> Path:
    """Relative file paths are relative to the config file's directory (else the CWD)."""
    context = info.context or {}
    return Path(context.get("base_dir") or ".")


def _resolve_file(value: object, info: ValidationInfo) -> Path:
    """A readable file, resolved against the config file's directory."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail("must be a file path")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else _base_dir(info) / path
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


def _secret_from_file(value: object, info: ValidationInfo) -> Secret:
    """BeforeValidator for `password_file`: first line of the file, trailing newline removed."""
    if isinstance(value, Secret):
        return value
    path = _resolve_file(value, info)
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read {path}: {exc}") from None
    if not text:
        raise _fail(f"{path} is empty")
    return Secret(text, source=f"file:{path}")


EnvSecret = Annotated[Secret, BeforeValidator(_secret_from_env)]
FileSecret = Annotated[Secret, BeforeValidator(_secret_from_file)]
ReadableFile = Annotated[Path, BeforeValidator(_resolve_file)]


def password_problems(mapping: Mapping[Any, Any], *, required: bool) -> list[tuple[str, str]]:
    """(key, message) pairs for the password / password_env / password_file rule of one section."""
    given = [key for key in PASSWORD_KEYS if key in mapping]
    if required and not given:
        return [("password", "required key is missing: give one of password, password_env, password_file")]
    if len(given) > 1:
        return [(given[1], f"conflicts with {given[0]}: give only one of password, password_env, password_file")]
    return []


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class Frozen(BaseModel):
    """Base of every section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


def _none_is_empty(value: object) -> object:
    """An empty YAML section (`policies:` with nothing below) means the section with its defaults."""
    return {} if value is None else value


class TlsOptions(Frozen):
    """TLS for an SMPP or MQTT connection. `tls: true` means these defaults (verify the peer)."""

    ca_file: ReadableFile | None = None
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None
    insecure: Annotated[bool, Strict()] = False
    server_hostname: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> "TlsOptions":
        if self.key_file is not None and self.cert_file is None:
            raise _fail("key_file needs cert_file", "key_file")
        return self


def _tls(value: object) -> object:
    """BeforeValidator: `true` → default options, `false`/absent → None, a mapping → options."""
    if value is True:
        return {}
    if value is False or value is None:
        return None
    if isinstance(value, (Mapping, TlsOptions)):
        return value
    raise _fail("must be true, false or a mapping of ca_file, cert_file, key_file, insecure, server_hostname")


TlsSpec = Annotated[TlsOptions | None, BeforeValidator(_tls)]

_MISSING = Secret("", source="missing")


def _resolve_password(model: BaseModel, *, required: bool) -> None:
    """After validation: enforce one-of and copy the resolved secret into `password`."""
    given = [key for key in PASSWORD_KEYS if key in model.model_fields_set]
    problems = password_problems(dict.fromkeys(given), required=required)
    if problems:
        key, message = problems[0]
        raise _fail(message, key)
    if given and given[0] != "password":
        object.__setattr__(model, "password", getattr(model, given[0]))


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.*", re.S)


def _store_url(value: str) -> str:
    """AfterValidator: a SQLAlchemy URL."""
    if not _URL.fullmatch(value):
        raise _fail("must be a SQLAlchemy URL such as sqlite:///var/lib/smsgw/gateway.db")
    return value


_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def safe_url(url: str) -> str:
    """`postgresql://u:pw@h/db` → `postgresql://u:***@h/db`."""
    return _URL_PASSWORD.sub(r"\1***@", url)


class StoreConfig(Frozen):
    """`store:` the durable store. Relative SQLite paths (`sqlite:///var/x.db`) are relative to the CWD."""

    url: Annotated[str, Strict(), AfterValidator(_store_url)] = Field(repr=False)
    password: Secret | None = None
    password_env: EnvSecret | None = Field(default=None, repr=False)
    password_file: FileSecret | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _password(self) -> "StoreConfig":
        _resolve_password(self, required=False)
        return self

    @field_serializer("url")
    def _hide_url_password(self, url: str) -> str:
        """Dumps (e.g. for /status) never show a password written inside the URL."""
        return safe_url(url)

    @property
    def dialect(self) -> str:
        """`sqlite`, `postgresql`, … (the driver part after `+` dropped)."""
        return self.url.split(":", 1)[0].split("+", 1)[0].lower()

    def resolved_url(self) -> str:
        """The URL with `password` (if configured separately) filled in. Never log this."""
        if self.password is None:
            return self.url
        from sqlalchemy.engine import make_url

        return make_url(self.url).set(password=self.password.get()).render_as_string(hide_password=False)


_TOPIC_PREFIX = re.compile(r"[^#+\s/][^#+\s]*")


def _topic_prefix(value: str) -> str:
    """AfterValidator: a plain topic prefix without wildcards or a leading/trailing slash."""
    if not _TOPIC_PREFIX.fullmatch(value) or value.endswith("/"):
        raise _fail("must be a topic prefix without wildcards (+ #), spaces or a leading/trailing /")
    return value


def _mqtt_protocol(value: object) -> object:
    """BeforeValidator: YAML `5` or `"5"`, `"3.1.1"`."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class MqttConfig(Frozen):
    """`mqtt:` the broker connection (persistent session under `client_id`)."""

    host: NonEmptyStr = "127.0.0.1"
    port: Port = 1883
    topic_prefix: Annotated[str, Strict(), AfterValidator(_topic_prefix)] = "sms"
    client_id: NonEmptyStr
    username: NonEmptyStr | None = None
    password: Secret | None = None
    password_env: EnvSecret | None = Field(default=None, repr=False)
    password_file: FileSecret | None = Field(default=None, repr=False)
    tls: TlsSpec = None
    keepalive: PositiveDuration = 60.0
    protocol: Annotated[Literal["3.1.1", "5"], BeforeValidator(_mqtt_protocol)] = "3.1.1"
    session_expiry_s: PositiveDuration = 7 * 86400.0

    @model_validator(mode="after")
    def _password(self) -> "MqttConfig":
        _resolve_password(self, required=False)
        return self


class HttpConfig(Frozen):
    """`http:` the loopback endpoint for /healthz, /status and /metrics."""

    listen: ListenSpec = Listen("127.0.0.1", 9310)


_STATUS_HEX = re.compile(r"0[xX][0-9A-Fa-f]{1,8}")


def _command_status_codes() -> dict[str, int]:
    """SMPP 3.4 command_status names (`ESME_RTHROTTLED`) → codes, from smpplib's tables."""
    try:
        import smpplib.consts as consts
    except ImportError:  # pragma: no cover - smpplib is a dependency
        return {}
    return {
        name[len("SMPP_") :]: int(getattr(consts, name))
        for name in dir(consts)
        if name.startswith("SMPP_ESME_") and isinstance(getattr(consts, name), int)
    }


def _status_code(key: object) -> int:
    """`ESME_RTHROTTLED`, `0x58`, `88` → 88. ValueError otherwise."""
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key <= 0xFFFFFFFF:
        return key
    if isinstance(key, str):
        if _STATUS_HEX.fullmatch(key.strip()):
            return int(key.strip(), 16)
        if key.strip().isdigit():
            return int(key.strip())
        codes = _command_status_codes()
        name = key.strip().upper()
        if name in codes:
            return codes[name]
    raise ValueError("unknown command_status: use an SMPP 3.4 name (ESME_RTHROTTLED), 0x58 or 88")


StatusClass = Literal["transient", "permanent", "reroute"]


def _status_overrides(value: object) -> object:
    """BeforeValidator: keys (names or codes) → integer codes; values checked by the field type."""
    if not isinstance(value, Mapping):
        raise _fail("must be a mapping of command_status (name or number) to transient|permanent|reroute")
    result: dict[int, object] = {}
    for key, kind in value.items():
        try:
            code = _status_code(key)
        except ValueError as exc:
            raise _fail(str(exc), str(key)) from None
        if kind not in ("transient", "permanent", "reroute"):
            raise _fail("must be one of 'transient', 'permanent', 'reroute'", str(key))
        result[code] = kind
    return result


def _int_choice(*choices: int) -> Callable[[object], object]:
    """BeforeValidator for integer literals: YAML `true` must not pass as 1."""

    def check(value: object) -> object:
        if isinstance(value, bool) or value not in choices:
            raise _fail("must be one of " + ", ".join(str(c) for c in choices))
        return value

    return check


def _smpp_octets(text: str) -> int:
    """Octets of a C-octet string field as the codec writes it (Latin-1, else UTF-8)."""
    try:
        return len(text.encode("latin-1"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8"))


class CarrierConfig(Frozen):
    """One entry of `carriers:`: an SMSC, its binds, limits and timers."""

    name: CarrierName
    host: NonEmptyStr
    port: Port
    system_id: Annotated[str, Strict(), AfterValidator(_max_chars(15, " (SMPP 3.4)"))]
    password: Secret = Field(default=_MISSING)
    password_env: EnvSecret | None = Field(default=None, repr=False)
    password_file: FileSecret | None = Field(default=None, repr=False)
    system_type: Annotated[str, Strict(), AfterValidator(_max_chars(12, " (SMPP 3.4)"))] = ""
    address_range: Annotated[str, Strict(), AfterValidator(_max_chars(40, " (SMPP 3.4)"))] = ""
    bind: Literal["transceiver", "transmitter_receiver"] = "transceiver"
    binds: PositiveInt = 1
    window: PositiveInt = 10
    tps: NonNegativeNumber = 0.0
    enquire_link_s: PositiveDuration = 30.0
    response_timeout_s: PositiveDuration = 10.0
    reconnect_s: PositiveDuration = 1.0
    reconnect_max_s: PositiveDuration = 60.0
    connect_timeout_s: PositiveDuration = 10.0
    source_ton: Octet = 0
    source_npi: Octet = 1
    default_sender: Annotated[str, Strict(), AfterValidator(_non_empty), AfterValidator(_max_chars(20))] | None = None
    max_parts: Annotated[int, Strict(), AfterValidator(_between(1, 255))] = 10
    data_coding: Annotated[Literal[0, 1, 3], BeforeValidator(_int_choice(0, 1, 3))] = 0
    concatenation: Literal["udh", "sar", "payload"] = "udh"
    reference_bits: Annotated[Literal[8, 16], BeforeValidator(_int_choice(8, 16))] = 8
    tls: TlsSpec = None
    status_overrides: Annotated[dict[int, StatusClass], BeforeValidator(_status_overrides)] = Field(
        default_factory=dict
    )
    max_pdu_size: Annotated[int, Strict(), AfterValidator(_between(1024, 16 * 1024 * 1024))] = 65536
    submit_retries: Annotated[int, Strict(), AfterValidator(_at_least(0))] = 3
    queue_full_pause_s: Duration = 1.0
    min_tps: Annotated[float, BeforeValidator(_number), AfterValidator(_above(0))] = 1.0

    @model_validator(mode="after")
    def _checks(self) -> "CarrierConfig":
        _resolve_password(self, required=True)
        pw = self.password.get() if isinstance(self.password, Secret) else None
        if pw is not None and _smpp_octets(pw) > 8:
            # SMPP 3.4 bind password: a C-octet string of at most 9 octets with its NUL. The
            # value is never echoed (it is a secret); the source says where it came from.
            raise _fail(f"must be at most 8 characters (SMPP 3.4); the one given "
                        f"({self.password.source}) is longer", "password")
        if self.reconnect_max_s < self.reconnect_s:
            raise _fail("must be at least reconnect_s", "reconnect_max_s")
        return self

    def connection_key(self) -> tuple[object, ...]:
        """What a bind depends on: when this changes on reload, the carrier must be re-bound."""
        return (
            self.host,
            self.port,
            self.system_id,
            self.password,
            self.system_type,
            self.address_range,
            self.bind,
            self.binds,
            self.tls,
            self.connect_timeout_s,
            self.max_pdu_size,
        )


def connection_key(carrier: CarrierConfig) -> tuple[object, ...]:
    """Module-level spelling of `CarrierConfig.connection_key()`."""
    return carrier.connection_key()


class RouteConfig(Frozen):
    """One entry of `routes:`: the longest matching prefix wins; carriers in order of preference."""

    prefix: Prefix
    carriers: Annotated[tuple[CarrierName, ...], AfterValidator(_not_empty_list("at least one carrier is required"))]

    @model_validator(mode="after")
    def _no_repeats(self) -> "RouteConfig":
        seen: set[str] = set()
        for index, name in enumerate(self.carriers):
            if name in seen:
                raise _fail(f"carrier {_quote(name)} is listed twice", "carriers", index)
            seen.add(name)
        return self


# --------------------------------------------------------------------------------------------
# Policies (issue 6): typed and validated here, enforced by gateway/routing/policy.py
# --------------------------------------------------------------------------------------------


def _timezone(value: str) -> str:
    """AfterValidator: an IANA time zone name."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(f"unknown time zone {_quote(value)} (use an IANA name such as Asia/Shanghai)") from None
    return value


def _regex(value: object) -> re.Pattern[str]:
    """BeforeValidator: a compiled regular expression; the error names what is wrong."""
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str) or not value:
        raise _fail("must be a non-empty regular expression string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise _fail(f"invalid regular expression: {exc}") from None


def _keyword(value: str) -> str:
    """AfterValidator: opt-out keywords are compared trimmed."""
    if not value.strip():
        raise _fail("must not be empty")
    return value.strip()


class OtpPolicy(Frozen):
    """`policies.otp`: per-recipient velocity limits, test-phone exemptions, per-prefix caps."""

    limits: tuple[RateSpec, ...] = ()
    exempt: frozenset[PhoneNumber] = frozenset()
    prefix_caps: dict[Prefix, RateSpec] = Field(default_factory=dict)


class MarketingPolicy(Frozen):
    """`policies.marketing`: sending window, per-recipient caps, opt-out text.

    Extra: `prefix_windows` overrides `window` for numbers under a prefix (longest prefix wins).
    """

    window: TimeWindowSpec | None = None
    prefix_windows: dict[Prefix, TimeWindowSpec] = Field(default_factory=dict)
    caps: tuple[RateSpec, ...] = ()
    opt_out_text: NonEmptyStr | None = None

    def window_for(self, number: str) -> TimeWindow | None:
        """The window that applies to an E.164 number: longest `prefix_windows` match, else `window`."""
        best: tuple[int, TimeWindow] | None = None
        for prefix, window in self.prefix_windows.items():
            if number.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), window)
        return best[1] if best else self.window


class Policies(Frozen):
    """`policies:` admission rules. A rule whose key is absent is off (None / empty).

    `opt_out_keywords` absent means `DEFAULT_OPT_OUT_KEYWORDS`; `opt_out_keyword_set` holds them
    case-folded for matching an MO's trimmed text.
    """

    timezone: Annotated[str, Strict(), AfterValidator(_timezone)] = "Asia/Shanghai"
    otp: Annotated[OtpPolicy, BeforeValidator(_none_is_empty)] = OtpPolicy()
    duplicate_content: PositiveDuration | None = None
    marketing: Annotated[MarketingPolicy, BeforeValidator(_none_is_empty)] = MarketingPolicy()
    signatures: dict[NonEmptyStr, NonEmptyStr] = Field(default_factory=dict)
    sender_signatures: dict[NonEmptyStr, NonEmptyStr] = Field(default_factory=dict)
    opt_out_keywords: Annotated[
        tuple[Annotated[str, Strict(), AfterValidator(_keyword)], ...],
        AfterValidator(_not_empty_list("must list at least one keyword (omit the key for the built-in list)")),
    ] = DEFAULT_OPT_OUT_KEYWORDS
    blocked_content: tuple[Annotated[re.Pattern[str], BeforeValidator(_regex)], ...] = ()
    retention_days: PositiveInt | None = None

    @property
    def tz(self) -> ZoneInfo:
        """The policies' time zone object."""
        return ZoneInfo(self.timezone)

    @property
    def opt_out_keyword_set(self) -> frozenset[str]:
        """Keywords case-folded, for `text.strip().casefold() in policies.opt_out_keyword_set`."""
        return frozenset(k.casefold() for k in self.opt_out_keywords)

    def rules_on(self) -> list[str]:
        """Names of the rules that are switched on, for summaries and logs."""
        checks = {
            "otp_limits": bool(self.otp.limits),
            "otp_prefix_caps": bool(self.otp.prefix_caps),
            "duplicate_content": self.duplicate_content is not None,
            "marketing_window": self.marketing.window is not None or bool(self.marketing.prefix_windows),
            "marketing_caps": bool(self.marketing.caps),
            "opt_out_text": self.marketing.opt_out_text is not None,
            "signatures": bool(self.signatures or self.sender_signatures),
            "blocked_content": bool(self.blocked_content),
            "retention": self.retention_days is not None,
        }
        return [name for name, on in checks.items() if on]


# --------------------------------------------------------------------------------------------
# Dispatch extras (issue 5)
# --------------------------------------------------------------------------------------------


def _weights(value: object) -> object:
    """BeforeValidator: `"4:1"` (transactional:marketing) or a mapping."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*", value)
        if not match:
            raise _fail('must be "T:M" such as "4:1" or {transactional: 4, marketing: 1}')
        return {"transactional": float(match[1]), "marketing": float(match[2])}
    return value


PositiveNumber = Annotated[float, BeforeValidator(_number), AfterValidator(_above(0))]


class LaneWeights(Frozen):
    """How transactional and marketing share what OTP leaves (default 4:1)."""

    transactional: PositiveNumber = 4.0
    marketing: PositiveNumber = 1.0


class MaxAge(Frozen):
    """Maximum time in the queue per priority before `expired_in_queue` (seconds)."""

    otp: PositiveDuration = 300.0
    transactional: PositiveDuration = 86400.0
    marketing: PositiveDuration = 259200.0

    def for_priority(self, priority: "str | Enum") -> float:
        """`max_age.for_priority("otp")` → 300.0; an enum member named OTP (any case) works too."""
        name = (priority.name if isinstance(priority, Enum) else str(priority)).lower()
        if name not in PRIORITIES:
            raise KeyError(priority)
        return float(getattr(self, name))


class DispatchConfig(Frozen):
    """`dispatch:` (extra) priority lanes, OTP reserve, maximum queue ages, batch size."""

    otp_reserve: Annotated[float, BeforeValidator(_number), AfterValidator(_between(0, 0.9))] = 0.2
    weights: Annotated[LaneWeights, BeforeValidator(_weights), BeforeValidator(_none_is_empty)] = LaneWeights()
    max_age: Annotated[MaxAge, BeforeValidator(_none_is_empty)] = MaxAge()
    batch_size: Annotated[int, Strict(), AfterValidator(_between(1, 100000))] = 1000


# --------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------


class Config(Frozen):
    """The whole configuration file."""

    shutdown_timeout_s: Duration = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    store: StoreConfig
    mqtt: MqttConfig
    http: Annotated[HttpConfig, BeforeValidator(_none_is_empty)] = HttpConfig()
    carriers: Annotated[tuple[CarrierConfig, ...], AfterValidator(_not_empty_list("at least one carrier is required"))]
    routes: tuple[RouteConfig, ...] = ()
    policies: Annotated[Policies, BeforeValidator(_none_is_empty)] = Policies()
    dispatch: Annotated[DispatchConfig, BeforeValidator(_none_is_empty)] = DispatchConfig()

    def carrier(self, name: str) -> CarrierConfig:
        """The carrier of that name (KeyError if none)."""
        for carrier in self.carriers:
            if carrier.name == name:
                return carrier
        raise KeyError(name)

    @property
    def carrier_names(self) -> tuple[str, ...]:
        """Carrier names in file order."""
        return tuple(c.name for c in self.carriers)

    def summary(self) -> str:
        """One line for `check-config` and the startup log; never holds a secret."""
        carriers = ", ".join(f"{c.name} {c.binds} bind{'s' if c.binds != 1 else ''}" for c in self.carriers)
        rules = self.policies.rules_on()
        policies = f"policies: {', '.join(rules)}" if rules else "no policies"
        return (
            f"ok: {len(self.carriers)} carrier{'s' if len(self.carriers) != 1 else ''} ({carriers}), "
            f"{len(self.routes)} route{'s' if len(self.routes) != 1 else ''}, store {self.store.dialect}, "
            f"mqtt {self.mqtt.host}:{self.mqtt.port} prefix {self.mqtt.topic_prefix}, "
            f"http {self.http.listen}, {policies}"
        )


class ReloadPlan(NamedTuple):
    """What a reload changes, by carrier name."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    rebind: tuple[str, ...]
    updated: tuple[str, ...]


def reload_plan(old: Config, new: Config) -> ReloadPlan:
    """Carriers to start, stop, re-bind (connection settings changed) or update in place."""
    before = {c.name: c for c in old.carriers}
    after = {c.name: c for c in new.carriers}
    common = [name for name in after if name in before]
    return ReloadPlan(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        rebind=tuple(n for n in common if before[n].connection_key() != after[n].connection_key()),
        updated=tuple(
            n
            for n in common
            if before[n].connection_key() == after[n].connection_key() and before[n] != after[n]
        ),
    )


# --------------------------------------------------------------------------------------------
# Cross-checks on the raw mapping (so that they are reported even when other keys are invalid)
# --------------------------------------------------------------------------------------------


def _items(raw: Mapping[Any, Any], key: str) -> list[tuple[int, Mapping[Any, Any]]]:
    """(index, mapping) for each mapping in a list under `key`; anything else is left to pydantic."""
    value = raw.get(key)
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, Mapping)]


def _carrier_checks(raw: Mapping[Any, Any]) -> tuple[list[str], set[str]]:
    """Duplicate names and the password rule; returns the problems and the known names."""
    problems: list[str] = []
    first: dict[str, int] = {}
    for index, carrier in _items(raw, "carriers"):
        for key, message in password_problems(carrier, required=True):
            problems.append(f"carriers[{index}].{key}: {message}")
        name = carrier.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            problems.append(
                f"carriers[{index}].name: duplicate carrier name {_quote(name)} (also carriers[{first[name]}])"
            )
        else:
            first[name] = index
    return problems, set(first)


def _route_checks(raw: Mapping[Any, Any], names: set[str], check_names: bool) -> list[str]:
    """Duplicate prefixes and routes naming unknown carriers."""
    problems: list[str] = []
    first: dict[str, int] = {}
    for index, route in _items(raw, "routes"):
        prefix = route.get("prefix")
        try:
            normalised = _prefix(prefix)
        except PydanticCustomError:
            normalised = None
        if isinstance(normalised, str):
            if normalised in first:
                problems.append(
                    f"routes[{index}].prefix: duplicate prefix {_quote(normalised)} (also routes[{first[normalised]}])"
                )
            else:
                first[normalised] = index
        carriers = route.get("carriers")
        if check_names and isinstance(carriers, list):
            for position, name in enumerate(carriers):
                if isinstance(name, str) and name not in names:
                    problems.append(f"routes[{index}].carriers[{position}]: unknown carrier {_quote(name)}")
    return problems


def _cross_checks(raw: Mapping[Any, Any]) -> list[str]:
    """Checks spanning several entries, run on the raw mapping."""
    problems, names = _carrier_checks(raw)
    carriers_ok = isinstance(raw.get("carriers"), list)
    problems += _route_checks(raw, names, check_names=carriers_ok)
    return problems


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def parse_config(mapping: object, *, source: str = "<config>", base_dir: str | Path | None = None) -> Config:
    """Validate an already-parsed YAML document. `base_dir` anchors relative `*_file` paths."""
    if not isinstance(mapping, Mapping):
        kind = "nothing" if mapping is None else type(mapping).__name__
        raise ConfigError([f"{source}: the top level must be a mapping of keys, not {kind}"])
    context = {"base_dir": str(base_dir) if base_dir is not None else None, "source": source}
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(mapping, context=context)
    except ValidationError as exc:
        problems = _problems_from(exc)
    problems = _in_document_order(_dedupe(problems + _cross_checks(mapping)), mapping)
    if problems or config is None:
        raise ConfigError(problems)
    return config


_PATH_HEAD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")


def _in_document_order(problems: list[str], mapping: Mapping[Any, Any]) -> list[str]:
    """Sort by top-level key as written, then by list index; stable within one entry."""
    order = {key: i for i, key in enumerate(mapping)}

    def key(line: str) -> tuple[int, int]:
        match = _PATH_HEAD.match(line)
        if not match:
            return (len(order), 0)
        return (order.get(match[1], len(order)), int(match[2] or 0))

    return sorted(problems, key=key)


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
    """A safe loader that records duplicate mapping keys (YAML would silently keep the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                line = key_node.start_mark.line + 1
                self.duplicates.append(f"line {line}: duplicate key {_quote(key)}")
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def load_yaml(text: str, source: str) -> object:
    """Parse YAML text; syntax errors and duplicate keys become `SOURCE: line N: …` problems."""
    loader = _UniqueKeyLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{source}: {where}{what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError([f"{source}: {d}" for d in loader.duplicates])
    return document


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a YAML file. Raises ConfigError with every problem found."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{source}: cannot read: {reason}"]) from None
    if not text.strip() or _only_comments(text):
        raise ConfigError([f"{source}: the file is empty"])
    document = load_yaml(text, source)
    if document is None:
        raise ConfigError([f"{source}: the file is empty"])
    return parse_config(document, source=source, base_dir=Path(path).resolve().parent)


def _only_comments(text: str) -> bool:
    """True when every line is blank or a comment (or a document marker)."""
    return all(_is_blank_line(line) for line in text.splitlines())


def _is_blank_line(line: str) -> bool:
    """Blank, a comment, or a document marker."""
    stripped = line.strip()
    return not stripped or stripped.startswith("#") or stripped in ("---", "...")
