"""Bootstrap of the authentication streams from a pre-shared secret.

``qkdd init-secret`` (:func:`generate_secret`, :func:`write_secret_file`) makes a
fresh secret with an id and writes one copy per end into each end's state
directory (0600). At start the daemon calls :func:`load_auth_state`: on first
start it imports its copy into the state store and deletes the file; later it
uses the stored streams. A node with no state and no file refuses to start:
re-using an old secret would re-use authentication keys, so both ends need a
new one.

The secret's first half seeds the Alice→Bob stream, the second half Bob→Alice.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from qkdd.auth.errors import SecretFileError, StateLostError
from qkdd.logging import get_logger
from qkdd.store.db import StateStore, ensure_private_dir, private_umask, utc_now
from qkdd.store.streams import UNIT_BYTES, AuthSecretInfo, Direction, StreamStore

SECRET_FILE_NAME: Final = "auth-secret.json"
FORMAT: Final = "qkdd-auth-secret/1"
DEFAULT_UNITS_PER_DIRECTION: Final = 2048
"""256 kbit per direction: the handshake, the first blocks and the reserve floor."""
ROLES: Final = ("alice", "bob")

_log = get_logger("auth.bootstrap")

STATE_LOST_MESSAGE: Final = (
    "no authentication state in {state_dir} and no secret file to import. If this node "
    "ran before, its state is lost; an old secret must never be reused (it would reuse "
    "authentication keys), so both ends need a new secret: run `qkdd init-secret` and "
    "install its two files, one in each end's state directory."
)


@dataclass
class SecretBundle:
    """A fresh bootstrap secret. ``material`` is never shown in the repr."""

    secret_id: str
    link: str
    created: str
    material: bytearray = field(repr=False)

    @property
    def units_per_direction(self) -> int:
        return len(self.material) // (2 * UNIT_BYTES)

    def wipe(self) -> None:
        self.material[:] = bytes(len(self.material))


def generate_secret(
    link: str,
    units_per_direction: int = DEFAULT_UNITS_PER_DIRECTION,
    *,
    random_source: Path | None = None,
) -> SecretBundle:
    """A secret of ``units_per_direction`` 128-bit units for each direction.

    From the OS CSPRNG by default (computationally random); ``random_source`` reads
    the bytes from a device or file instead (a QRNG character device).
    """
    if units_per_direction < 16:
        raise ValueError("a secret needs at least 16 units per direction")
    size = 2 * units_per_direction * UNIT_BYTES
    if random_source is None:
        material = bytearray(secrets.token_bytes(size))
    else:
        material = bytearray(size)
        with open(random_source, "rb", buffering=0) as src:
            got = src.readinto(material)
        if got != size:
            raise SecretFileError(f"{random_source} gave {got} of {size} random bytes")
    return SecretBundle(str(uuid.uuid4()), link, utc_now(), material)


def secret_file_path(state_dir: Path) -> Path:
    return Path(state_dir) / SECRET_FILE_NAME


def write_secret_file(state_dir: Path, bundle: SecretBundle, role: str) -> Path:
    """Write ``role``'s copy (0600) into ``state_dir`` (created 0700); never overwrites."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    directory = ensure_private_dir(Path(state_dir))
    path = secret_file_path(directory)
    document = {
        "format": FORMAT,
        "secret_id": bundle.secret_id,
        "link": bundle.link,
        "role": role,
        "created": bundle.created,
        "units_per_direction": bundle.units_per_direction,
        "material": base64.b64encode(bundle.material).decode("ascii"),
    }
    data = json.dumps(document, indent=1).encode("ascii")
    with private_umask():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SecretFileError(
                f"{path} already exists: install or delete it before making a new secret"
            ) from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(directory)
    return path


@dataclass
class _SecretFile:
    secret_id: str
    link: str
    role: str
    created: str
    material: bytearray = field(repr=False)


def _read_secret_file(path: Path) -> _SecretFile:
    try:
        document = json.loads(path.read_bytes())
        if document.get("format") != FORMAT:
            raise SecretFileError(f"{path} is not a {FORMAT} file")
        material = bytearray(base64.b64decode(document["material"], validate=True))
        units = int(document["units_per_direction"])
        parsed = _SecretFile(
            str(uuid.UUID(document["secret_id"])),
            str(document["link"]),
            str(document["role"]),
            str(document["created"]),
            material,
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        # Never echo the document: it holds the secret.
        raise SecretFileError(f"{path} is malformed ({type(exc).__name__})") from None
    if len(material) != 2 * units * UNIT_BYTES or parsed.role not in ROLES:
        raise SecretFileError(f"{path} is malformed (size or role)")
    return parsed


def _shred(path: Path) -> None:
    """Overwrite then unlink (best effort: journaling filesystems and SSDs may keep
    copies; the README says to keep state directories out of backups)."""
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        with open(path, "r+b", buffering=0) as fh:
            fh.write(bytes(size))
            os.fsync(fh.fileno())
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_auth_state(
    store: StateStore,
    *,
    role: str,
    link: str,
    secret_file: Path | None = None,
) -> AuthSecretInfo:
    """What the daemon calls at start, before any handshake.

    * state present, no file: use it;
    * no state, file present: import the file (one durable transaction), then shred it;
    * state present and a file with the same secret id: the import finished but the
      delete did not (crash); shred the file;
    * state present and a file with another id: refuse (:class:`SecretFileError`) —
      replacing a live secret is an operator decision (wipe the state directory first);
    * neither: :class:`StateLostError` with the message "both ends need a new secret".

    Returns the secret's identity (its id is the epoch checked in the handshake).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    path = secret_file if secret_file is not None else secret_file_path(store.state_dir)
    streams = StreamStore(store)
    info = streams.secret()
    has_file = path.exists()
    if info is not None:
        if info.role != role or info.link != link:
            raise SecretFileError(
                f"the state in {store.state_dir} belongs to {info.role} of link {info.link!r}, "
                f"not {role} of {link!r}"
            )
        if has_file:
            parsed = _read_secret_file(path)
            parsed.material[:] = bytes(len(parsed.material))
            if parsed.secret_id != info.secret_id:
                raise SecretFileError(
                    f"{path} holds secret {parsed.secret_id} but the state already uses "
                    f"secret {info.secret_id}; to replace a live secret, stop both ends, "
                    "empty both state directories and install a new pair from "
                    "`qkdd init-secret`"
                )
            _shred(path)
            _log.info("leftover secret file removed", secret_id=info.secret_id)
        return info
    if not has_file:
        raise StateLostError(STATE_LOST_MESSAGE.format(state_dir=store.state_dir))
    parsed = _read_secret_file(path)
    try:
        if parsed.role != role:
            raise SecretFileError(f"{path} is {parsed.role}'s copy, this node is {role}")
        if parsed.link != link:
            raise SecretFileError(f"{path} is for link {parsed.link!r}, this node runs {link!r}")
        half = len(parsed.material) // 2
        view = memoryview(parsed.material)
        streams.install_secret(
            secret_id=parsed.secret_id,
            role=role,
            link=link,
            created=parsed.created,
            material={
                Direction.ALICE_TO_BOB: view[:half],
                Direction.BOB_TO_ALICE: view[half:],
            },
        )
        view.release()
    finally:
        parsed.material[:] = bytes(len(parsed.material))
    _shred(path)
    info = streams.secret()
    assert info is not None
    _log.info("authentication secret imported", secret_id=info.secret_id, role=role)
    return info
