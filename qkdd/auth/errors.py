"""Exceptions of the authentication layer. None of them carries key material."""

from __future__ import annotations


class AuthError(RuntimeError):
    """Base class of authentication errors."""


class AuthFailedError(AuthError):
    """A tag did not verify: the key it used is burnt and the stream is closed
    (raise the ``auth_failure`` alarm, discard the block, resynchronise)."""


class StaleIndexError(AuthError):
    """A handshake announced an index below the stored high-water mark (a replay, or a
    peer that must first skip forward) or too far beyond it; nothing was burnt.

    ``mark`` is this end's high-water mark: the peer channel sends it back in clear so
    the peer can :meth:`~qkdd.auth.session.AuthSession.skip_tx_to` it and retry.
    """

    def __init__(self, message: str, mark: int) -> None:
        super().__init__(message)
        self.mark = mark


class StreamClosedError(AuthError):
    """The stream is closed after a bad tag, or not yet synchronised after a (re)start:
    only a handshake reopens it."""


class ResyncExhaustedError(AuthFailedError):
    """Too many authentication failures without a committed block in between: the
    stream stays closed until an operator installs a new secret at both ends."""


class InsufficientAuthKeyError(AuthError):
    """The stream has run out of material (replenishment did not keep up)."""


class StateLostError(AuthError):
    """No authentication state and no secret file to import."""


class SecretFileError(AuthError):
    """A secret file is malformed, for another role or link, or conflicts with state."""
