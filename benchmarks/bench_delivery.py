"""Key delivery throughput through a real Mosquitto: keys per second from a node's outbox
to one consumer that stores each key durably and acknowledges it.

Run: ``python benchmarks/bench_delivery.py [--keys 3000] [--json]`` (about a minute; it
starts its own Mosquitto on a free loopback port, needs the ``mosquitto`` binary).

Two processes, as in a lab: this one runs the node's :class:`MqttPublisher` over a
state store holding ``--keys`` committed 256-bit keys; a child process runs the
:class:`KeyConsumer`. Timed from handing the block to the publisher until every key is
delivered (queued → delivered in the node's store, i.e. acknowledged and erased).

Baseline, measured in the same run on the same broker: a bare aiomqtt round trip per
message (QoS 1 publish of a payload of the same size, a subscriber in a child process
answering each with a QoS 1 acknowledgement, as many in flight as the publisher
allows) with no sealing, no store and no fsync. The ratio says what the key machinery
(sealing, durable stores at both ends, erasure) costs on top of the transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import multiprocessing.synchronize
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qkdd.logging import configure_logging
from qkdd.mqtt.client import IN_FLIGHT
from qkdd.mqtt.consumer import KeyConsumer, ReceivedKey
from qkdd.mqtt.publisher import MqttPublisher
from tests.mqtt_broker import (
    BrokerOptions,
    MosquittoBroker,
    commit_test_block,
    consumer_config,
    find_mosquitto,
    mqtt_config,
    open_node_store,
)

LINK, SLOT = "link1", "kms"
# Children are spawned, not forked: the parent runs an event loop when it starts them.
_MP = mp.get_context("spawn")
# As qkdd's own clients (qkdd.mqtt.client.make_client): no Nagle delay per round trip.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class _Broker:
    """Host and port of the broker, picklable for the child process."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.pki = None


def _consumer_child(
    host: str, port: int, state_dir: str, secret: bytes, ready: multiprocessing.synchronize.Event
) -> None:
    configure_logging("warning", json=True, stream=sys.stderr)

    async def sink(key: ReceivedKey) -> None:  # the application reads the key: a no-op here
        del key

    async def main() -> None:
        config = consumer_config(
            _Broker(host, port),  # type: ignore[arg-type]
            Path(state_dir),
            node="alice",
            link=LINK,
            slot=SLOT,
            secret=secret,
        )
        consumer = KeyConsumer(config, sink)
        task = asyncio.create_task(consumer.run())
        await consumer.connected.wait()
        ready.set()
        await task

    asyncio.run(main())


def _echo_child(host: str, port: int, ready: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        async with aiomqtt.Client(
            host, port, identifier="bench-echo", socket_options=NODELAY
        ) as client:
            await client.subscribe("bench/keys", qos=1)
            ready.set()
            messages = aiter(client.messages)
            while True:
                # As the consumer: take what has arrived, acknowledge IN_FLIGHT at a time.
                batch = [await anext(messages)]
                while len(client.messages) and len(batch) < 256:
                    batch.append(await anext(messages))
                for start in range(0, len(batch), IN_FLIGHT):
                    await asyncio.gather(
                        *(
                            client.publish("bench/ack", bytes(m.payload)[:48], qos=1)
                            for m in batch[start : start + IN_FLIGHT]
                        )
                    )

    asyncio.run(main())


async def _deliver(broker: MosquittoBroker, tmp: Path, keys: int) -> tuple[float, int]:
    """Seconds to deliver ``keys`` keys, and the size of one key message."""
    secret = os.urandom(32)
    store = open_node_store(tmp / "node", {SLOT: secret})
    ready = _MP.Event()
    child = _MP.Process(
        target=_consumer_child,
        args=(broker.host, broker.port, str(tmp / "consumer"), secret, ready),
        daemon=True,
    )
    child.start()
    publisher = MqttPublisher(
        mqtt_config(broker, client_id="bench-node"),
        store,
        node="alice",
        link=LINK,
        role="alice",
        slots=[SLOT],
        simulated=True,
    )
    run = asyncio.create_task(publisher.run())
    try:
        await publisher.connected.wait()
        await asyncio.to_thread(ready.wait, 60)
        metas = commit_test_block(store, LINK, [SLOT], 0, keys)
        began = time.perf_counter()
        publisher.on_keys_committed(metas[0].block_id, metas)
        size = len(publisher.outbox.queued()[0].payload)  # sealed at once, before any I/O
        # The publisher has no event for "n acknowledged": poll its counter.
        while publisher.acks_accepted < keys:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return time.perf_counter() - began, size
    finally:
        await publisher.stop()
        await asyncio.wait_for(run, 20)
        child.terminate()
        child.join(10)
        store.close()


async def _baseline(broker: MosquittoBroker, messages: int, size: int) -> float:
    ready = _MP.Event()
    child = _MP.Process(target=_echo_child, args=(broker.host, broker.port, ready), daemon=True)
    child.start()
    try:
        async with aiomqtt.Client(
            broker.host, broker.port, identifier="bench-pub", socket_options=NODELAY
        ) as client:
            await client.subscribe("bench/ack", qos=1)
            await asyncio.to_thread(ready.wait, 60)
            acked = 0
            done = asyncio.Event()

            async def count() -> None:
                nonlocal acked
                async for _ in client.messages:
                    acked += 1
                    if acked == messages:
                        done.set()

            counter = asyncio.create_task(count())
            payload = os.urandom(size)
            began = time.perf_counter()
            for start in range(0, messages, IN_FLIGHT):
                n = min(IN_FLIGHT, messages - start)
                await asyncio.gather(
                    *(client.publish("bench/keys", payload, qos=1) for _ in range(n))
                )
            await done.wait()
            took = time.perf_counter() - began
            counter.cancel()
            return took
    finally:
        child.terminate()
        child.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    binary = find_mosquitto()
    if binary is None:
        sys.exit("bench_delivery: the mosquitto binary is needed (apt-get install mosquitto)")
    configure_logging("warning", json=True, stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoBroker(binary, Path(tmp) / "broker", BrokerOptions())
        broker.start()
        try:
            took, size = asyncio.run(_deliver(broker, Path(tmp), args.keys))
            base = asyncio.run(_baseline(broker, args.keys, size))
        finally:
            broker.stop()
    rate, base_rate = args.keys / took, args.keys / base
    result = {
        "keys": args.keys,
        "message_bytes": size,
        "keys_per_s": round(rate, 1),
        "keys_per_min": round(60 * rate),
        "baseline_messages_per_s": round(base_rate, 1),
        "ratio_to_baseline": round(rate / base_rate, 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"delivered {args.keys} sealed 256-bit keys in {took:.2f} s")
    print(f"  keys/s          {rate:10.1f}   ({60 * rate:,.0f} keys/min)")
    print(f"  baseline: bare QoS 1 round trips of {size} bytes/s {base_rate:10.1f}")
    print(f"  delivery / baseline {rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
