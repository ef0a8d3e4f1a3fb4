"""What every command that reads a node config shares."""

from __future__ import annotations

import sys
from pathlib import Path

from qkdd.config import ConfigError, NodeConfig, load_config


def load_checked_config(path: Path | str) -> NodeConfig:
    """Load a config and check every instrument's driver exists and fits.

    Raises :class:`ConfigError` for any problem, so callers print one message
    and exit with code 2.
    """
    # Imported here: the registry loads the simulated twins (numba), which commands
    # that only read a config (``qkdd status``) need not pay for.
    from qkdd.instruments.registry import DriverError, check_driver

    config = load_config(path)
    problems = []
    for name, instrument in config.instruments.items():
        try:
            check_driver(name, instrument)
        except DriverError as exc:
            text = str(exc)
            problems.append(
                text if text.startswith("instruments.") else f"instruments.{name}.driver: {text}"
            )
    if problems:
        raise ConfigError(path, problems)
    return config


def print_config_error(error: ConfigError) -> None:
    print(f"qkdd: configuration error: {error}", file=sys.stderr)
