"""qkdd: a daemon that runs decoy-state BB84 quantum key distribution nodes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qkdd")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"

PROTOCOL_VERSION = 1
"""Version of the peer protocol; both ends must agree on it in the handshake."""

__all__ = ["PROTOCOL_VERSION", "__version__"]
