"""The redaction processor keeps secrets out of every rendered log line."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import structlog
from hypothesis import given
from hypothesis import strategies as st

from qkdd.logging import REDACTED, configure_logging, get_logger, is_secret_field


def _log_json(**fields: object) -> dict[str, object]:
    out = io.StringIO()
    configure_logging("debug", json=True, stream=out)
    get_logger("test").info("event", **fields)
    structlog.reset_defaults()
    line: dict[str, object] = json.loads(out.getvalue().strip().splitlines()[-1])
    return line


def test_secret_fields_are_redacted_and_metadata_stays() -> None:
    line = _log_json(
        key=b"\x01\x02", final_key="0101", mqtt_password="hunter2", key_id="k-1", key_bits=256
    )
    assert line["key"] == REDACTED
    assert line["final_key"] == REDACTED
    assert line["mqtt_password"] == REDACTED
    assert line["key_id"] == "k-1"
    assert line["key_bits"] == 256
    assert line["component"] == "test"


def test_bytes_and_arrays_never_render_content() -> None:
    bits = np.array([1, 0, 1, 1], dtype=np.uint8)
    line = _log_json(blob=b"\xde\xad\xbe\xef", frame=bits, nested={"secret": "x", "n": 3})
    assert "dead" not in json.dumps(line)
    assert line["blob"] == f"<4 bytes {REDACTED}>"
    assert line["frame"] == "<array shape=(4,) dtype=uint8>"
    assert line["nested"] == {"secret": REDACTED, "n": 3}


@given(st.binary(min_size=8, max_size=64))
def test_no_secret_bytes_leak_in_any_field(secret: bytes) -> None:
    line = _log_json(anything=secret, more=[secret], deeper={"x": {"y": secret}})
    rendered = json.dumps(line)
    assert secret.hex() not in rendered
    assert repr(secret) not in rendered


def test_field_classification() -> None:
    assert is_secret_field("auth_key")
    assert is_secret_field("pa_seed")
    assert not is_secret_field("key_id")
    assert not is_secret_field("sifted_bits")
    assert not is_secret_field("qber")


def test_library_log_lines_are_json_and_without_the_pending_calls_hint() -> None:
    """aiomqtt, pyvisa and friends log through stdlib logging: their lines must parse
    like ours (an operator pipes the journal through jq)."""
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    try:
        logging.getLogger("mqtt").warning("There are 11 pending publish calls.")
        logging.getLogger("mqtt").warning("broker said %s", "no")
        logging.getLogger("pyvisa").error("read failed", exc_info=TimeoutError("VI_ERROR_TMO"))
    finally:
        structlog.reset_defaults()
        logging.basicConfig(force=True)
    lines = [json.loads(text) for text in out.getvalue().splitlines()]
    assert [(r["logger"], r["event"], r["level"]) for r in lines] == [
        ("mqtt", "broker said no", "warning"),
        ("pyvisa", "read failed", "error"),
    ]
    assert "VI_ERROR_TMO" in str(lines[1]["exception"])
