"""Protocol-level stand-ins for instruments: TCP and serial peers that speak their command sets.

A responder parses what the driver really sends (terminated lines and IEEE
488.2 definite-length binary blocks), keeps the instrument's state, queues
SCPI errors for bad commands, and can be told to stay silent or answer late
so timeouts and resynchronisation are exercised for real.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ScpiModel:
    """Base model: identity, error queue, *CLS/*OPC?; subclasses add commands."""

    identity: str = "ACME,MODEL,0,1.0"
    errors: deque[str] = field(default_factory=deque)
    silent: set[str] = field(default_factory=set)  # queries that never get an answer
    late: dict[str, float] = field(default_factory=dict)  # query -> delay before answering
    log: list[str] = field(default_factory=list)

    def push_error(self, code: int, message: str) -> None:
        self.errors.append(f'{code:+d},"{message}"')

    def handle(self, header: str, block: bytes | None) -> str | None:
        self.log.append(header)
        command, _, argument = header.partition(" ")
        key = command.upper()
        if key == "*IDN?":
            return self.identity
        if key == "*CLS":
            self.errors.clear()
            return None
        if key == "*OPC?":
            return "1"
        if key in ("SYST:ERR?", "SYSTEM:ERROR?"):
            return self.errors.popleft() if self.errors else '+0,"No error"'
        try:
            return self.command(key, argument.strip(), block)
        except KeyError:
            self.push_error(-113, "Undefined header")
        except ValueError as exc:
            self.push_error(-222, f"Data out of range; {exc}")
        return None

    def command(self, key: str, argument: str, block: bytes | None) -> str | None:
        raise KeyError(key)


@dataclass
class Keysight33500BModel(ScpiModel):
    identity: str = "Keysight Technologies,33522B,MY00000001,4.03-1.19-2.00-58-00"
    byte_order: str = "NORM"
    volatile: dict[int, dict[str, np.ndarray]] = field(default_factory=lambda: {1: {}, 2: {}})
    channel: dict[int, dict[str, str]] = field(
        default_factory=lambda: {
            ch: {
                "FUNC": "SIN",
                "ARB": "",
                "SRAT": "4.0E+04",
                "OUTP": "0",
                "BURS:STAT": "0",
                "BURS:MODE": "TRIG",
                "BURS:NCYC": "1",
                "TRIG:SOUR": "IMM",
            }
            for ch in (1, 2)
        }
    )
    synced: int = 0

    def command(self, key: str, argument: str, block: bytes | None) -> str | None:
        if key == "FORM:BORD":
            if argument not in ("NORM", "SWAP"):
                raise ValueError(argument)
            self.byte_order = argument
            return None
        if key == "FUNC:ARB:SYNC":
            self.synced += 1
            return None
        ch, rest = 1, key
        for prefix, number in (("SOUR1:", 1), ("SOUR2:", 2)):
            if key.startswith(prefix):
                ch, rest = number, key.removeprefix(prefix)
        if rest.startswith("OUTP") or key.startswith("OUTP"):
            ch = int(key[4]) if key[4:5].isdigit() else 1
            if key.endswith("?"):
                return self.channel[ch]["OUTP"]
            self.channel[ch]["OUTP"] = "1" if argument in ("ON", "1") else "0"
            return None
        if key.startswith("TRIG") and key.endswith(":SOUR"):
            ch = int(key[4]) if key[4:5].isdigit() else 1
            if argument not in ("IMM", "EXT", "BUS", "TIM"):
                raise ValueError(argument)
            self.channel[ch]["TRIG:SOUR"] = argument
            return None
        state = self.channel[ch]
        if rest == "DATA:VOL:CLE":
            self.volatile[ch].clear()
            return None
        if rest == "DATA:ARB:DAC":
            name, _, _ = argument.partition(",")
            if block is None or len(block) % 2 or len(block) < 16:
                raise ValueError("need a block of at least 8 int16 points")
            if name in self.volatile[ch]:
                self.push_error(-221, "Settings conflict; waveform name in use")
                return None
            dtype = "<i2" if self.byte_order == "SWAP" else ">i2"
            self.volatile[ch][name] = np.frombuffer(block, dtype=dtype).copy()
            return None
        if rest == "FUNC:ARB":
            if argument not in self.volatile[ch]:
                self.push_error(-224, "Illegal parameter value; no such waveform")
                return None
            state["ARB"] = argument
            return None
        if rest == "FUNC":
            state["FUNC"] = argument
            return None
        if rest == "FUNC:ARB:SRAT":
            rate = float(argument)
            if not 1e-6 <= rate <= 250e6:
                raise ValueError(argument)
            state["SRAT"] = f"{rate:.6E}"
            return None
        if rest == "FUNC:ARB:SRAT?":
            return state["SRAT"]
        if rest in ("BURS:MODE", "BURS:NCYC", "BURS:STAT"):
            state[rest] = "1" if argument == "ON" else argument
            return None
        raise KeyError(key)


class TcpResponder:
    """A threaded TCP server that feeds every program message to a model."""

    def __init__(self, model: ScpiModel) -> None:
        self.model = model
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        self.connections = 0
        self._live: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def __enter__(self) -> TcpResponder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(timeout=2)

    def drop(self) -> None:
        """Close every open connection, as a power-cycled instrument would."""
        for conn in self._live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._live.clear()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._live.append(conn)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        buffer = bytearray()
        conn.settimeout(0.1)
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while (message := _take_message(buffer)) is not None:
                    header, block = message
                    if not header and block is None:
                        continue
                    reply = self.model.handle(header, block)
                    if reply is None or header.upper() in self.model.silent:
                        continue
                    delay = self.model.late.get(header.upper(), 0.0)
                    if delay:
                        time.sleep(delay)
                    try:
                        conn.sendall(reply.encode() + b"\n")
                    except OSError:
                        return


def _take_message(buffer: bytearray) -> tuple[str, bytes | None] | None:
    """Split one program message (a line, possibly with one binary block) off the buffer."""
    newline = buffer.find(b"\n")
    hash_at = buffer.find(b"#")
    if hash_at >= 0 and (newline < 0 or hash_at < newline):
        if len(buffer) < hash_at + 2:
            return None
        digits = int(chr(buffer[hash_at + 1]))
        start = hash_at + 2 + digits
        if len(buffer) < start:
            return None
        length = int(buffer[hash_at + 2 : start])
        end = start + length
        if len(buffer) < end + 1:
            return None
        header = buffer[:hash_at].decode().strip()
        block = bytes(buffer[start:end])
        terminator = buffer.find(b"\n", end)
        if terminator < 0:
            return None
        del buffer[: terminator + 1]
        return header, block
    if newline < 0:
        return None
    line = buffer[:newline].decode(errors="replace").strip()
    del buffer[: newline + 1]
    return line, None
