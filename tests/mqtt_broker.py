"""A real Mosquitto for tests: free loopback port, a config written per test, its own
PKI (CA, server and client certificates made with ``cryptography``), password file
and ACL variants, persistence on so tests can read the broker's database.

Never the machine's broker on 1883: each broker here listens on a fresh port and
lives in its own process group, killed on teardown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qkdd.mqtt.config import MqttConfig
from qkdd.mqtt.consumer import ConsumerConfig, KeyConsumer, ReceivedKey
from qkdd.mqtt.publisher import MqttPublisher, consumer_secret_name
from qkdd.mqtt.seam import slot_for_index
from qkdd.store import KeyMeta, KeyStore, NewKey, SecretStore, StateStore

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """The broker binary, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- PKI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass
class TestPki:
    """A CA, a server certificate for 127.0.0.1/localhost and client certificates."""

    directory: Path
    ca: CertPair
    server: CertPair
    _ca_key: ec.EllipticCurvePrivateKey = field(repr=False)
    _ca_cert: x509.Certificate = field(repr=False)

    @classmethod
    def create(cls, directory: Path, *, server_names: tuple[str, ...] = ()) -> TestPki:
        directory.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qkdd test CA")])
        now = dt.datetime.now(dt.UTC)
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        ca = _write_pair(directory, "ca", ca_cert, ca_key)
        pki = cls(directory, ca, ca, ca_key, ca_cert)
        pki.server = pki.issue("localhost", server=True, names=server_names)
        return pki

    def issue(
        self, common_name: str, *, server: bool = False, names: tuple[str, ...] = ()
    ) -> CertPair:
        """A certificate signed by the CA (server: SAN 127.0.0.1 and localhost, or the
        DNS ``names`` given)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in names]
                    or [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        stem = "server" if server else f"client-{common_name}"
        return _write_pair(self.directory, stem, cert, key)


def _write_pair(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return CertPair(cert_path, key_path)


# -- password file --------------------------------------------------------------------


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """A Mosquitto password file: ``mosquitto_passwd`` when present, else the
    ``$7$`` (PBKDF2-SHA512) format Mosquitto 2 reads, written here."""
    tool = shutil.which("mosquitto_passwd")
    if tool:
        path.write_text("")
        for user, password in users.items():
            subprocess.run([tool, "-b", str(path), user, password], check=True, timeout=30)
        path.chmod(0o600)
        return
    lines = []
    for user, password in users.items():
        salt = os.urandom(12)
        iterations = 101
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
        lines.append(
            f"{user}:$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}"
        )
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


# -- the broker -----------------------------------------------------------------------


@dataclass
class BrokerOptions:
    """What a test broker offers; the fixture writes ``mosquitto.conf`` from it."""

    users: dict[str, str] | None = None  # password file; anonymous refused when given
    acl: str | None = None  # ACL file text
    tls: bool = False  # TLS listener requiring client certificates (identity = CN)
    tls_password: bool = False  # TLS without client certificates, with the password file
    server_names: tuple[str, ...] = ()  # the server certificate's DNS names (default: ours)
    persistence: bool = True
    extra: Iterable[str] = ()
    # A whole config instead (e.g. the production example), with {port}, {dir},
    # {data_dir}, {passwd}, {acl}, {ca}, {server_cert}, {server_key} filled in.
    raw_config: str | None = None


class MosquittoBroker:
    """One Mosquitto process on a free loopback port (restartable on the same port)."""

    def __init__(self, binary: str, directory: Path, options: BrokerOptions) -> None:
        self.binary = binary
        self.directory = directory
        self.options = options
        self.port = free_port()
        self.host = "127.0.0.1"
        self.pki: TestPki | None = None
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.data_dir = directory / "data"
        self.data_dir.mkdir(exist_ok=True)
        if options.tls or options.tls_password:
            self.pki = TestPki.create(directory / "pki", server_names=options.server_names)
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.config_path.write_text(self._config_text())

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mosquitto.db"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config_text(self) -> str:
        opts = self.options
        lines = [
            "# written by tests/mqtt_broker.py",
            "user root" if os.geteuid() == 0 else "",
            "per_listener_settings false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 0",
            "max_queued_bytes 67108864",
            "set_tcp_nodelay true",
        ]
        if opts.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.data_dir}/",
                "persistence_file mosquitto.db",
                "autosave_interval 1",
                "autosave_on_changes true",
            ]
        if opts.raw_config is not None:
            return self._raw_config_text(opts.raw_config)
        if opts.users is not None:
            password_file = self.directory / "passwd"
            write_password_file(password_file, opts.users)
            lines += [f"password_file {password_file}", "allow_anonymous false"]
        elif opts.tls:
            lines += ["allow_anonymous false"]
        else:
            lines += ["allow_anonymous true"]
        if opts.acl is not None:
            lines.append(f"acl_file {self._write_acl(opts.acl)}")
        lines.append(f"listener {self.port} 127.0.0.1")
        if self.pki is not None:
            lines += [
                f"cafile {self.pki.ca.cert}",
                f"certfile {self.pki.server.cert}",
                f"keyfile {self.pki.server.key}",
                "tls_version tlsv1.2",
            ]
            if opts.tls:
                lines += ["require_certificate true", "use_identity_as_username true"]
        lines += list(opts.extra)
        return "\n".join(line for line in lines if line) + "\n"

    def _write_acl(self, text: str) -> Path:
        acl_file = self.directory / "acl"
        acl_file.write_text(text)
        acl_file.chmod(0o600)
        return acl_file

    def _raw_config_text(self, template: str) -> str:
        passwd = self.directory / "passwd"
        write_password_file(passwd, self.options.users or {})
        acl = self._write_acl(self.options.acl or "")
        pki = self.pki
        values = {
            "port": str(self.port),
            "dir": str(self.directory),
            "data_dir": str(self.data_dir),
            "passwd": str(passwd),
            "acl": str(acl),
            "ca": str(pki.ca.cert) if pki else "",
            "server_cert": str(pki.server.cert) if pki else "",
            "server_key": str(pki.server.key) if pki else "",
        }
        head = "user root\n" if os.geteuid() == 0 else ""
        return head + template.format_map(values)

    # -- life cycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("broker already running")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited ({self.process.returncode}): {err}\n{self.log()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the broker's process group (a crash: nothing saved on the way out)."""
        self._signal_group(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its database), then SIGKILL if it lingers."""
        self._signal_group(signal.SIGTERM)

    def _signal_group(self, sig: signal.Signals) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def persisted_bytes(self) -> bytes:
        """The persisted database (empty if never saved)."""
        try:
            return self.db_path.read_bytes()
        except FileNotFoundError:
            return b""

    def client_args(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        cert: CertPair | None = None,
    ) -> list[str]:
        """Arguments for mosquitto_sub/mosquitto_pub reaching this broker."""
        args = ["-h", self.host, "-p", str(self.port)]
        if username is not None:
            args += ["-u", username]
        if password is not None:
            args += ["-P", password]
        if self.pki is not None:
            args += ["--cafile", str(self.pki.ca.cert)]
        if cert is not None:
            args += ["--cert", str(cert.cert), "--key", str(cert.key)]
        return args


# -- a node's store with keys, and configs pointing at a test broker --------------------


def mqtt_fields(broker: MosquittoBroker, **fields: object) -> dict[str, object]:
    """``[mqtt]`` settings for this broker (TLS CA filled in when it has a PKI)."""
    data: dict[str, object] = {"host": broker.host, "port": broker.port, **fields}
    if broker.pki is not None and "tls" not in data:
        data["tls"] = {"ca_file": str(broker.pki.ca.cert)}
    return data


def mqtt_config(broker: MosquittoBroker, **fields: object) -> MqttConfig:
    return MqttConfig.model_validate(mqtt_fields(broker, **fields))


def key_material(seed: bytes, key_id: str, bits: int) -> bytes:
    """Deterministic test key bits: both ends of a test link derive the same keys."""
    return hashlib.shake_256(seed + key_id.encode()).digest((bits + 7) // 8)


def open_node_store(state_dir: Path, secrets: dict[str, bytes]) -> StateStore:
    """A node's state store with one consumer secret per slot installed."""
    store = StateStore.open(state_dir)
    vault = SecretStore(store)
    for slot, secret in secrets.items():
        if vault.get(consumer_secret_name(slot)) is None:
            vault.put(consumer_secret_name(slot), "consumer", f"test-{slot}", secret)
    return store


