"""The example configs (config/alice.toml, config/bob.toml) moved into a temporary directory:
same parameters, but their own state directories, peer port and fibre socket."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

REPO = Path(__file__).resolve().parent.parent


def example_configs(tmp: Path, port: int, **overrides: Any) -> dict[str, Path]:
    out = {}
    for role in ("alice", "bob"):
        data = tomllib.loads((REPO / "config" / f"{role}.toml").read_text())
        data["node"]["state_dir"] = str(tmp / role)
        data["peer"]["port"] = port
        data["simulation"]["fibre_path"] = str(tmp / "fibre.sock")
        data["logging"] = {"level": "info", "json": True}
        # No broker here unless a test brings one ([mqtt] turns key delivery on, which
        # needs a consumer secret per slot).
        data.pop("mqtt", None)
        _merge(data, overrides)
        path = tmp / f"{role}.toml"
        path.write_text(tomli_w.dumps(data))
        out[role] = path
    return out


def _merge(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Nested update: ``{"simulation": {"channel": {"distance_km": 25}}}`` changes one key."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value
