"""The test broker fixture itself: plain, password, TLS with client certificates."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import BrokerFactory


def _roundtrip(args_sub: list[str], args_pub: list[str], topic: str = "t/x") -> str:
    sub = subprocess.Popen(
        ["mosquitto_sub", *args_sub, "-t", topic, "-C", "1", "-W", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(50):
            pub = subprocess.run(
                ["mosquitto_pub", *args_pub, "-t", topic, "-m", "hello", "-q", "1"],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert pub.returncode == 0, pub.stderr
            try:
                out, _ = sub.communicate(timeout=0.2)
                return out.strip()
            except subprocess.TimeoutExpired:
                continue
        raise AssertionError("no message")
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()


def test_plain_password_and_tls_brokers_carry_messages(broker_factory: BrokerFactory) -> None:
    plain = broker_factory()
    assert _roundtrip(plain.client_args(), plain.client_args()) == "hello"

    users = broker_factory(users={"alice": "pw-a"})
    args = users.client_args(username="alice", password="pw-a")
    assert _roundtrip(args, args) == "hello"
    bad = subprocess.run(
        [
            "mosquitto_pub",
            *users.client_args(username="alice", password="wrong"),
            "-t",
            "x",
            "-m",
            "1",
        ],
        check=False,
        capture_output=True,
        timeout=10,
    )
    assert bad.returncode != 0

    tls = broker_factory(tls=True)
    assert tls.pki is not None
    client = tls.pki.issue("monitor")
    args = tls.client_args(cert=client)
    assert _roundtrip(args, args) == "hello"
    no_cert = subprocess.run(
        ["mosquitto_pub", *tls.client_args(), "-t", "x", "-m", "1"],
        check=False,
        capture_output=True,
        timeout=10,
    )
    assert no_cert.returncode != 0


def test_password_file_written_without_mosquitto_passwd(
    broker_factory: BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture's own PBKDF2-SHA512 ($7$) password file is one Mosquitto accepts."""
    import tests.mqtt_broker as helpers

    real_which = shutil.which
    monkeypatch.setattr(
        helpers.shutil,
        "which",
        lambda name: None if name == "mosquitto_passwd" else real_which(name),
    )
    broker = broker_factory(users={"bob": "pw-b"})
    assert "$7$101$" in (broker.directory / "passwd").read_text()
    args = broker.client_args(username="bob", password="pw-b")
    assert _roundtrip(args, args) == "hello"
    bad = subprocess.run(
        [
            "mosquitto_pub",
            *broker.client_args(username="bob", password="nope"),
            "-t",
            "x",
            "-m",
            "1",
        ],
        check=False,
        capture_output=True,
        timeout=10,
    )
    assert bad.returncode != 0


def test_a_missing_broker_fails_in_ci_and_skips_elsewhere() -> None:
    from tests.conftest import require_mosquitto

    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        require_mosquitto(None, {"CI": "true"})
    with pytest.raises(pytest.skip.Exception):
        require_mosquitto(None, {})
    assert require_mosquitto("/usr/sbin/mosquitto", {"CI": "true"}) == "/usr/sbin/mosquitto"
