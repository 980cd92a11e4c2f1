"""gateway.config: every key typed, every error named by its YAML path, secrets kept secret."""

import copy
import enum
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import (
    DEFAULT_OPT_OUT_KEYWORDS,
    Config,
    ConfigError,
    Listen,
    Rate,
    Secret,
    TimeWindow,
    connection_key,
    load_config,
    parse_config,
    parse_duration,
    parse_rate,
    reload_plan,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3tP5"  # SMPP 3.4: a bind password has at most 8 characters


def base() -> dict[str, Any]:
    """A minimal valid configuration mapping."""
    return {
        "store": {"url": "sqlite:///var/test.db"},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "topic_prefix": "sms", "client_id": "smsgw-test"},
        "carriers": [
            {"name": "alpha", "host": "127.0.0.1", "port": 2775, "system_id": "gw", "password": SECRET},
            {"name": "beta", "host": "127.0.0.1", "port": 2776, "system_id": "gw", "password": "pw", "binds": 2},
        ],
        "routes": [{"prefix": "+86", "carriers": ["alpha", "beta"]}, {"prefix": "", "carriers": ["beta"]}],
    }


def problems_of(mapping: Any) -> list[str]:
    """The problems parse_config reports (fails the test when there are none)."""
    with pytest.raises(ConfigError) as info:
        parse_config(mapping)
    return info.value.problems


def with_change(path: str, value: Any) -> dict[str, Any]:
    """base() with one key (dotted path, integers index lists) set; value DELETE removes it."""
    data = copy.deepcopy(base())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = data
    for part in parents:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


# ---------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("name", ["demo.yaml", "gateway.example.yaml"])
def test_shipped_config_files_are_valid(name: str) -> None:
    config = load_config(REPO / "config" / name)
    assert config.summary().startswith("ok: 2 carriers (alpha 1 bind, beta 2 binds), 2 routes, store sqlite")
    # Alibaba's limits as it counts them: calendar minute and hour, rolling day.
    assert config.policies.otp.limits == (Rate(1, 60.0, "calendar"), Rate(5, 3600.0, "calendar"),
                                          Rate(10, 86400.0))
    assert config.policies.marketing.window == TimeWindow(480, 1200)
    assert config.policies.duplicate_content == 30.0
    assert config.policies.retention_days == 183


def test_demo_config_values() -> None:
    config = load_config(REPO / "config" / "demo.yaml")
    assert config.store.url == "sqlite:///var/demo/gateway.db"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.topic_prefix, config.mqtt.client_id) == (
        "127.0.0.1",
        1883,
        "sms",
        "smsgw-demo",
    )
    assert config.http.listen == Listen("127.0.0.1", 9310)
    assert [(c.name, c.port) for c in config.carriers] == [("alpha", 2775), ("beta", 2776)]
    assert [(r.prefix, r.carriers) for r in config.routes] == [("+86", ("alpha", "beta")), ("", ("beta",))]
    assert "+8613800138000" in config.policies.otp.exempt


def test_minimal_config_defaults() -> None:
    config = parse_config(base())
    alpha = config.carriers[0]
    assert config.shutdown_timeout_s == 10.0
    assert config.http.listen == Listen("127.0.0.1", 9310)
    assert (alpha.bind, alpha.binds, alpha.window, alpha.tps) == ("transceiver", 1, 10, 0.0)
    assert (alpha.enquire_link_s, alpha.response_timeout_s, alpha.reconnect_s, alpha.reconnect_max_s) == (
        30.0,
        10.0,
        1.0,
        60.0,
    )
    assert (alpha.source_ton, alpha.source_npi, alpha.max_parts, alpha.data_coding) == (0, 1, 10, 0)
    assert (alpha.concatenation, alpha.reference_bits, alpha.tls) == ("udh", 8, None)
    assert alpha.password.get() == SECRET
    assert config.carrier("beta").binds == 2
    assert config.carrier_names == ("alpha", "beta")


