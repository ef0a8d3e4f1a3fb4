"""Information-theoretic authentication of the classical channel (DESIGN §4).

Wegman–Carter with Poly1305 (``cryptography``): a hash key r per direction per
block, a fresh one-time 128-bit pad per tag, one durable key stream per
direction, receiver-derived indices, bootstrap from a pre-shared secret and
replenishment from committed blocks. Depends on ``qkdd.store`` only.
"""

from qkdd.auth.bootstrap import (
    SECRET_FILE_NAME,
    SecretBundle,
    generate_secret,
    load_auth_state,
    secret_file_path,
    write_secret_file,
)
from qkdd.auth.economics import (
    DEFAULT_RESERVE_FLOOR_UNITS,
    UNIT_BITS,
    BlockAuthCost,
    EpsAuthLedger,
    ReplenishmentPlan,
    ReplenishmentRule,
    estimate_block_cost,
    forgery_bound,
)
from qkdd.auth.errors import (
    AuthError,
    AuthFailedError,
    InsufficientAuthKeyError,
    ResyncExhaustedError,
    SecretFileError,
    StaleIndexError,
    StateLostError,
    StreamClosedError,
)
from qkdd.auth.session import (
    TAG_BYTES,
    AuthFailureEvent,
    AuthSession,
    BlockAuth,
    HandshakeOffer,
    Role,
    StreamMarks,
    Transcript,
)
from qkdd.auth.stream import KeyStream

__all__ = [
    "DEFAULT_RESERVE_FLOOR_UNITS",
    "SECRET_FILE_NAME",
    "TAG_BYTES",
    "UNIT_BITS",
    "AuthError",
    "AuthFailedError",
    "AuthFailureEvent",
    "AuthSession",
    "BlockAuth",
    "BlockAuthCost",
    "EpsAuthLedger",
    "HandshakeOffer",
    "InsufficientAuthKeyError",
    "KeyStream",
    "ReplenishmentPlan",
    "ReplenishmentRule",
    "ResyncExhaustedError",
    "Role",
    "SecretBundle",
    "SecretFileError",
    "StaleIndexError",
    "StateLostError",
    "StreamClosedError",
    "StreamMarks",
    "Transcript",
    "estimate_block_cost",
    "forgery_bound",
    "generate_secret",
    "load_auth_state",
    "secret_file_path",
    "write_secret_file",
]
