"""``qkdd init-secret`` and the daemon's start-up import: files, permissions, the
first-start import and deletion, refusal after lost state, and a long run of two
ends bootstrapped by the command across restarts."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from qkdd.auth import (
    SECRET_FILE_NAME,
    AuthSession,
    SecretFileError,
    StateLostError,
    load_auth_state,
)
from qkdd.cli import main
from qkdd.store import DB_NAME, Direction, StateStore, StreamStore
from tests.authpair import LINK, assert_no_unit_used_twice, handshake


def _init(tmp_path: Path, *extra: str) -> tuple[int, Path, Path]:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    code = main(
        ["init-secret", "--link", LINK, "--alice-dir", str(alice), "--bob-dir", str(bob), *extra]
    )
    return code, alice, bob


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_secret_writes_one_private_copy_per_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, alice, bob = _init(tmp_path, "--units", "64")
    assert code == 0
    out = capsys.readouterr().out
    docs = []
    for directory in (alice, bob):
        path = directory / SECRET_FILE_NAME
        assert _mode(directory) == 0o700
        assert _mode(path) == 0o600
        docs.append(json.loads(path.read_text()))
    assert docs[0]["role"] == "alice" and docs[1]["role"] == "bob"
    assert docs[0]["secret_id"] == docs[1]["secret_id"]
    assert docs[0]["material"] == docs[1]["material"]
    assert len(base64.b64decode(docs[0]["material"])) == 2 * 64 * 16
    assert f"secret_id {docs[0]['secret_id']}" in out
    assert docs[0]["material"][:16] not in out


def test_init_secret_refuses_to_overwrite_and_same_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path)[0] == 0
    before = (tmp_path / "alice" / SECRET_FILE_NAME).read_bytes()
    assert _init(tmp_path)[0] == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "alice" / SECRET_FILE_NAME).read_bytes() == before
    same = str(tmp_path / "x")
    code = main(["init-secret", "--link", LINK, "--alice-dir", same, "--bob-dir", same])
    assert code == 2


def test_init_secret_from_a_random_source_file(tmp_path: Path) -> None:
    source = tmp_path / "qrng"
    source.write_bytes(bytes(range(256)) * 16)
    code, alice, _ = _init(tmp_path, "--units", "16", "--random-source", str(source))
    assert code == 0
    doc = json.loads((alice / SECRET_FILE_NAME).read_text())
    assert base64.b64decode(doc["material"]) == (bytes(range(256)) * 16)[: 2 * 16 * 16]
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    code = main(
        [
            "init-secret",
            "--link",
            LINK,
            "--alice-dir",
            str(tmp_path / "a2"),
            "--bob-dir",
            str(tmp_path / "b2"),
            "--random-source",
            str(short),
        ]
    )
    assert code == 1


def test_console_entry_point_runs_init_secret(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qkdd",
            "init-secret",
            "--link",
            LINK,
            "--alice-dir",
            str(tmp_path / "a"),
            "--bob-dir",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("secret_id ")


def test_first_start_imports_and_deletes_the_file_later_starts_use_the_state(
    tmp_path: Path,
) -> None:
    _, alice, _ = _init(tmp_path)
    secret_id = json.loads((alice / SECRET_FILE_NAME).read_text())["secret_id"]
    with StateStore.open(alice) as store:
        info = load_auth_state(store, role="alice", link=LINK)
        assert info.secret_id == secret_id
        assert not (alice / SECRET_FILE_NAME).exists()
        assert _mode(alice / DB_NAME) == 0o600
        streams = StreamStore(store)
        assert streams.stream(Direction.ALICE_TO_BOB).appended == 2048
        assert streams.stream(Direction.BOB_TO_ALICE).appended == 2048
    with StateStore.open(alice) as store:
        assert load_auth_state(store, role="alice", link=LINK).secret_id == secret_id
        assert AuthSession(store).secret_id == secret_id


def test_lost_state_refuses_to_start_and_says_both_ends_need_a_new_secret(
    tmp_path: Path,
) -> None:
    _, alice, _ = _init(tmp_path)
    with StateStore.open(alice) as store:
        load_auth_state(store, role="alice", link=LINK)
    shutil.rmtree(alice)
    with StateStore.open(alice) as store, pytest.raises(StateLostError) as excinfo:
        load_auth_state(store, role="alice", link=LINK)
    assert "both ends need a new secret" in str(excinfo.value)
    assert "qkdd init-secret" in str(excinfo.value)
    with StateStore.open(alice) as store, pytest.raises(StateLostError):
        AuthSession(store)


def test_leftover_file_of_the_imported_secret_is_removed(tmp_path: Path) -> None:
    _, alice, _ = _init(tmp_path)
    copy = (alice / SECRET_FILE_NAME).read_bytes()
    with StateStore.open(alice) as store:
        load_auth_state(store, role="alice", link=LINK)
        # A crash between the import and the delete leaves the file behind.
        fd = os.open(alice / SECRET_FILE_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, copy)
        os.close(fd)
        load_auth_state(store, role="alice", link=LINK)
        assert not (alice / SECRET_FILE_NAME).exists()


def test_a_different_secret_over_live_state_is_refused(tmp_path: Path) -> None:
    _, alice, _ = _init(tmp_path / "one")
    _, other_alice, _ = _init(tmp_path / "two")
    with StateStore.open(alice) as store:
        load_auth_state(store, role="alice", link=LINK)
        shutil.copy(other_alice / SECRET_FILE_NAME, alice / SECRET_FILE_NAME)
        with pytest.raises(SecretFileError, match="already uses"):
            load_auth_state(store, role="alice", link=LINK)


def test_wrong_role_wrong_link_and_malformed_files_are_refused_without_leaking(
    tmp_path: Path,
) -> None:
    _, alice, bob = _init(tmp_path)
    with StateStore.open(alice) as store:
        with pytest.raises(SecretFileError, match="alice's copy"):
            load_auth_state(store, role="bob", link=LINK)
        with pytest.raises(SecretFileError, match="link"):
            load_auth_state(store, role="alice", link="another-link")
    doc = json.loads((bob / SECRET_FILE_NAME).read_text())
    doc["material"] = doc["material"][:-8] + "!!!!!!!!"
    (bob / SECRET_FILE_NAME).write_text(json.dumps(doc))
    with StateStore.open(bob) as store, pytest.raises(SecretFileError) as excinfo:
        load_auth_state(store, role="bob", link=LINK)
    assert doc["material"][:24] not in str(excinfo.value)


def test_two_ends_from_init_secret_exchange_thousands_of_messages_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's example: 1000 tagged messages each way, restart both ends, 1000
    more, and no stream unit is ever used twice."""
    uses: dict[tuple[str, Direction], list[tuple[int, int]]] = defaultdict(list)
    original = StreamStore.read_units

    def recording(self: StreamStore, direction: Direction, start: int, count: int) -> bytearray:
        uses[(str(self.store.state_dir), direction)].append((start, count))
        return original(self, direction, start, count)

    monkeypatch.setattr(StreamStore, "read_units", recording)
    code, alice_dir, bob_dir = _init(tmp_path, "--units", "3000")
    assert code == 0
    tags_seen: set[bytes] = set()
    for run in range(2):
        alice_store, bob_store = StateStore.open(alice_dir), StateStore.open(bob_dir)
        load_auth_state(alice_store, role="alice", link=LINK)
        load_auth_state(bob_store, role="bob", link=LINK)
        alice, bob = AuthSession(alice_store), AuthSession(bob_store)
        handshake(alice, bob)
        for i in range(1000):
            to_bob = b"run %d message %d from alice" % (run, i)
            to_alice = b"run %d message %d from bob" % (run, i)
            tag_ab, tag_ba = alice.tag(to_bob), bob.tag(to_alice)
            bob.verify(to_bob, tag_ab)
            alice.verify(to_alice, tag_ba)
            tags_seen.update((tag_ab, tag_ba))
        alice.close()
        bob.close()
        alice_store.close()
        bob_store.close()
    assert len(tags_seen) == 4000
    assert assert_no_unit_used_twice(uses) >= 4 * 2000