def test_policies_absent_means_rules_off_except_opt_out() -> None:
    policies = parse_config(base()).policies
    assert policies.rules_on() == []
    assert policies.otp.limits == () and policies.otp.prefix_caps == {} and not policies.otp.exempt
    assert policies.duplicate_content is None and policies.marketing.window is None
    assert policies.retention_days is None and policies.blocked_content == ()
    assert policies.opt_out_keywords == DEFAULT_OPT_OUT_KEYWORDS == ("T", "TD", "退订", "STOP", "UNSUBSCRIBE")
    assert policies.timezone == "Asia/Shanghai"
    assert "no policies" in parse_config(base()).summary()


def test_configured_opt_out_keywords_replace_the_builtin_list() -> None:
    policies = parse_config(with_change("policies.opt_out_keywords", ["Stop ", "取消"])).policies
    assert policies.opt_out_keywords == ("Stop", "取消")
    assert policies.opt_out_keyword_set == frozenset({"stop", "取消"})


def test_dispatch_defaults_and_forms() -> None:
    dispatch = parse_config(base()).dispatch
    assert dispatch.otp_reserve == 0.2
    assert (dispatch.weights.transactional, dispatch.weights.marketing) == (4.0, 1.0)
    assert dispatch.max_age.for_priority("otp") == 300.0
    assert dispatch.max_age.for_priority("transactional") == 86400.0
    assert dispatch.max_age.for_priority("marketing") == 259200.0
    custom = parse_config(with_change("dispatch", {"weights": "3:2", "max_age": {"otp": "2m"}})).dispatch
    assert (custom.weights.transactional, custom.weights.marketing, custom.max_age.otp) == (3.0, 2.0, 120.0)


def test_max_age_accepts_priority_enums() -> None:
    class Priority(enum.IntEnum):
        OTP = 0
        TRANSACTIONAL = 1
        MARKETING = 2

    max_age = parse_config(base()).dispatch.max_age
    assert [max_age.for_priority(p) for p in Priority] == [300.0, 86400.0, 259200.0]
    with pytest.raises(KeyError):
        max_age.for_priority("bulk")


def test_carrier_extras() -> None:
    carrier = dict(
        base()["carriers"][0],
        tls=True,
        concatenation="sar",
        reference_bits=16,
        data_coding=3,
        connect_timeout_s="2s",
        status_overrides={"ESME_RTHROTTLED": "transient", "0x45": "reroute", 11: "permanent"},
        default_sender="BRAND",
        max_parts=5,
    )
    config = parse_config(with_change("carriers.0", carrier))
    alpha = config.carriers[0]
    assert alpha.tls is not None and alpha.tls.insecure is False
    assert (alpha.concatenation, alpha.reference_bits, alpha.data_coding, alpha.connect_timeout_s) == ("sar", 16, 3, 2.0)
    assert alpha.status_overrides == {0x58: "transient", 0x45: "reroute", 11: "permanent"}


