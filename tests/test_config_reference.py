"""The generated config reference is current, and the JSON Schema describes the real loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qkdd.config_reference import json_schema, markdown_reference

ROOT = Path(__file__).resolve().parent.parent


def test_checked_in_reference_is_current() -> None:
    checked_in = (ROOT / "docs" / "config-reference.md").read_text()
    assert checked_in == markdown_reference(), (
        "docs/config-reference.md is stale: run "
        "`qkdd config-schema --markdown > docs/config-reference.md`"
    )


def test_reference_names_every_section_and_key() -> None:
    text = markdown_reference()
    for heading in ("[node]", "[instruments.NAME]", "[protocol]", "[mqtt]"):
        assert f"### `{heading}`" in text
    assert "| `allow_simulated` | boolean | `false` |" in text


def test_cli_prints_a_json_schema_that_forbids_unknown_keys() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qkdd", "config-schema"], capture_output=True, text=True, check=True
    )
    schema = json.loads(proc.stdout)
    assert schema == json.loads(json_schema())
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"node"}
