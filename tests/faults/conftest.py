"""Fixtures of the fault suite: the end-to-end fixtures of tests/integration (broker, `setup`,
`sqlite_setup`, Probe, until, ...) re-exported, so each fault test drives the real daemon, a real
Mosquitto and real SMSC simulators exactly as the pipeline tests do.

Bounded by default so CI runs the whole suite in a few minutes; `SMSGW_SOAK=1` lengthens the
floods and repeat counts (see docs/reliability.md)."""

from __future__ import annotations

import os

from tests.integration.conftest import *  # noqa: F401,F403  (fixtures and helpers)
from tests.integration.conftest import broker, setup, sqlite_setup  # noqa: F401  (explicit fixtures)

SOAK = os.environ.get("SMSGW_SOAK") == "1"


def scaled(bounded: int, soak: int) -> int:
    """A count for the bounded CI run, or the soak's when SMSGW_SOAK=1."""
    return soak if SOAK else bounded