# ---------------------------------------------------------------------------- errors by path


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("carriers.1.port", 70000, "carriers[1].port: must be between 1 and 65535"),
        ("carriers.1.port", 0, "carriers[1].port: must be between 1 and 65535"),
        ("carriers.0.port", "x", "carriers[0].port: must be an integer"),
        ("carriers.0.port", True, "carriers[0].port: must be an integer"),
        ("mqtt.port", 65536, "mqtt.port: must be between 1 and 65535"),
        ("carriers.0.passwrd", "x", "carriers[0].passwrd: unknown key"),
        ("stor", {}, "stor: unknown key"),
        ("policies.otp.limit", ["1/1m"], "policies.otp.limit: unknown key"),
        ("carriers.0.window", 0, "carriers[0].window: must be at least 1"),
        ("carriers.0.binds", 0, "carriers[0].binds: must be at least 1"),
        ("carriers.0.tps", -1, "carriers[0].tps: must be at least 0"),
        ("carriers.0.bind", "receiver", "carriers[0].bind: must be one of 'transceiver' or 'transmitter_receiver'"),
        ("carriers.0.host", DELETE, "carriers[0].host: required key is missing"),
        ("mqtt.client_id", DELETE, "mqtt.client_id: required key is missing"),
        ("store", DELETE, "store: required key is missing"),
        ("carriers.0.enquire_link_s", "soon", 'carriers[0].enquire_link_s: "soon" is not a duration such as 30s, 5m, 1h, 1d'),
        ("carriers.0.reconnect_max_s", 0.5, "carriers[0].reconnect_max_s: must be at least reconnect_s"),
        ("carriers.0.system_id", "x" * 16, "carriers[0].system_id: must be at most 15 characters (SMPP 3.4)"),
        ("carriers.0.system_id", 1234, "carriers[0].system_id: must be a string (quote it in YAML)"),
        ("carriers.0.name", "al pha", "carriers[0].name: must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"),
        ("carriers.0.data_coding", True, "carriers[0].data_coding: must be one of 0, 1, 3"),
        ("carriers.0.status_overrides", {"ESME_NOPE": "transient"}, 'carriers[0].status_overrides.ESME_NOPE: unknown command_status: use an SMPP 3.4 name (ESME_RTHROTTLED), 0x58 or 88'),
        ("carriers.0.status_overrides", {"ESME_RSYSERR": "later"}, "carriers[0].status_overrides.ESME_RSYSERR: must be one of 'transient', 'permanent', 'reroute'"),
        ("carriers", [], "carriers: at least one carrier is required"),
        ("routes.0.prefix", "86", 'routes[0].prefix: must be "" or "+" followed by 1 to 15 digits (quote it in YAML)'),
        ("routes.0.carriers", [], "routes[0].carriers: at least one carrier is required"),
        ("http.listen", "localhost", 'http.listen: must be "host:port" such as "127.0.0.1:9310" ("[::1]:9310" for IPv6)'),
        ("mqtt.topic_prefix", "sms/#", "mqtt.topic_prefix: must be a topic prefix without wildcards (+ #), spaces or a leading/trailing /"),
        ("store.url", "gateway.db", "store.url: must be a SQLAlchemy URL such as sqlite:///var/lib/smsgw/gateway.db"),
        ("shutdown_timeout_s", -1, "shutdown_timeout_s: must be at least 0"),
        ("policies.timezone", "Mars/Olympus", 'policies.timezone: unknown time zone "Mars/Olympus" (use an IANA name such as Asia/Shanghai)'),
        ("policies.otp.limits", ["1/1m", "often"], 'policies.otp.limits[1]: "often" is not a rate such as "1/1m", "5/1h", "10/24h"'),
        ("policies.otp.limits", ["0/1m"], 'policies.otp.limits[0]: "0/1m": the count must be at least 1'),
        ("policies.otp.limits", [{"limit": "1/7m", "window": "calendar"}], 'policies.otp.limits[0].limit: "1/7m": a calendar window needs a period that divides a day or is whole days'),
        ("policies.otp.limits", [{"limit": "1/1m", "window": "weekly"}], "policies.otp.limits[0].window: must be one of 'sliding', 'calendar'"),
        ("policies.otp.exempt", ["12ab"], "policies.otp.exempt[0]: must be an international number such as +8613800138000"),
        ("policies.otp.prefix_caps", {"+86": "lots"}, 'policies.otp.prefix_caps["+86"]: "lots" is not a rate such as "1/1m", "5/1h", "10/24h"'),
        ("policies.marketing.window", "8-20", 'policies.marketing.window: must be a window "HH:MM-HH:MM" such as "08:00-20:00"'),
        ("policies.marketing.window", "08:00-08:00", 'policies.marketing.window: "08:00-08:00": start and end must differ (00:00-24:00 is the whole day)'),
        ("policies.marketing.window", "08:00-25:00", 'policies.marketing.window: "08:00-25:00": times must be between 00:00 and 24:00'),
        ("policies.duplicate_content", "0s", "policies.duplicate_content: must be greater than 0"),
        ("policies.retention_days", 0, "policies.retention_days: must be at least 1"),
        ("policies.opt_out_keywords", [], "policies.opt_out_keywords: must list at least one keyword (omit the key for the built-in list)"),
        ("policies.signatures", {"billing": ""}, "policies.signatures.billing: must not be empty"),
        ("dispatch.otp_reserve", 1.5, "dispatch.otp_reserve: must be between 0 and 0.9"),
        ("dispatch.weights", {"transactional": 0}, "dispatch.weights.transactional: must be greater than 0"),
    ],
)
def test_error_names_the_yaml_path(path: str, value: Any, expected: str) -> None:
    assert expected in problems_of(with_change(path, value))


