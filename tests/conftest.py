"""Shared fixtures: instrument configs for the shipped pyvisa-sim models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from qkdd.instruments.config import InstrumentConfig


def instrument_config(**fields: Any) -> InstrumentConfig:
    """An InstrumentConfig from keyword fields (``kind`` for the TOML key ``class``)."""
    return InstrumentConfig.model_validate(fields)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that configures logging onto a captured stream must not leak it to the next."""
    yield
    structlog.reset_defaults()
