"""The peer channel's wire format: length-prefixed, versioned, typed messages with array payloads.

A frame on the TCP stream is ``u32 length ‖ body``. The body is

    magic "QKDP" ‖ u16 version ‖ u64 sequence ‖ u32 header length ‖ header ‖ arrays

where the header is the JSON of a pydantic message model (its ``kind`` picks
the model) plus a description (dtype, shape) of each numpy array field, and
the arrays follow as raw little-endian bytes, so a detection report of 10^6
slots costs 8 MB of wire, not a JSON parse. Authentication tags are added by
the channel over the encoded body; this module only encodes and decodes, and
rejects anything malformed with :class:`WireError` (it never trusts a length).
"""

from __future__ import annotations

import json
import struct
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

MAGIC = b"QKDP"
WIRE_VERSION = 1
MAX_FRAME_BYTES = 1 << 28  # 256 MiB: a frame of 10^7 slots with room to spare
MAX_HEADER_BYTES = 1 << 20

_LENGTH = struct.Struct(">I")
_PREFIX = struct.Struct(">4sHQI")
# Only plain numeric dtypes cross the wire (never object or structured ones).
_ALLOWED_DTYPES = frozenset(
    np.dtype(t).str for t in ("u1", "i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8")
)


class WireError(ValueError):
    """A frame that is not a valid message: dropped, logged and alarmed by the channel."""


class PeerMessage(BaseModel):
    """Base of every peer message. Subclasses set ``kind`` and list their array fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    kind: ClassVar[str]
    arrays: ClassVar[tuple[str, ...]] = ()
    registry: ClassVar[dict[str, type[PeerMessage]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str):
            if kind in PeerMessage.registry:
                raise TypeError(f"peer message kind {kind!r} defined twice")
            PeerMessage.registry[kind] = cls

    def __repr__(self) -> str:
        # Messages carry key-dependent data (parities, syndromes, bits): show the shape only.
        parts = [f"{name}=<{getattr(self, name).shape}>" for name in self.arrays]
        return f"<{type(self).__name__} {' '.join(parts)}>"


def encode_body(message: PeerMessage, sequence: int) -> bytes:
    """The body (without the length prefix) of ``message`` sent as number ``sequence``."""
    header: dict[str, Any] = {
        "kind": message.kind,
        "fields": message.model_dump(mode="json", exclude=set(message.arrays)),
        "arrays": [],
    }
    blobs = []
    for name in message.arrays:
        array: npt.NDArray[Any] = np.ascontiguousarray(getattr(message, name))
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if array.dtype.str not in _ALLOWED_DTYPES:
            raise WireError(f"{message.kind}.{name}: dtype {array.dtype} cannot be sent")
        header["arrays"].append(
            {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}
        )
        blobs.append(array.tobytes())
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_PREFIX.pack(MAGIC, WIRE_VERSION, sequence, len(head)), head, *blobs])


def encode_frame(message: PeerMessage, sequence: int) -> bytes:
    body = encode_body(message, sequence)
    if len(body) > MAX_FRAME_BYTES:
        raise WireError(f"{message.kind}: {len(body)} bytes exceed the frame limit")
    return _LENGTH.pack(len(body)) + body


def decode_body(body: bytes) -> tuple[int, PeerMessage]:
    """Parse a body into (sequence, message); raises :class:`WireError` on anything malformed."""
    if len(body) < _PREFIX.size:
        raise WireError("frame shorter than its fixed header")
    magic, version, sequence, head_len = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise WireError("not a qkdd peer frame (bad magic)")
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version}, this node speaks {WIRE_VERSION}")
    if head_len > MAX_HEADER_BYTES or _PREFIX.size + head_len > len(body):
        raise WireError("header length out of bounds")
    try:
        header = json.loads(body[_PREFIX.size : _PREFIX.size + head_len])
        kind = header["kind"]
        fields = dict(header["fields"])
        descriptors = list(header["arrays"])
    except (ValueError, KeyError, TypeError):
        raise WireError("header is not a valid message description") from None
    model = PeerMessage.registry.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise WireError(f"unknown message kind {kind!r}")
    if [d.get("name") if isinstance(d, dict) else None for d in descriptors] != list(model.arrays):
        raise WireError(f"{kind}: array fields do not match the message definition")
    offset = _PREFIX.size + head_len
    for descriptor in descriptors:
        dtype_text, shape = descriptor.get("dtype"), descriptor.get("shape")
        if dtype_text not in _ALLOWED_DTYPES or not isinstance(shape, list):
            raise WireError(f"{kind}.{descriptor['name']}: bad array description")
        if not all(isinstance(n, int) and 0 <= n < MAX_FRAME_BYTES for n in shape):
            raise WireError(f"{kind}.{descriptor['name']}: bad array shape")
        dtype = np.dtype(dtype_text)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + nbytes > len(body):
            raise WireError(f"{kind}.{descriptor['name']}: array runs past the frame")
        fields[descriptor["name"]] = (
            np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
            .reshape(shape)
            .copy()
        )
        offset += nbytes
    if offset != len(body):
        raise WireError(f"{kind}: {len(body) - offset} trailing bytes")
    try:
        return sequence, model.model_validate(fields)
    except ValidationError as exc:
        raise WireError(f"{kind}: {exc.error_count()} invalid fields") from None


class FrameReader:
    """Reassembles frames from stream chunks of any size."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add received bytes; return every complete body. Raises WireError on a bad length."""
        self._buffer += chunk
        bodies = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self.max_frame_bytes:
                raise WireError(f"announced frame of {length} bytes exceeds the limit")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            bodies.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return bodies