def test_invalid_regex_is_an_error_with_its_path() -> None:
    problems = problems_of(with_change("policies.blocked_content", ["(?i)casino", "(unclosed"]))
    assert len(problems) == 1
    assert problems[0].startswith("policies.blocked_content[1]: invalid regular expression: missing )")


def test_blocked_content_is_compiled() -> None:
    policies = parse_config(with_change("policies.blocked_content", ["(?i)casino"])).policies
    assert policies.blocked_content[0].search("Big CASINO night")


def test_duplicate_carrier_names() -> None:
    data = base()
    data["carriers"][1]["name"] = "alpha"
    assert 'carriers[1].name: duplicate carrier name "alpha" (also carriers[0])' in problems_of(data)


def test_route_naming_an_unknown_carrier() -> None:
    data = with_change("routes.0.carriers", ["alpha", "gamma"])
    assert problems_of(data) == ['routes[0].carriers[1]: unknown carrier "gamma"']


def test_duplicate_route_prefix_even_when_written_as_an_integer() -> None:
    data = base()
    data["routes"].append({"prefix": 86, "carriers": ["alpha"]})  # YAML reads +86 unquoted as 86
    assert problems_of(data) == ['routes[2].prefix: duplicate prefix "+86" (also routes[0])']


def test_carrier_listed_twice_in_a_route() -> None:
    data = with_change("routes.0.carriers", ["alpha", "alpha"])
    assert problems_of(data) == ['routes[0].carriers[1]: carrier "alpha" is listed twice']


def test_carrier_without_any_password() -> None:
    problems = problems_of(with_change("carriers.1.password", DELETE))
    assert problems == ["carriers[1].password: required key is missing: give one of password, password_env, password_file"]


def test_carrier_with_two_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_TEST_PW", "x")
    problems = problems_of(with_change("carriers.0.password_env", "SMSGW_TEST_PW"))
    assert problems == [
        "carriers[0].password_env: conflicts with password: give only one of password, password_env, password_file"
    ]


def test_every_problem_is_reported_in_document_order() -> None:
    data = base()
    data["carriers"][1]["port"] = 99999
    data["carriers"][0]["passwrd"] = "x"
    data["routes"][1]["carriers"] = ["nope"]
    data["mqtt"]["port"] = -1
    assert problems_of(data) == [
        "mqtt.port: must be between 1 and 65535",
        "carriers[0].passwrd: unknown key",
        "carriers[1].port: must be between 1 and 65535",
        'routes[1].carriers[0]: unknown carrier "nope"',
    ]


def test_top_level_must_be_a_mapping() -> None:
    assert problems_of(["a"]) == ["<config>: the top level must be a mapping of keys, not list"]


# ---------------------------------------------------------------------------- secrets


def test_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_TEST_PW", "from-env")
    data = with_change("carriers.0.password", DELETE)
    data["carriers"][0]["password_env"] = "SMSGW_TEST_PW"
    alpha = parse_config(data).carriers[0]
    assert alpha.password.get() == "from-env"
    assert alpha.password.source == "env:SMSGW_TEST_PW"


