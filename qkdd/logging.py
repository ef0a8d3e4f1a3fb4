"""Structured logging for the daemon and its tools.

Console rendering on a terminal, JSON lines otherwise (journald, files, CI).
A redaction processor runs before any renderer so key material, passwords and
secrets cannot reach a log line, whatever a caller passes in.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"

# Field names whose values are secret. Matched as whole words inside the
# snake_case name, so ``key_id`` and ``key_bits`` stay visible while ``key``,
# ``final_key``, ``secret`` and ``mqtt_password`` are hidden.
_SECRET_WORDS = frozenset(
    {
        "key",
        "keys",
        "secret",
        "secrets",
        "password",
        "passwd",
        "token",
        "pad",
        "pads",
        "seed",
        "material",
        "private",
        "plaintext",
        "ciphertext",
        "sifted",
        "raw",
        "corrected",
    }
)
_VISIBLE_SUFFIXES = (
    "_id",
    "_ids",
    "_bits",
    "_count",
    "_len",
    "_length",
    "_index",
    "_file",
    "_path",
    "_rate",
    "_size",
    "_state",
    "_name",
)


def is_secret_field(name: str) -> bool:
    """True if a log field called ``name`` must never show its value."""
    lowered = name.lower()
    if lowered.endswith(_VISIBLE_SUFFIXES):
        return False
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", lowered))


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes {REDACTED}>"
    if depth > 4:
        return value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_field(k) else _scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        # Arrays in this code base are bit strings and detection records:
        # show their shape, never their content.
        return f"<array shape={tuple(shape)} dtype={value.dtype}>"
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: hide secret fields, raw bytes and array contents."""
    for name in list(event_dict):
        if name == "event":
            continue
        if is_secret_field(name):
            event_dict[name] = REDACTED
        else:
            event_dict[name] = _scrub(event_dict[name])
    return event_dict


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog (and stdlib logging of libraries) for this process.

    ``json=None`` picks the console renderer on a TTY and JSON lines elsewhere.
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries' stdlib logging (aiomqtt, pyvisa, …) renders as the same lines, so a
    # JSON log stays parseable line by line (`journalctl -o cat | jq .`).
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(_drop_pending_calls_hint)
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)


def _drop_pending_calls_hint(record: logging.LogRecord) -> bool:
    """aiomqtt warns whenever more than ten publishes await their acknowledgement; the
    publisher keeps that many in flight on purpose (key batches beside telemetry), so
    the hint would repeat for every batch and say nothing."""
    return not (record.name == "mqtt" and record.getMessage().endswith("pending publish calls."))


def get_logger(name: str, **bound: Any) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to a component name (and any fixed context)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name, **bound)
    return logger
