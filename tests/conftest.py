"""Shared fixtures: instrument configs for the shipped pyvisa-sim models; test Mosquitto brokers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from qkdd.instruments.config import InstrumentConfig
from tests.mqtt_broker import BrokerOptions, MosquittoBroker, find_mosquitto


def instrument_config(**fields: Any) -> InstrumentConfig:
    """An InstrumentConfig from keyword fields (``kind`` for the TOML key ``class``)."""
    return InstrumentConfig.model_validate(fields)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that configures logging onto a captured stream must not leak it to the next."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    """The Mosquitto binary; missing is a skip locally and a failure in CI."""
    return require_mosquitto(find_mosquitto(), os.environ)


def require_mosquitto(binary: str | None, environ: Mapping[str, str]) -> str:
    if binary is None:
        if environ.get("CI", "").lower() == "true":
            pytest.fail("mosquitto is required in CI (apt-get install mosquitto mosquitto-clients)")
        pytest.skip("mosquitto is not installed")
    return binary


BrokerFactory = Callable[..., MosquittoBroker]


@pytest.fixture
def broker_factory(mosquitto_bin: str, tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start test brokers: ``broker_factory(users=..., acl=..., tls=...)``; all are
    killed (process group) on teardown."""
    brokers: list[MosquittoBroker] = []

    def make(**options: object) -> MosquittoBroker:
        broker = MosquittoBroker(
            mosquitto_bin,
            tmp_path / f"broker{len(brokers)}",
            BrokerOptions(**options),  # type: ignore[arg-type]
        )
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def mqtt_broker(broker_factory: BrokerFactory) -> MosquittoBroker:
    """A plain (anonymous, loopback) Mosquitto with persistence on."""
    return broker_factory()