def test_password_env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMSGW_TEST_UNSET", raising=False)
    data = with_change("carriers.0.password", DELETE)
    data["carriers"][0]["password_env"] = "SMSGW_TEST_UNSET"
    assert problems_of(data) == ["carriers[0].password_env: environment variable SMSGW_TEST_UNSET is not set"]


def test_password_file_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "alpha.pw").write_text("fromfile\n")
    text = (REPO / "config" / "demo.yaml").read_text().replace("password: demo ", "password_file: alpha.pw ", 1)
    (tmp_path / "gw.yaml").write_text(text)
    config = load_config(tmp_path / "gw.yaml")
    assert config.carriers[0].password.get() == "fromfile"
    assert config.carriers[1].password.get() == "demo"


def test_password_file_unreadable(tmp_path: Path) -> None:
    data = with_change("carriers.0.password", DELETE)
    data["carriers"][0]["password_file"] = str(tmp_path / "missing.pw")
    assert problems_of(data) == [
        f"carriers[0].password_file: cannot read {tmp_path / 'missing.pw'}: No such file or directory"
    ]


def test_mqtt_password_is_optional_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config(base()).mqtt.password is None
    monkeypatch.setenv("SMSGW_TEST_MQTT", "mqtt-" + SECRET)
    config = parse_config(with_change("mqtt.password_env", "SMSGW_TEST_MQTT"))
    assert config.mqtt.password is not None and config.mqtt.password.get() == "mqtt-" + SECRET
    assert SECRET not in repr(config.mqtt)


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_TEST_PW", SECRET[:4] + "-env")
    data = base()
    data["carriers"][1] = dict(data["carriers"][1], password_env="SMSGW_TEST_PW")
    del data["carriers"][1]["password"]
    data["store"]["password"] = SECRET + "-db"
    config = parse_config(data)
    for shown in (repr(config), str(config), config.summary(), config.model_dump_json(), repr(config.model_dump())):
        assert SECRET not in shown
    assert str(config.carriers[0].password) == "**********"
    assert "**********" in repr(config.carriers[0].password)
    assert config.carriers[1].password.get() == SECRET[:4] + "-env"


def test_store_url_password_hidden_in_repr_and_dumps() -> None:
    config = parse_config(with_change("store.url", f"postgresql+psycopg://gw:{SECRET}@db.example.net/gw"))
    assert config.store.url.endswith(f":{SECRET}@db.example.net/gw")
    assert config.store.dialect == "postgresql"
    for shown in (repr(config), config.summary(), config.model_dump_json()):
        assert SECRET not in shown
    assert "postgresql+psycopg://gw:***@db.example.net/gw" in config.model_dump_json()


def test_secret_equality_and_hash() -> None:
    assert Secret("a") == Secret("a", source="env:X")
    assert Secret("a") != Secret("b")
    assert len({Secret("a"), Secret("a")}) == 1


def test_tls_files_resolved_and_checked(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    ok = parse_config(with_change("mqtt.tls", {"ca_file": str(tmp_path / "ca.pem")}))
    assert ok.mqtt.tls is not None and ok.mqtt.tls.ca_file == tmp_path / "ca.pem"
    problems = problems_of(with_change("carriers.0.tls", {"ca_file": str(tmp_path / "nope.pem")}))
    assert problems == [f"carriers[0].tls.ca_file: cannot read {tmp_path / 'nope.pem'}: No such file or directory"]


def test_config_is_frozen() -> None:
    config = parse_config(base())
    with pytest.raises(Exception):
        config.carriers[0].port = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------- reload support


def test_connection_key_and_reload_plan() -> None:
    old = parse_config(base())
    changed = base()
    changed["carriers"][0]["tps"] = 50  # not a connection setting
    changed["carriers"][1]["password"] = "new"  # a connection setting
    changed["carriers"].append({"name": "gamma", "host": "h", "port": 1, "system_id": "s", "password": "p"})
    new = parse_config(changed)
    assert connection_key(old.carriers[0]) == connection_key(new.carriers[0])
    assert connection_key(old.carriers[1]) != connection_key(new.carriers[1])
    assert SECRET not in repr(connection_key(old.carriers[0]))
    plan = reload_plan(old, new)
    assert (plan.added, plan.removed, plan.rebind, plan.updated) == (("gamma",), (), ("beta",), ("alpha",))


# ---------------------------------------------------------------------------- YAML loading


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path


def load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "store:\n  url: sqlite://\ncarriers: [a\nmqtt: {}\n")
    [problem] = load_problems(path)
    assert re.match(rf"{re.escape(str(path))}: line \d+, column \d+: ", problem)