def commit_test_block(
    store: StateStore,
    link: str,
    slots: list[str],
    logical_block: int,
    keys_per_block: int,
    *,
    seed: bytes = b"qkdd-test",
    bits: int = 256,
) -> list[KeyMeta]:
    """Commit one block of deterministic keys (key i → slot i mod slots), as the engine
    would: pending, then committed. Returns their metadata."""
    keystore = KeyStore(store)
    block_id = keystore.allocate_block(link)
    keys = []
    for i in range(keys_per_block):
        key_id = f"{link}-b{logical_block}-k{i}"
        keys.append(
            NewKey(
                key_id=key_id,
                link=link,
                block_id=block_id,
                index=i,
                bits=bits,
                material=bytearray(key_material(seed, key_id, bits)),
                qber=0.02,
                eps_sec=1e-10,
                eps_cor=1e-15,
                eps_auth=1e-20,
                simulated=True,
                consumer_slot=slot_for_index(i, slots),
            )
        )
    keystore.add_pending(block_id, keys)
    keystore.commit_block(block_id)
    return [m for m in keystore.list() if m.block_id == block_id]


def consumer_config(
    broker: MosquittoBroker,
    state_dir: Path,
    *,
    node: str,
    link: str,
    slot: str,
    secret: bytes,
    plaintext: bool = False,
    **mqtt_settings: object,
) -> ConsumerConfig:
    return ConsumerConfig.model_validate(
        {
            "consumer": {
                "name": slot,
                "node": node,
                "link": link,
                "secret_id": f"test-{slot}",
                "secret": secret.hex(),
                "state_dir": str(state_dir),
                "plaintext": plaintext,
            },
            "mqtt": mqtt_fields(broker, **mqtt_settings),
            "output": {"kind": "none"},
        }
    )