def test_secret_material_never_reaches_reprs_logs_or_errors(tmp_path: Path) -> None:
    import io

    from qkdd.auth import AuthFailedError, generate_secret
    from qkdd.logging import configure_logging
    from tests.authpair import End, open_end

    bundle = generate_secret(LINK, 16)
    encoded = base64.b64encode(bundle.material).decode()
    assert bundle.material.hex()[:32] not in repr(bundle)
    assert encoded[:24] not in repr(bundle)
    _, alice_dir, bob_dir = _init(tmp_path, "--units", "256")
    material = base64.b64decode(json.loads((alice_dir / SECRET_FILE_NAME).read_text())["material"])
    log = io.StringIO()
    configure_logging("debug", json=True, stream=log)
    try:
        ends: list[End] = [open_end(alice_dir, "alice"), open_end(bob_dir, "bob")]
        handshake(ends[0].session, ends[1].session)
        with pytest.raises(AuthFailedError) as excinfo:
            ends[1].session.verify(b"forged", b"\0" * 16)
        texts = [log.getvalue(), str(excinfo.value), repr(ends[0].session), repr(ends[1].store)]
        for end in ends:
            end.close()
    finally:
        configure_logging("warning")
    assert "authentication failed" in texts[0]
    for text in texts:
        for i in range(0, len(material) - 8, 8):
            chunk = material[i : i + 8]
            assert chunk.hex() not in text
            assert base64.b64encode(chunk).decode()[:8] not in text