def test_yaml_tab_indentation_error(tmp_path: Path) -> None:
    [problem] = load_problems(write(tmp_path, "store:\n\turl: x\n"))
    assert ": line 2, column 1: " in problem


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load_problems(path) == [f"{path}: the file is empty"]


def test_non_mapping_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert load_problems(path) == [f"{path}: the top level must be a mapping of keys, not list"]


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = write(tmp_path, "store:\n  url: sqlite://\n  url: sqlite://\n")
    assert load_problems(path) == [f'{path}: line 3: duplicate key "url"']


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert load_problems(path) == [f"{path}: cannot read: No such file or directory"]


# ---------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), (1.5, 1.5), ("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
     ("500ms", 0.5), ("1h30m", 5400.0), ("2w", 1209600.0), ("72h", 259200.0)],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5 minutes", "-5s", True, None, "1y"])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_parse_duration_units(amount: int, unit: str) -> None:
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{amount}{unit}") == amount * factor


def test_parse_rate() -> None:
    assert parse_rate("1/1m") == Rate(1, 60.0, "sliding")
    assert parse_rate("5/h") == Rate(5, 3600.0)
    assert parse_rate("4/30d", "calendar") == Rate(4, 2592000.0, "calendar")
    assert str(parse_rate("10/24h")) == "10/1d"


def test_time_window() -> None:
    day = TimeWindow(480, 1200)
    assert day.contains_minute(480) and not day.contains_minute(1200) and day.contains_minute(1199)
    night = parse_config(with_change("policies.marketing.window", "22:00-06:00")).policies.marketing.window
    assert night == TimeWindow(1320, 360) and night.spans_midnight
    assert night.contains_minute(1439) and night.contains_minute(0) and not night.contains_minute(360)
    assert str(night) == "22:00-06:00"


def test_marketing_prefix_windows() -> None:
    marketing = parse_config(
        with_change("policies.marketing", {"window": "08:00-20:00", "prefix_windows": {"+1": "09:00-21:00"}})
    ).policies.marketing
    assert marketing.window_for("+14155550100") == TimeWindow(540, 1260)
    assert marketing.window_for("+8613800138000") == TimeWindow(480, 1200)


def test_exempt_numbers_normalised() -> None:
    exempt = parse_config(with_change("policies.otp.exempt", [8613800000000, "8613800000001"])).policies.otp.exempt
    assert exempt == frozenset({"+8613800000000", "+8613800000001"})


def test_config_type_is_exported() -> None:
    assert isinstance(parse_config(base()), Config)


@pytest.mark.parametrize("form", ["password", "password_file"])
def test_carrier_password_longer_than_smpp_allows_is_refused_without_echo(
        tmp_path: Path, form: str) -> None:
    long_pw = "Nine-char"
    data = base()
    if form == "password_file":
        (tmp_path / "pw").write_text(long_pw + "\n")
        del data["carriers"][0]["password"]
        data["carriers"][0]["password_file"] = str(tmp_path / "pw")
    else:
        data["carriers"][0]["password"] = long_pw
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    (problem,) = exc.value.problems
    assert problem.startswith("carriers[0].password: must be at most 8 characters (SMPP 3.4)")
    assert long_pw not in problem
    assert ("file:" in problem) is (form == "password_file")
