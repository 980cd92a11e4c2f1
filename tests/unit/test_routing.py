"""gateway.routing.table (longest prefix, failover, no route) and gateway.routing.errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.routing.errors import (
    DEFAULT_KIND,
    STATUS_RULES,
    ErrorPolicy,
    Kind,
    LocalFailure,
    Signal,
    classify,
    classify_local,
    parse_overrides,
    parse_status_code,
    signal_for,
)
from gateway.routing.table import Health, RouteTable, carriers_for, route_for

UP = Health(binds_up=1, window_free=10)
DOWN = Health(binds_up=0)

TABLE = RouteTable.from_config(
    [
        ("+86", ["alpha", "beta"]),
        ("+86138", ["gamma", "alpha"]),
        ("+1", ["delta"]),
        ("", ["beta"]),
    ]
)
ALL_UP = {name: UP for name in ("alpha", "beta", "gamma", "delta")}


def test_longest_prefix_wins() -> None:
    assert carriers_for("+8613800138000", TABLE, ALL_UP) == ["gamma", "alpha"]
    assert carriers_for("+8613900139000", TABLE, ALL_UP) == ["alpha", "beta"]
    assert carriers_for("+12025550100", TABLE, ALL_UP) == ["delta"]


def test_default_route() -> None:
    assert carriers_for("+447700900000", TABLE, ALL_UP) == ["beta"]


def test_plus_is_optional_on_both_sides() -> None:
    table = RouteTable.from_config([("86", ["alpha"])])
    assert carriers_for("+8613800138000", table, ALL_UP) == ["alpha"]
    assert carriers_for("8613800138000", TABLE, ALL_UP) == ["gamma", "alpha"]


def test_failover_skips_carriers_with_no_bind_up() -> None:
    health = {**ALL_UP, "gamma": DOWN}
    assert carriers_for("+8613800138000", TABLE, health) == ["alpha"]


def test_unknown_health_counts_as_down() -> None:
    assert carriers_for("+8613800138000", TABLE, {"alpha": UP}) == ["alpha"]


def test_everything_down_is_empty_but_still_routed() -> None:
    health = {name: DOWN for name in ALL_UP}
    assert carriers_for("+8613800138000", TABLE, health) == []
    assert route_for("+8613800138000", TABLE) == ("gamma", "alpha")


def test_no_fallback_to_a_shorter_prefix_when_the_route_is_down() -> None:
    health = {**ALL_UP, "gamma": DOWN, "alpha": DOWN}
    assert carriers_for("+8613800138000", TABLE, health) == []


def test_exclude_tried_carriers() -> None:
    assert carriers_for("+8613800138000", TABLE, ALL_UP, exclude={"gamma"}) == ["alpha"]


def test_no_route_without_default() -> None:
    table = RouteTable.from_config([("+86", ["alpha"])])
    assert carriers_for("+447700900000", table, ALL_UP) == []
    assert route_for("+447700900000", table) is None


def test_prefix_longer_than_number_does_not_match() -> None:
    table = RouteTable.from_config([("+8613800138000999", ["alpha"]), ("", ["beta"])])
    assert route_for("+8613800138000", table) == ("beta",)


def test_window_free_does_not_reorder() -> None:
    health = {**ALL_UP, "gamma": Health(binds_up=2, window_free=0)}
    assert carriers_for("+8613800138000", TABLE, health) == ["gamma", "alpha"]


def test_from_config_objects() -> None:
    @dataclass
    class Route:
        prefix: str
        carriers: list[str]

    table = RouteTable.from_config([Route("+86", ["alpha"]), Route("", ["beta"])])
    assert route_for("+8613800138000", table) == ("alpha",)
    assert table.carriers == frozenset({"alpha", "beta"})


@pytest.mark.parametrize(
    "routes",
    [
        [("+86", ["a"]), ("86", ["b"])],  # same prefix twice
        [("+8a", ["a"])],
        [("+86", [])],
        [("+86", ["a", "a"])],
    ],
)
def test_invalid_config(routes: list[tuple[str, list[str]]]) -> None:
    with pytest.raises(ValueError):
        RouteTable.from_config(routes)


def _reference(number: str, routes: dict[str, list[str]]) -> list[str] | None:
    """The obvious linear scan: the longest configured prefix of the number."""
    digits = number.removeprefix("+")
    best = None
    for prefix in routes:
        if digits.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return None if best is None else routes[best]


_carriers = st.sampled_from(["a", "b", "c", "d", "e"])


@given(
    routes=st.dictionaries(
        st.text(alphabet="0123456789", max_size=6),
        st.lists(_carriers, min_size=1, max_size=4, unique=True),
        max_size=30,
    ),
    number=st.text(alphabet="0123456789", min_size=1, max_size=15),
    up=st.sets(_carriers),
    plus=st.booleans(),
)
def test_matches_linear_scan(
    routes: dict[str, list[str]], number: str, up: set[str], plus: bool
) -> None:
    table = RouteTable.from_config([("+" + p if plus else p, cs) for p, cs in routes.items()])
    health = {c: (UP if c in up else DOWN) for c in "abcde"}
    expected = _reference(number, routes)
    got = route_for("+" + number, table)
    assert got == (None if expected is None else tuple(expected))
    assert carriers_for("+" + number, table, health) == [
        c for c in (expected or []) if c in up
    ]


# -- gateway.routing.errors: the command_status classification -------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "signal"),
    [
        (0x00, Kind.OK, Signal.NONE),
        (0x58, Kind.TRANSIENT, Signal.THROTTLE),  # ESME_RTHROTTLED
        (0x14, Kind.TRANSIENT, Signal.PAUSE),  # ESME_RMSGQFUL
        (0x08, Kind.TRANSIENT, Signal.NONE),  # ESME_RSYSERR
        (0x04, Kind.TRANSIENT, Signal.REBIND),  # ESME_RINVBNDSTS
        (0x0B, Kind.PERMANENT, Signal.NONE),  # ESME_RINVDSTADR
        (0x0A, Kind.PERMANENT, Signal.NONE),  # ESME_RINVSRCADR
        (0x01, Kind.PERMANENT, Signal.NONE),  # ESME_RINVMSGLEN
        (0x65, Kind.PERMANENT, Signal.NONE),  # ESME_RX_P_APPN
        (0x45, Kind.REROUTE, Signal.NONE),  # ESME_RSUBMITFAIL
        (0x66, Kind.REROUTE, Signal.NONE),  # ESME_RX_R_APPN
        (0x43, Kind.REROUTE, Signal.NONE),  # ESME_RINVESMCLASS
        (0x64, Kind.TRANSIENT, Signal.NONE),  # ESME_RX_T_APPN
        (0x400, DEFAULT_KIND, Signal.NONE),  # vendor-specific
        (0xFFFFFFFF, DEFAULT_KIND, Signal.NONE),
    ],
)
def test_classification_table(status: int, kind: Kind, signal: Signal) -> None:
    assert classify(status) is kind
    assert signal_for(status) is signal


def test_every_smpp34_code_is_decided() -> None:
    import smpplib.consts  # type: ignore[import-untyped]

    codes = {v for k, v in vars(smpplib.consts).items() if k.startswith("SMPP_ESME_")}
    assert codes <= set(STATUS_RULES)
    names = {k.removeprefix("SMPP_"): v for k, v in vars(smpplib.consts).items()
             if k.startswith("SMPP_ESME_")}
    for name, code in names.items():
        assert STATUS_RULES[code].name == name


def test_local_failures_are_transient() -> None:
    assert classify_local(LocalFailure.RESPONSE_TIMEOUT) is Kind.TRANSIENT
    assert classify_local(LocalFailure.CONNECTION_LOST) is Kind.TRANSIENT


def test_overrides() -> None:
    policy = parse_overrides(
        {"ESME_RINVSRCADR": "reroute", "0x400": "Throttle", 1025: "pause", "0x58": "permanent",
         "0x04": "reroute"}
    )
    assert policy.classify(0x0A) is Kind.REROUTE
    assert (policy.classify(0x400), policy.signal(0x400)) == (Kind.TRANSIENT, Signal.THROTTLE)
    assert (policy.classify(1025), policy.signal(1025)) == (Kind.TRANSIENT, Signal.PAUSE)
    # 0x58 read as a refusal no longer cuts the rate; 0x04 keeps its session fact
    assert (policy.classify(0x58), policy.signal(0x58)) == (Kind.PERMANENT, Signal.NONE)
    assert (policy.classify(0x04), policy.signal(0x04)) == (Kind.REROUTE, Signal.REBIND)
    # untouched codes keep the table
    assert policy.classify(0x0B) is Kind.PERMANENT
    assert ErrorPolicy().classify(0x14) is Kind.TRANSIENT


def test_transient_override_keeps_table_signal() -> None:
    policy = parse_overrides({"0x58": "transient"})
    assert policy.signal(0x58) is Signal.THROTTLE


def test_ok_is_never_overridden() -> None:
    assert classify(0, {0: Kind.PERMANENT}) is Kind.OK
    with pytest.raises(ValueError):
        parse_overrides({"ESME_ROK": "permanent"})


@pytest.mark.parametrize(
    "raw",
    [
        {"0x58": "later"},
        {"ESME_NOPE": "transient"},
        {"-1": "transient"},
        {"0x1FFFFFFFF": "reroute"},
    ],
)
def test_bad_overrides(raw: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        parse_overrides(raw)


@pytest.mark.parametrize(
    ("key", "code"),
    [(11, 11), ("11", 11), ("0x0B", 11), ("0x0000000B", 11), ("esme_rinvdstadr", 11)],
)
def test_parse_status_code(key: int | str, code: int) -> None:
    assert parse_status_code(key) == code


@given(st.integers(0, 2**32 - 1))
def test_classify_is_total(status: int) -> None:
    assert classify(status) in Kind
    assert signal_for(status) in Signal
    assert (classify(status) is Kind.OK) == (status == 0)


def test_integer_weights_keep_the_configured_ratio() -> None:
    from gateway.queue.lanes import integer_weights
    assert integer_weights(4, 1) == (4, 1)
    assert integer_weights(1.5, 1) == (3, 2)
    assert integer_weights(0.25, 1) == (1, 4)
    assert integer_weights(1 / 3, 1) == (1, 3)
    assert integer_weights(0.123456, 1) == (12, 100)  # no small exact form: rounded at scale 100