# -- async helpers for tests that run publishers and consumers ---------------------------


async def wait_until(condition: Callable[[], bool], limit_s: float = 15.0) -> None:
    """Poll ``condition`` until true (AssertionError after ``limit_s``)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class Collector:
    """Keys a consumer handed over, by id (with their bits)."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.handed: list[str] = []

    async def __call__(self, key: ReceivedKey) -> None:
        self.handed.append(key.key_id)
        self.keys[key.key_id] = bytes(key.material)


@contextlib.asynccontextmanager
async def running(*runners: MqttPublisher | KeyConsumer) -> AsyncIterator[None]:
    """Run publishers/consumers as tasks; stop them (cleanly) on exit."""
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in runners)), timeout=15)
        yield
    finally:
        for r in runners:
            await r.stop()
        for task in tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@contextlib.asynccontextmanager
async def sniffer(
    broker: MosquittoBroker, topic: str = "#"
) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Everything a subscriber on ``topic`` sees."""
    seen: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="sniffer") as client:
        await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                seen.append((message.topic.value, payload))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- a publisher in its own process (SIGKILL tests) ---------------------------------------


async def _child_publisher(spec: dict[str, object]) -> None:
    """Run a publisher that commits ``blocks`` blocks of deterministic keys, one every
    ``interval_s``, resuming after a crash where the committed keys end."""
    store = StateStore.open(Path(str(spec["state_dir"])))
    link, slots = str(spec["link"]), [str(s) for s in spec["slots"]]  # type: ignore[attr-defined]
    keystore = KeyStore(store)
    # A crash between vote and commit: this test engine aborts its unfinished blocks
    # (the real two-phase commit asks the coordinator).
    for (block_id,) in store.conn.execute(
        "SELECT block_id FROM blocks WHERE state IN ('open', 'pending')"
    ).fetchall():
        keystore.abort_block(int(block_id))
    per_block = int(spec["keys_per_block"])  # type: ignore[call-overload]
    done = len(keystore.list()) // per_block
    pub = MqttPublisher(
        MqttConfig.model_validate(spec["mqtt"]),
        store,
        node=str(spec["node"]),
        link=link,
        role=str(spec.get("role", "alice")),
        slots=slots,
        simulated=True,
    )
    task = asyncio.create_task(pub.run())
    await pub.connected.wait()
    pub.on_status("TRANSMIT", "test child")
    print("connected", flush=True)
    for block in range(done, int(spec["blocks"])):  # type: ignore[call-overload]
        metas = commit_test_block(store, link, slots, block, per_block, seed=b"qkdd-fault")
        pub.on_keys_committed(metas[0].block_id, metas)
        await asyncio.sleep(float(spec["interval_s"]))  # type: ignore[arg-type]
    print("committed", flush=True)
    await task


if __name__ == "__main__":
    import json
    import sys

    from qkdd.logging import configure_logging

    configure_logging("warning", json=True, stream=sys.stderr)  # stdout is the test's channel
    asyncio.run(_child_publisher(json.loads(sys.argv[1])))
