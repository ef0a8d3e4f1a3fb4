"""Shared fixtures: instrument configs for the shipped pyvisa-sim models."""

from __future__ import annotations

from typing import Any

from qkdd.instruments.config import InstrumentConfig


def instrument_config(**fields: Any) -> InstrumentConfig:
    """An InstrumentConfig from keyword fields (``kind`` for the TOML key ``class``)."""
    return InstrumentConfig.model_validate(fields)
