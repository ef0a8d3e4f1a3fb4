"""Wire a node's simulated twins to the simulated link of its ``[simulation]`` section.

Alice's encoder twin connects to the simulated fibre and sends every armed
frame; Bob's time-tagger twin listens on it and streams the tags of the
receiver physics, and his detector twin reports its rates and photocurrent.
Both ends find the fibre at the same address because their ``[simulation]``
sections are identical.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from qkdd.instruments.interfaces import Instrument
from qkdd.instruments.twins.detection import SimulatedDetector, SimulatedTimeTagger
from qkdd.instruments.twins.fibre import (
    FibreAddress,
    FibreError,
    FibreListener,
    FibreTransmitter,
    connect_fibre,
)
from qkdd.instruments.twins.source import SimulatedStateEncoder
from qkdd.physics.config import EveSpec, SimulationConfig
from qkdd.physics.link import LinkParameters, Receiver, role_rng


def fibre_address(sim: SimulationConfig, link_id: str) -> FibreAddress:
    """Where the link's simulated fibre is: ``fibre_path`` or a per-link default."""
    if sim.fibre == "tcp":
        port = sim.fibre_path or "0"
        return FibreAddress.parse(port if port.startswith("tcp:") else f"tcp:127.0.0.1:{port}")
    if sim.fibre_path:
        path = sim.fibre_path.removeprefix("unix:")
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        path = os.path.join(runtime, f"qkdd-fibre-{link_id}.sock")
    return FibreAddress.parse(f"unix:{path}")


@dataclass
class SimulatedLinkEnd:
    """One role's end of the simulated link; :meth:`close` releases the fibre."""

    role: str
    transmitter: FibreTransmitter | None = None
    listener: FibreListener | None = None
    receiver: Receiver | None = None

    def set_eavesdropper(self, eve: EveSpec | str) -> None:
        """Switch the eavesdropper at run time (the light is in Bob's receiver model)."""
        if self.receiver is None:
            raise ValueError("the eavesdropper acts on Bob's receiver: switch it at Bob's end")
        self.receiver.set_eavesdropper(eve)

    async def close(self) -> None:
        if self.transmitter is not None:
            await self.transmitter.close()
        if self.listener is not None:
            await self.listener.close()


async def attach_simulated_link(
    role: str,
    instruments: Iterable[Instrument],
    sim: SimulationConfig,
    link: LinkParameters,
    *,
    link_id: str,
    connect_timeout_s: float = 10.0,
) -> SimulatedLinkEnd:
    """Attach the role's twins to the simulated fibre (Bob listens, Alice connects)."""
    address = fibre_address(sim, link_id)
    twins = list(instruments)
    if role == "alice":
        encoders = [t for t in twins if isinstance(t, SimulatedStateEncoder)]
        if not encoders:
            raise FibreError("a simulated link needs Alice's simulated state encoder")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout_s
        while True:  # Bob's receiver may still be starting
            try:
                tx = await connect_fibre(address)
                break
            except FibreError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        encoders[0].attach_fibre(tx, pace=sim.pace)
        return SimulatedLinkEnd("alice", transmitter=tx)
    if role != "bob":
        raise ValueError(f"unknown role {role!r}")
    taggers = [t for t in twins if isinstance(t, SimulatedTimeTagger)]
    if not taggers:
        raise FibreError("a simulated link needs Bob's simulated time tagger")
    receiver = Receiver(sim, link, role_rng(sim.seed, "bob"))
    listener = FibreListener(address)
    await listener.start()
    taggers[0].attach(receiver, listener)
    for twin in twins:
        if isinstance(twin, SimulatedDetector):
            twin.attach_receiver(receiver)
    return SimulatedLinkEnd("bob", listener=listener, receiver=receiver)
