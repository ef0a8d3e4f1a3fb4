"""The link engine: one end of a link driven through the state machine of DESIGN §4.

Per block (Alice coordinates): block start → per frame {Alice sends the frame;
Bob's authenticated detection report; Alice's sift reply; the alarm test at
both ends on the same revealed test bits} → estimation → reconciliation →
verification → amplification → transcript tags → two-phase commit. Both ends
compute everything public from the same authenticated data, so they reach the
same decision (ℓ, alarms) independently; a local reason to stop a block is sent
as an ``Abort`` and both ends then drain to the peer's ``Abort`` so they meet
at the next block start in step.

Rules kept here: an abort-level alarm abandons the whole block, never single
frames; nothing of a block is staged before both transcript tags verified;
Alice records the decision durably before she announces it; Bob, once he voted
yes, never deletes on his own (he asks after a reconnect); keys are handed to
subscribers only after commit and the authentication refill.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from qkdd.auth import AuthSession, HandshakeOffer, ResyncExhaustedError
from qkdd.auth.economics import UNIT_BITS
from qkdd.cancellation import cancel_and_wait
from qkdd.frames import BASIS_K, BASIS_T, FramePattern, class_counts
from qkdd.link.alarms import AlarmEvent, AlarmKind, QberAlarmTest, decoy_ratio_check
from qkdd.link.calibration import TimingTracker, calibration_pattern, find_delay
from qkdd.link.channel import (
    ChannelAlarm,
    PeerAborted,
    PeerChannel,
    PeerLost,
    ProtocolViolation,
)
from qkdd.link.config import PeerConfig, ProtocolConfig
from qkdd.link.events import FrameReport, KeysCommitted, LinkEvents
from qkdd.link.keys import BlockKeys, KeyMetadata, split_block
from qkdd.link.messages import (
    PROTOCOL_VERSION,
    Abort,
    AmplificationSeed,
    BlockStart,
    Calibrated,
    CalibrationStart,
    Decision,
    DecisionQuery,
    DetectionReport,
    Hello,
    Prepare,
    Reconcile,
    SiftReply,
    TranscriptTag,
    VerificationResult,
    VerificationTag,
    Vote,
)
from qkdd.link.postprocess import PostProcessing, ReconMessage
from qkdd.link.quantum import FrameReceiver, FrameTransmitter
from qkdd.link.states import LinkState, LinkStateMachine
from qkdd.logging import get_logger
from qkdd.postprocessing.finite_key import (
    PhaseErrorAboveToleranceError,
    SecurityParameters,
    key_length,
)
from qkdd.postprocessing.sifting import BlockStatistics, Detections, accumulate, match_bases
from qkdd.store import BlockState, Direction, KeyState

S = LinkState
_VACUUM_CLASS = 2
_AB = Direction.ALICE_TO_BOB
_BA = Direction.BOB_TO_ALICE
_BLINDING_PHOTOCURRENT_A = 1e-4
_CALIBRATION_ATTEMPTS = 3
_CALIBRATION_SLOTS = 1 << 20
_MAX_DELAY_S = (
    2e-3  # longest fibre delay searched: 400 km  # dark current is ~1 µA; blinding light gives mA
)

T = TypeVar("T")

_log = get_logger("link.engine")


@dataclass(frozen=True)
class EngineSettings:
    """What one end runs with (from the node config)."""

    node_id: str
    link: str
    role: str  # "alice" | "bob"
    protocol: ProtocolConfig
    peer: PeerConfig
    simulated: bool
    simulation: dict[str, Any] | None = None

    @property
    def frame_slots(self) -> int:
        return max(1, round(self.protocol.slot_rate_hz * self.protocol.frame_duration_s))

    def frame_sizes(self) -> list[int]:
        """A block is N pulses: whole frames, the last one shorter if N says so."""
        n, f = self.protocol.block_pulses, self.frame_slots
        full, rest = divmod(n, f)
        return [f] * full + ([rest] if rest else [])


class InstrumentSilent(RuntimeError):
    """An instrument did not answer in time (fault ``device_fault``, retried)."""


class CalibrationFailed(RuntimeError):
    """No calibration frame showed a clear delay (a fault: retried with back-off)."""


class TimingLost(RuntimeError):
    """The detection window drifted beyond its bounds (a fault: the retry recalibrates)."""


class BlockAborted(Exception):
    """The block is abandoned; ``alarm`` is the abort-level alarm behind it, if any."""

    def __init__(self, reason: str, alarm: AlarmKind | None = None, *, local: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alarm = alarm
        self.local = local


class LinkEngine:
    """One end of a link: the peer channel, the block protocol, the key store flow."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        session: AuthSession,
        keys: BlockKeys,
        post: PostProcessing,
        random_bytes: Callable[[int], Any],
        transmitter: FrameTransmitter | None = None,
        receiver: FrameReceiver | None = None,
        events: LinkEvents | None = None,
        executor: Executor | None = None,
        on_fault: Callable[[Exception], Awaitable[None]] | None = None,
    ) -> None:
        if settings.role == "alice" and transmitter is None:
            raise ValueError("Alice needs a frame transmitter")
        if settings.role == "bob" and receiver is None:
            raise ValueError("Bob needs a frame receiver")
        self.settings = settings
        self.protocol = settings.protocol
        self.session = session
        self.keys = keys
        self.post = post
        self._random_bytes = random_bytes
        self.transmitter = transmitter
        self.receiver = receiver
        self.events = events or LinkEvents()
        self.executor = executor
        self._on_fault = on_fault
        self.alice = settings.role == "alice"
        self.machine = LinkStateMachine()
        self.machine.subscribe(self._log_transition)
        self.machine.subscribe(self.events.transition)
        self.alarm_test = QberAlarmTest(
            window_bits=self.protocol.alarm_window_bits,
            qber_ceiling=self.protocol.qber_ceiling,
            p_value=self.protocol.alarm_p_value,
        )
        self.active_alarms: set[AlarmKind] = set()
        self.timing = TimingTracker(1e12 / self.protocol.slot_rate_hz)
        self.channel = PeerChannel(
            settings.peer,
            session,
            hello=self._hello,
            check_hello=self._check_hello,
            on_alarm=self._channel_alarm,
        )
        self.block_id: int | None = None
        self.blocks_committed = 0
        self.blocks_aborted = 0
        self.keys_committed = 0
        self.key_bits_committed = 0
        self._stop = asyncio.Event()
        self._finish_block = False
        # Pausing (a command, or a full delivery outbox): no new block starts. Alice
        # coordinates, so her pause stops the link; Bob, who cannot stop her, votes no
        # while paused (keys never staged for delivery are not keys lost).
        self._pause_reasons: set[str] = set()
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._recalibrate = False

    # -- state, alarms ----------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self.machine.state

    def _to(self, target: LinkState, reason: str) -> None:
        if self.machine.state is not target:
            self.machine.to(target, reason)

    def _log_transition(self, t: Any) -> None:
        _log.info(
            "link state", source=str(t.source), target=str(t.target), reason=t.reason,
            link=self.settings.link, role=self.settings.role,
        )  # fmt: skip

    def _raise_alarm(self, kind: AlarmKind, values: dict[str, float | int] | None = None) -> None:
        event = AlarmEvent(kind, True, dict(values or {}))
        # Raised again while active (the cause persists): subscribers get the new values,
        # the log only the start.
        log = _log.debug if kind in self.active_alarms else _log.warning
        self.active_alarms.add(kind)
        log("alarm", kind=str(kind), alarm_level=str(kind.level), **event.values)
        self.events.alarm(event)

    def _clear_alarm(self, kind: AlarmKind, values: dict[str, float | int] | None = None) -> None:
        if kind in self.active_alarms:
            self.active_alarms.discard(kind)
            _log.info("alarm cleared", kind=str(kind))
            self.events.alarm(AlarmEvent(kind, False, dict(values or {})))

    def _warning(
        self, kind: AlarmKind, active: bool, values: dict[str, float | int] | None = None
    ) -> None:
        """A warning-level condition as a state: published when it starts and when it ends,
        not once per block while it lasts."""
        if active and kind not in self.active_alarms:
            self._raise_alarm(kind, values)
        elif not active:
            self._clear_alarm(kind, values)

    def _channel_alarm(self, alarm: ChannelAlarm) -> None:
        self._raise_alarm(alarm.kind)

    # -- handshake content --------------------------------------------------------------

    def _hello(self, offer: HandshakeOffer) -> Hello:
        return Hello(
            link=self.settings.link,
            role=self.settings.role,
            protocol_version=PROTOCOL_VERSION,
            secret_id=self.session.secret_id,
            consumers=list(self.settings.peer.consumer_slots),
            protocol=self.protocol.model_dump(mode="json"),
            simulation=self.settings.simulation,
            index=offer.index,
            marks=offer.marks.as_dict(),
            simulated=self.settings.simulated,
        )

    def _check_hello(self, peer: Hello) -> str | None:
        """A refusal reason, or None when the peer's parameters equal ours."""
        mine = self._hello_fields()
        theirs = {
            "link": peer.link,
            "protocol_version": peer.protocol_version,
            "secret_id": peer.secret_id,
            "consumers": peer.consumers,
            "protocol": peer.protocol,
            "simulation": peer.simulation,
        }
        if peer.role == self.settings.role or peer.role not in ("alice", "bob"):
            return f"peer role {peer.role!r} does not complement {self.settings.role!r}"
        for key, value in mine.items():
            if theirs[key] != value:
                if key == "protocol" and isinstance(value, dict):
                    diff = sorted(k for k in value if value.get(k) != peer.protocol.get(k))
                    return f"protocol parameters differ: {', '.join(diff) or 'keys'}"
                return f"{key} differs (this end {value!r}, peer {theirs[key]!r})"
        return None

    def _hello_fields(self) -> dict[str, Any]:
        return {
            "link": self.settings.link,
            "protocol_version": PROTOCOL_VERSION,
            "secret_id": self.session.secret_id,
            "consumers": list(self.settings.peer.consumer_slots),
            "protocol": self.protocol.model_dump(mode="json"),
            "simulation": self.settings.simulation,
        }

    # -- life ---------------------------------------------------------------------------

    def request_stop(self, *, finish_block: bool = False) -> None:
        """Stop after the current block (``finish_block``) or abandon it now."""
        self._finish_block = finish_block
        self._stop.set()

    @property
    def paused(self) -> bool:
        return not self._unpaused.is_set()

    def pause(self, reason: str) -> None:
        """Start no new block (the one in progress finishes) until every reason is resumed."""
        self._pause_reasons.add(reason)
        self._unpaused.clear()
        _log.info("key production paused", reasons=sorted(self._pause_reasons))

    def resume(self, reason: str) -> None:
        self._pause_reasons.discard(reason)
        if not self._pause_reasons and not self._unpaused.is_set():
            self._unpaused.set()
            _log.info("key production resumed", reason=reason)

    def request_recalibration(self) -> None:
        """Alice recalibrates between blocks (Bob follows her calibration frame)."""
        self._recalibrate = True

    async def _between_blocks(self) -> None:
        """Alice, before a block: wait while paused, recalibrate when asked to."""
        if self._unpaused.is_set() and not self._recalibrate:
            return
        why = "recalibration requested"
        if not self._unpaused.is_set():
            self._to(S.PAUSED, "paused: " + ", ".join(sorted(self._pause_reasons)))
            await self._unpaused.wait()
            why = "resumed"
        self._recalibrate = False
        self._to(S.CALIBRATING, why)
        await self._calibrate()

    async def _instrument(self, call: Awaitable[T]) -> T:
        """An instrument call, bounded: one that stops answering is a fault."""
        try:
            async with asyncio.timeout(self.settings.peer.receive_timeout_s):
                return await call
        except TimeoutError:
            raise InstrumentSilent(
                f"no answer from the instruments within {self.settings.peer.receive_timeout_s} s"
            ) from None

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU-bound work in the bounded executor, so the loop stays responsive."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    async def run(self) -> None:
        """Run until stopped; returns after a clean stop."""
        await self.channel.start()
        recovered = (
            self.keys.recover_as_coordinator() if self.alice else self.keys.recover_as_participant()
        )
        if recovered:
            _log.info("recovered blocks at start", blocks=recovered, role=self.settings.role)
        self._to(S.CONNECTING, "starting: connecting to the peer")
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            fault_delay = self.settings.peer.backoff_initial_s
            while not self._stop.is_set():
                work = asyncio.ensure_future(self._session_loop())
                done, _ = await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if work in done:
                    try:
                        work.result()
                        fault_delay = self.settings.peer.backoff_initial_s
                    except ResyncExhaustedError:
                        raise
                    except Exception as exc:
                        if self._stop.is_set():
                            break
                        await self._fault(exc, fault_delay)
                        fault_delay = min(2 * fault_delay, self.settings.peer.backoff_max_s)
                    continue
                if self._finish_block and self.state.running:
                    # Let the block run to its end (commit or abort), bounded.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(work), 30)
                await cancel_and_wait([work])
                failed = None if work.cancelled() else work.exception()
                if failed is not None:  # the stop is what matters now
                    _log.info("link loop ended while stopping", error=str(failed))
        finally:
            stopper.cancel()
            await self._abandon_current("node stopping")
            if self.machine.can(S.STOPPING):
                self._to(S.STOPPING, "stop requested")
            try:
                await asyncio.wait_for(self.channel.close(), 3)
            except Exception as exc:
                _log.warning("peer channel did not close cleanly", error=type(exc).__name__)
            if self.machine.can(S.STOPPED):
                self._to(S.STOPPED, "stopped")

    async def _fault(self, exc: Exception, delay: float) -> None:
        """Anything unexpected (an instrument that stops answering, a bug): abandon the
        block, report, wait, and start over from a fresh connection."""
        _log.error("link fault", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
        await self._abandon_current(f"fault: {type(exc).__name__}")
        await self.channel.drop("fault")
        self._raise_alarm(AlarmKind.DEVICE_FAULT, {"retry_in_s": delay})
        if self.machine.can(S.FAULT):
            self._to(S.FAULT, f"{type(exc).__name__}: {exc}")
        # Waiting and recovering give way to a stop request at once.
        recovery = asyncio.ensure_future(self._recover(exc, delay))
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({recovery, stopper}, return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait([recovery, stopper])
        if self._stop.is_set():
            return
        if self.machine.can(S.CONNECTING):
            self._to(S.CONNECTING, "retrying after a fault")

    async def _recover(self, exc: Exception, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._on_fault is not None:
            try:
                # e.g. reconnect the simulated fibre
                await asyncio.wait_for(
                    self._on_fault(exc), 2 * self.settings.peer.receive_timeout_s
                )
            except Exception as hook_exc:
                _log.error("fault recovery failed", error=str(hook_exc))

    async def _session_loop(self) -> None:
        """One connection's life: connect, recover decisions, then blocks until lost."""
        try:
            await self.channel.connect()
        except ResyncExhaustedError:
            self._raise_alarm(AlarmKind.AUTH_FAILURE, {"exhausted": 1})
            self._to(S.FAULT, "authentication exhausted: both ends need a new secret")
            raise
        self._clear_alarm(AlarmKind.PEER_LOST)
        try:
            await self._exchange_decisions()
            self._to(S.CALIBRATING, "peer connected")
            await self._calibrate()
            # Only instruments that answered a calibration end a device fault.
            self._clear_alarm(AlarmKind.DEVICE_FAULT)
            while not self._stop.is_set():
                if self.alice:
                    await self._between_blocks()
                await self._one_block()
        except PeerLost as exc:
            await self._abandon_current(f"peer lost: {exc}")
            self._raise_alarm(AlarmKind.PEER_LOST)
            self._to(S.CONNECTING, f"peer lost: {exc}")

    async def _abandon_current(self, reason: str) -> None:
        """Leave the current block cleanly: abort it unless this end may not (Bob after
        a yes vote keeps it pending until the coordinator answers)."""
        block_id, self.block_id = self.block_id, None
        if block_id is None:
            return
        state = self.keys.keys.block_state(block_id)
        if state is BlockState.OPEN or (self.alice and state is BlockState.PENDING):
            self.keys.abort(block_id, reason)
            self.blocks_aborted += 1

    # -- calibration --------------------------------------------------------------------

    async def _calibrate(self, first: CalibrationStart | None = None) -> None:
        """Find the delay between Alice's slots and Bob's tags (repeated on failure).
        ``first``: Bob's calibration start already received (Alice recalibrates)."""
        timeout = self.settings.peer.receive_timeout_s
        # A short frame is enough (thousands of clicks) and keeps the search cheap.
        n = min(self.settings.frame_slots, _CALIBRATION_SLOTS)
        for attempt in range(_CALIBRATION_ATTEMPTS):
            if self.alice:
                assert self.transmitter is not None
                seed = bytes(await self._random_bytes(16))
                await self.channel.send(
                    CalibrationStart(seed=seed.hex(), n_slots=n, attempt=attempt)
                )
                await self._instrument(self.transmitter.send_pattern(calibration_pattern(seed, n)))
                result = await self.channel.expect(Calibrated, timeout)
            else:
                assert self.receiver is not None
                start = first or await self.channel.expect(CalibrationStart, timeout)
                first = None
                if start.n_slots != n:
                    raise ProtocolViolation("calibration frame length differs")
                max_offset = round(_MAX_DELAY_S * self.protocol.slot_rate_hz)
                raw = await self._instrument(self.receiver.receive_raw(n, max_offset))
                pattern = calibration_pattern(bytes.fromhex(start.seed), n)
                search = functools.partial(
                    find_delay,
                    raw.times_ps,
                    raw.basis,
                    raw.bit,
                    pattern,
                    first_slot=raw.first_slot,
                    period_ps=1e12 / self.protocol.slot_rate_hz,
                    max_offset_slots=max_offset,
                )
                est = await self._cpu(search)
                if est.found:
                    self.receiver.set_delay(est.delay_ps)
                    self.timing.calibrated(est.delay_ps)
                _log.info(
                    "calibration frame",
                    found=est.found,
                    delay_ps=round(est.delay_ps, 1),
                    offset_slots=est.offset_slots,
                    peak_z=round(est.peak_z, 1),
                    detections=est.detections,
                )
                result = Calibrated(found=est.found, peak_z=est.peak_z, detections=est.detections)
                await self.channel.send(result)
            if result.found:
                self._to(S.TRANSMIT, f"calibrated (peak z = {result.peak_z:.1f})")
                return
        raise CalibrationFailed(f"no clear delay after {_CALIBRATION_ATTEMPTS} calibration frames")

    # -- decisions after a reconnect ------------------------------------------------------

    async def _exchange_decisions(self) -> None:
        timeout = self.settings.peer.receive_timeout_s
        if self.alice:
            query = await self.channel.expect(DecisionQuery, timeout)
            for block_id in query.block_ids:
                commit = self.keys.decision_for(block_id)
                await self.channel.send(Decision(block_id=block_id, commit=commit))
            return
        pending = self.keys.blocks_in(BlockState.PENDING)
        await self.channel.send(DecisionQuery(block_ids=pending))
        for block_id in pending:
            decision = await self.channel.expect(Decision, timeout)
            if decision.block_id != block_id:
                raise ProtocolViolation("decisions out of order")
            if decision.commit:
                self._commit_local(block_id)
            else:
                self.keys.abort(block_id, "coordinator decided abort")
                self.blocks_aborted += 1

    def _commit_local(self, block_id: int) -> None:
        self.keys.commit(block_id)
        metas = tuple(m for m in self.keys.keys.list() if m.block_id == block_id)
        self.blocks_committed += 1
        self.keys_committed += len(metas)
        self.key_bits_committed += sum(m.bits for m in metas)
        self.events.keys(KeysCommitted(block_id, metas))
        # These alarms judged one block (its ℓ, its detector monitors, its tags); a later
        # block committed at both ends shows the condition has passed. Without this they
        # would stay "active" in status, MQTT and metrics until the next restart.
        for kind in _CLEARED_BY_COMMIT:
            self._clear_alarm(kind, {"block_id": block_id})

    # -- one block ----------------------------------------------------------------------

    async def _one_block(self) -> None:
        probing = self.alarm_test.alarm_active
        try:
            if self.alice:
                await self._alice_block(probing)
            else:
                await self._bob_block(probing)
        except BlockAborted as exc:
            await self._abort_block(exc)
        except PeerAborted as exc:
            # The peer stopped for a reason of its own: acknowledge, so it can resume.
            if self.block_id is not None:
                await self.channel.send(Abort(block_id=self.block_id, reason="acknowledged"))
            await self._abort_block(
                BlockAborted(f"peer: {exc.reason}", _alarm_of(exc.reason), local=False)
            )

    async def _abort_block(self, exc: BlockAborted) -> None:
        """Abandon the block. A local reason is announced and both ends then meet at the
        peer's acknowledgement; a shared one (both ends computed it from the same
        authenticated data: alarm test, ℓ, verification) needs no message."""
        block_id = self.block_id
        if exc.alarm is not None:
            self._raise_alarm(exc.alarm, {"block_id": block_id or 0})
        _log.warning("block abandoned", block_id=block_id, reason=exc.reason)
        if block_id is not None and exc.local:
            reason = exc.alarm.value if exc.alarm is not None else exc.reason
            await self.channel.send(Abort(block_id=block_id, reason=reason))
            await self._drain_to_peer_abort(block_id)
        await self._abandon_current(exc.reason)
        if self.alarm_test.alarm_active or exc.alarm is not None:
            self._to(S.ALARM, exc.reason)
            if self.alarm_test.alarm_active:
                self._to(S.TRANSMIT, "probing: frames feed the alarm test until it clears")
                return
        self._to(S.TRANSMIT, f"fresh block after: {exc.reason}")

    async def _drain_to_peer_abort(self, block_id: int) -> None:
        timeout = self.settings.peer.receive_timeout_s
        while True:
            message = await self.channel.receive(timeout)
            if isinstance(message, Abort) and message.block_id == block_id:
                return

    def _security(self) -> SecurityParameters:
        p = self.protocol
        return SecurityParameters(p.eps_sec, p.eps_cor, p.phase_error_tolerance)

    def _check_stats(self, stats: BlockStatistics, lambda_ec: int, tag_bits: int) -> int:
        """ℓ, or an abort (φ_K above φ_tol or ℓ ≤ 0: key_length_zero)."""
        try:
            length = key_length(
                stats,
                self.protocol.intensities.decoy_settings(),
                lambda_ec=lambda_ec,
                verification_tag_bits=tag_bits,
                security=self._security(),
            )
        except PhaseErrorAboveToleranceError as exc:
            raise BlockAborted(
                f"phase error above tolerance: {exc}", AlarmKind.KEY_LENGTH_ZERO, local=False
            ) from None
        if not length.produces_key:
            raise BlockAborted(
                f"no secret key from this block (ℓ = {length.secret_bits})",
                AlarmKind.KEY_LENGTH_ZERO,
                local=False,
            )
        return length.secret_bits

    def _check_decoy_ratios(self, stats: BlockStatistics) -> None:
        """Warning ``decoy_ratio_shift`` (both ends decide alike from the same counts).
        The decoy bound itself accounts for the shift in ℓ; this names the cause."""
        event = decoy_ratio_check(
            stats.sent_per_class,
            stats.key_counts + stats.test_counts,
            self.protocol.intensities.mu,
            tolerance=self.protocol.decoy_ratio_tolerance,
            p_value=self.protocol.alarm_p_value,
        )
        self._warning(AlarmKind.DECOY_RATIO_SHIFT, event is not None, event.values if event else {})

    def _observe_alarm(self, frame_errors: np.ndarray, probing: bool) -> tuple[float, float]:
        result = self.alarm_test.observe(frame_errors)
        for event in result.events:
            if event.kind is AlarmKind.QBER_HIGH and event.active:
                raise BlockAborted(
                    "QBER above the ceiling (windowed test)", AlarmKind.QBER_HIGH, local=False
                )
            if event.kind is AlarmKind.QBER_HIGH and not event.active:
                self._clear_alarm(AlarmKind.QBER_HIGH, event.values)
                if probing:
                    raise BlockAborted("alarm cleared: a fresh block starts", local=False)
            elif event.kind is AlarmKind.QBER_WARNING:
                self._warning(AlarmKind.QBER_WARNING, event.active, event.values)
        return result.window_qber, result.window_lower_bound

    def _frame_statistics(
        self,
        n_slots: int,
        sent_per_class: np.ndarray,
        key_class: np.ndarray,
        test_class: np.ndarray,
        wrong: np.ndarray,
    ) -> BlockStatistics:
        return BlockStatistics(
            pulses=n_slots,
            sent_per_class=sent_per_class,
            key_counts=class_counts(key_class),
            test_counts=class_counts(test_class),
            test_errors=class_counts(test_class[wrong]),
        )

    # -- Alice ----------------------------------------------------------------------------

    async def _alice_block(self, probing: bool) -> None:
        timeout = self.settings.peer.receive_timeout_s
        sizes = self.settings.frame_sizes()
        block_id = self.keys.keys.allocate_block(self.settings.link)
        self.block_id = block_id
        await self.channel.send(
            BlockStart(block_id=block_id, frames=len(sizes), frame_slots=self.settings.frame_slots)
        )
        self.session.begin_block(block_id)
        assert self.transmitter is not None
        frames_stats: list[BlockStatistics] = []
        key_parts: list[np.ndarray] = []
        for frame, n_slots in enumerate(sizes):
            self._to(S.TRANSMIT, f"block {block_id} frame {frame}")
            pattern = await self._instrument(self.transmitter.send_frame(frame, n_slots))
            report = await self.channel.expect(DetectionReport, timeout)
            if report.block_id != block_id or report.frame != frame:
                raise ProtocolViolation("detection report for another frame")
            self._to(S.SIFT, f"block {block_id} frame {frame} report verified")
            reply, stats, key_bits, errors, n_det = await self._cpu(
                _alice_sift, block_id, frame, pattern, report
            )
            await self.channel.send(reply)
            frames_stats.append(stats)
            key_parts.append(key_bits)
            qber, bound = self._observe_alarm(errors, probing)
            self._frame_report(
                block_id=block_id,
                frame=frame,
                stats=stats,
                qber=qber,
                bound=bound,
                detections=n_det,
            )
        if probing:
            raise BlockAborted("probe block while the alarm is active", local=False)
        await self._finish_block_protocol(block_id, accumulate(frames_stats), key_parts)

    # -- Bob ------------------------------------------------------------------------------

    async def _bob_block(self, probing: bool) -> None:
        timeout = self.settings.peer.receive_timeout_s
        start = await self._wait_block_start()
        sizes = self.settings.frame_sizes()
        if start.frames != len(sizes) or start.frame_slots != self.settings.frame_slots:
            raise ProtocolViolation("block geometry differs from this end's parameters")
        block_id = start.block_id
        self.keys.keys.adopt_block(self.settings.link, block_id)
        self.block_id = block_id
        self.session.begin_block(block_id)
        assert self.receiver is not None
        frames_stats: list[BlockStatistics] = []
        key_parts: list[np.ndarray] = []
        for frame, n_slots in enumerate(sizes):
            self._to(S.TRANSMIT, f"block {block_id} frame {frame}")
            detections = await self._instrument(self.receiver.receive_frame(frame, n_slots))
            monitor = await self._instrument(self.receiver.monitor())
            # Checked before the report leaves: nothing of a blinded frame is revealed, and
            # Alice, waiting for the report, reads the abort at once (were she already
            # sending the next frame, she would wait on a fibre nobody reads any more).
            if monitor.get("bias_monitor_a", 0.0) > _BLINDING_PHOTOCURRENT_A:
                raise BlockAborted(
                    f"detector photocurrent {monitor['bias_monitor_a']:.3g} A: blinding suspected",
                    AlarmKind.BLINDING_SUSPECT,
                )
            self._track_timing()
            await self.channel.send(_bob_report(block_id, frame, detections))
            reply = await self.channel.expect(SiftReply, timeout)
            if reply.block_id != block_id or reply.frame != frame:
                raise ProtocolViolation("sift reply for another frame")
            self._to(S.SIFT, f"block {block_id} frame {frame} sifted")
            stats, key_bits, errors = await self._cpu(_bob_sift, n_slots, detections, reply)
            frames_stats.append(stats)
            key_parts.append(key_bits)
            qber, bound = self._observe_alarm(errors, probing)
            self._frame_report(
                block_id=block_id,
                frame=frame,
                stats=stats,
                qber=qber,
                bound=bound,
                detections=len(detections),
            )
        if probing:
            raise BlockAborted("probe block while the alarm is active", local=False)
        await self._finish_block_protocol(block_id, accumulate(frames_stats), key_parts)

    def _track_timing(self) -> None:
        """Bob: move the window with the drift; warn on a shift; a lost window is a fault
        (the retry recalibrates), so no frame is sifted with a wrong slot assignment."""
        assert self.receiver is not None
        update = self.timing.update(self.receiver.timing())
        if update.lost is not None:
            self._warning(AlarmKind.TIMING_SHIFT, True, update.values)
            raise TimingLost(update.lost)
        self.receiver.set_delay(update.delay_ps)
        self._warning(AlarmKind.TIMING_SHIFT, bool(update.shifted), update.values)

    async def _wait_block_start(self) -> BlockStart:
        while True:
            message = await self.channel.receive(None)
            if isinstance(message, BlockStart):
                return message
            if isinstance(message, Abort):
                continue  # a late acknowledgement of an abandoned block
            if isinstance(message, CalibrationStart):
                # Alice recalibrates between blocks (resumed, or asked to).
                self._to(S.CALIBRATING, "Alice recalibrates")
                await self._calibrate(message)
                continue
            raise ProtocolViolation(f"expected a block start, got {message.kind}")

    def _frame_report(
        self,
        *,
        block_id: int,
        frame: int,
        stats: BlockStatistics,
        qber: float,
        bound: float,
        detections: int,
    ) -> None:
        self.events.frame(
            FrameReport(
                block_id=block_id,
                frame=frame,
                sifted_key_bits=stats.n_key,
                test_bits=stats.n_test,
                test_errors=int(stats.test_errors.sum()),
                window_qber=qber,
                window_bound=bound,
                detections=detections,
            )
        )

    # -- both: after the last frame ---------------------------------------------------------

    async def _finish_block_protocol(
        self, block_id: int, stats: BlockStatistics, key_parts: list[np.ndarray]
    ) -> None:
        timeout = self.settings.peer.receive_timeout_s
        role = self.settings.role
        self._to(S.ESTIMATE, f"block {block_id}: {stats.n_key} sifted key bits")
        # Every frame of the block passed the photocurrent monitor.
        self._clear_alarm(AlarmKind.BLINDING_SUSPECT)
        self._check_decoy_ratios(stats)
        sifted = np.concatenate(key_parts) if key_parts else np.empty(0, np.uint8)
        tag_bits = self.post.verification_tag_bits(max(1, sifted.size), self.protocol.eps_cor)
        # Before disclosing anything: is there any key at all without leakage?
        await self._cpu(self._check_stats, stats, 0, tag_bits)
        self._to(S.RECONCILE, f"block {block_id}: reconciling {sifted.size} bits")
        party = self.post.reconciler(role, sifted, _qber_for_reconciliation(stats))
        message = await self._cpu(party.start)
        if message is not None:
            await self.channel.send(_recon_to_wire(block_id, message))
        while not party.finished:
            incoming = await self.channel.expect(Reconcile, timeout)
            if incoming.block_id != block_id:
                raise ProtocolViolation("reconciliation message for another block")
            reply = await self._cpu(party.receive, _recon_from_wire(incoming))
            if reply is not None:
                await self.channel.send(_recon_to_wire(block_id, reply))
        outcome = party.result()
        corrected = outcome.key
        # Frames the reconciler gave up are dropped at both ends; their bits leave the
        # key, and ℓ loses as many (removing d bits costs at most d bits of min-entropy).
        dropped = int(sifted.size - corrected.size)
        if corrected.size == 0:
            raise BlockAborted("reconciliation failed: no frame decoded")
        if not outcome.success:
            _log.warning("reconciliation dropped frames", block_id=block_id, dropped_bits=dropped)
        self._to(S.VERIFY, f"block {block_id}: λ_EC = {outcome.leaked_bits}")
        tag_bits = self.post.verification_tag_bits(max(1, corrected.size), self.protocol.eps_cor)
        if self.alice:
            seed = bytes(await self._random_bytes(self.post.verification_seed_bytes))
            tag = await self._cpu(self.post.verification_tag, corrected, seed, tag_bits)
            await self.channel.send(
                VerificationTag(
                    block_id=block_id, seed=seed.hex(), tag=tag.hex(), tag_bits=tag_bits
                )
            )
            result = await self.channel.expect(VerificationResult, timeout)
            equal = result.equal
        else:
            vt = await self.channel.expect(VerificationTag, timeout)
            if vt.tag_bits != tag_bits:
                raise ProtocolViolation("verification tag length differs")
            mine = await self._cpu(
                self.post.verification_tag, corrected, bytes.fromhex(vt.seed), tag_bits
            )
            equal = mine == bytes.fromhex(vt.tag)
            await self.channel.send(VerificationResult(block_id=block_id, equal=equal))
        if not equal:
            raise BlockAborted("verification failed: the reconciled keys differ", local=False)
        ell = await self._cpu(self._check_stats, stats, outcome.leaked_bits, tag_bits) - dropped
        if ell <= 0:
            raise BlockAborted(
                f"no secret key after dropped frames (ℓ = {ell})",
                AlarmKind.KEY_LENGTH_ZERO,
                local=False,
            )
        self._to(S.AMPLIFY, f"block {block_id}: ℓ = {ell}")
        if self.alice:
            nbits = self.post.amplification_seed_bits(corrected.size, ell)
            raw = await self._random_bytes((nbits + 7) // 8)
            seed_bits = np.unpackbits(np.frombuffer(bytes(raw), np.uint8), count=nbits)
            await self.channel.send(
                AmplificationSeed(
                    block_id=block_id,
                    secret_bits=ell,
                    seed_bits=nbits,
                    seed=np.packbits(seed_bits),
                )
            )
        else:
            msg = await self.channel.expect(AmplificationSeed, timeout)
            if msg.secret_bits != ell:
                raise BlockAborted(f"ℓ differs: Alice {msg.secret_bits}, Bob {ell}")
            nbits = self.post.amplification_seed_bits(corrected.size, ell)
            if msg.seed_bits != nbits:
                raise ProtocolViolation("amplification seed has the wrong length")
            seed_bits = np.unpackbits(msg.seed.astype(np.uint8), count=nbits)
        secret = await self._cpu(self.post.amplify, corrected, seed_bits, ell)
        # Transcript tags: nothing of the block is staged before both verified.
        block = self.session.block
        assert block is not None
        await self.channel.send(TranscriptTag(block_id=block_id))
        await self.channel.expect(TranscriptTag, timeout)
        block.require_verified()
        self._to(S.COMMIT, f"block {block_id}: transcripts verified")
        await self._commit(block_id, secret, ell, stats)
        self.block_id = None
        self._to(S.TRANSMIT, f"block {block_id} done")

    async def _commit(
        self, block_id: int, secret: np.ndarray, ell: int, stats: BlockStatistics
    ) -> None:
        timeout = self.settings.peer.receive_timeout_s
        block = self.session.block
        assert block is not None
        p = self.protocol
        if self.alice:
            need = self.session.replenishment_need()
            prepare = Prepare(
                block_id=block_id,
                secret_bits=ell,
                need_ab=need[_AB],
                need_ba=need[_BA],
                eps_auth=block.eps_auth,
                qber=stats.test_qber,
            )
        else:
            prepare = await self.channel.expect(Prepare, timeout)
            if prepare.block_id != block_id or prepare.secret_bits != ell:
                raise ProtocolViolation("prepare does not match this block")
        split = split_block(
            ell,
            {_AB: prepare.need_ab, _BA: prepare.need_ba},
            p.key_size_bits,
            self.session.rule,
        )
        # The authentication key this block spent (to be refilled before any key is
        # delivered): when it is at least ℓ the block yields no key.
        auth_bits = (prepare.need_ab + prepare.need_ba) * UNIT_BITS
        self._warning(
            AlarmKind.NET_KEY_NEGATIVE,
            ell - auth_bits <= 0,
            {"block_id": block_id, "secret_bits": ell, "authentication_bits": auth_bits},
        )
        meta = KeyMetadata(
            qber=prepare.qber,
            eps_sec=p.eps_sec,
            eps_cor=p.eps_cor,
            eps_auth=prepare.eps_auth,
            simulated=self.settings.simulated,
        )
        try:
            # SQLite stays on the loop's thread; staging is one small transaction.
            self.keys.stage(block_id, secret, split, meta)
        finally:
            secret[:] = 0
        if self.alice:
            await self.channel.send(prepare)
            vote = await self.channel.expect(Vote, timeout)
            if vote.block_id != block_id:
                raise ProtocolViolation("vote for another block")
            if not vote.yes:
                self.keys.abort(block_id, f"participant voted no: {vote.reason}")
                await self.channel.send(Decision(block_id=block_id, commit=False))
                self.blocks_aborted += 1
                return
            self._commit_local(block_id)  # the durable decision record
            self.block_id = None
            await self.channel.send(Decision(block_id=block_id, commit=True))
        else:
            if self.paused:
                # This end cannot take keys now (its delivery outbox is full): vote no;
                # nothing was committed, so nothing is lost.
                reason = ", ".join(sorted(self._pause_reasons))
                self.keys.abort(block_id, f"participant paused: {reason}")
                self.blocks_aborted += 1
                await self.channel.send(Vote(block_id=block_id, yes=False, reason=reason))
                await self.channel.expect(Decision, timeout)
                self.block_id = None
                return
            await self.channel.send(Vote(block_id=block_id, yes=True))
            decision = await self.channel.expect(Decision, timeout)
            if decision.block_id != block_id:
                raise ProtocolViolation("decision for another block")
            if decision.commit:
                self._commit_local(block_id)
            else:
                self.keys.abort(block_id, "coordinator decided abort")
                self.blocks_aborted += 1
            self.block_id = None

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "blocks_committed": self.blocks_committed,
            "blocks_aborted": self.blocks_aborted,
            "keys_committed": self.keys_committed,
            "keys_stored": len(self.keys.keys.list(KeyState.COMMITTED)),
            "alarms": sorted(str(a) for a in self.active_alarms),
            "paused": sorted(self._pause_reasons),
        }


def _qber_for_reconciliation(stats: BlockStatistics) -> float:
    """The public QBER the reconciler plans with: the test-basis estimate plus three
    standard errors (an underestimate makes decoding fail and frames drop)."""
    n = max(stats.n_test, 1)
    q = stats.test_qber
    return float(min(0.5, max(q + 3.0 * math.sqrt(max(q, 1e-3) * (1 - q) / n), 1e-3)))


_CLEARED_BY_COMMIT = (AlarmKind.KEY_LENGTH_ZERO, AlarmKind.BLINDING_SUSPECT, AlarmKind.AUTH_FAILURE)


def _alarm_of(reason: str) -> AlarmKind | None:
    try:
        kind = AlarmKind(reason)
    except ValueError:
        return None
    return kind if kind.level.value == "abort" else None


def _bob_report(block_id: int, frame: int, det: Detections) -> DetectionReport:
    return DetectionReport(
        block_id=block_id,
        frame=frame,
        slot=det.slot,
        basis=det.basis,
        test_bits=det.bit[det.basis == BASIS_T],
    )


def _alice_sift(
    block_id: int, frame: int, pattern: FramePattern, report: DetectionReport
) -> tuple[SiftReply, BlockStatistics, np.ndarray, np.ndarray, int]:
    """Alice's side of sifting one frame (pure: runs in the executor)."""
    try:
        det = Detections(
            slot=report.slot, basis=report.basis, bit=np.zeros(len(report.slot), np.uint8)
        )
        idx = match_bases(det, pattern)
    except ValueError as exc:
        raise ProtocolViolation(f"bad detection report: {exc}") from None
    is_t = det.basis == BASIS_T
    if report.test_bits.shape != (int(is_t.sum()),):
        raise ProtocolViolation("test bits do not match the T-basis detections")
    matched = np.zeros(len(det), np.uint8)
    matched[idx.key] = 1
    matched[idx.test] = 1
    m_idx = np.flatnonzero(matched)
    classes = pattern.intensity[det.slot[m_idx]]
    alice_test = pattern.bit[det.slot[idx.test]]
    rank = np.cumsum(is_t) - 1
    bob_test = report.test_bits.astype(np.uint8)[rank[idx.test]]
    wrong = alice_test != bob_test
    sent = pattern.sent_per_class()
    stats = BlockStatistics(
        pulses=pattern.n_slots,
        sent_per_class=sent,
        key_counts=class_counts(idx.key_class),
        test_counts=class_counts(idx.test_class),
        test_errors=class_counts(idx.test_class[wrong]),
    )
    reply = SiftReply(
        block_id=block_id,
        frame=frame,
        matched=matched,
        classes=classes,
        test_bits=alice_test,
        sent_per_class=np.asarray(sent, np.int64),
    )
    errors = wrong[idx.test_class != _VACUUM_CLASS].astype(np.int8)
    key_bits = pattern.bit[det.slot[idx.key]]
    return reply, stats, key_bits, errors, len(det)


def _bob_sift(
    n_slots: int, det: Detections, reply: SiftReply
) -> tuple[BlockStatistics, np.ndarray, np.ndarray]:
    """Bob's side of sifting one frame from Alice's reply (pure)."""
    matched = reply.matched.astype(bool)
    if matched.shape != (len(det),):
        raise ProtocolViolation("sift reply does not match the reported detections")
    m_idx = np.flatnonzero(matched)
    classes = reply.classes.astype(np.uint8)
    if classes.shape != m_idx.shape or (classes.size and int(classes.max()) > 2):
        raise ProtocolViolation("sift reply classes malformed")
    sent = reply.sent_per_class.astype(np.int64)
    if sent.shape != (3,) or int(sent.sum()) != n_slots or bool((sent < 0).any()):
        raise ProtocolViolation("pulses per class do not add up to the frame")
    basis_m = det.basis[m_idx]
    key_sel = basis_m == BASIS_K
    test_sel = basis_m == BASIS_T
    key_idx, test_idx = m_idx[key_sel], m_idx[test_sel]
    key_class, test_class = classes[key_sel], classes[test_sel]
    alice_test = reply.test_bits.astype(np.uint8)
    if alice_test.shape != test_idx.shape:
        raise ProtocolViolation("Alice's test bits do not match the matched T detections")
    wrong = alice_test != det.bit[test_idx]
    stats = BlockStatistics(
        pulses=n_slots,
        sent_per_class=sent,
        key_counts=class_counts(key_class),
        test_counts=class_counts(test_class),
        test_errors=class_counts(test_class[wrong]),
    )
    errors = wrong[test_class != _VACUUM_CLASS].astype(np.int8)
    return stats, det.bit[key_idx], errors


def _recon_to_wire(block_id: int, m: ReconMessage) -> Reconcile:
    names = sorted(m.disclosed)
    ints = {k: v for k, v in m.public.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in m.public.items() if not isinstance(v, np.ndarray)}
    int_names = sorted(ints)
    return Reconcile(
        block_id=block_id,
        sender=m.sender,
        step=m.step,
        disclosed_names=names,
        disclosed_sizes=[int(m.disclosed[n].size) for n in names],
        public=scalars,
        public_int_names=int_names,
        public_int_sizes=[int(ints[n].size) for n in int_names],
        credit=m.credit,
        disclosed=(
            np.concatenate([m.disclosed[n].astype(np.uint8) for n in names])
            if names
            else np.empty(0, np.uint8)
        ),
        public_ints=(
            np.concatenate([ints[n].astype(np.int64).ravel() for n in int_names])
            if int_names
            else np.empty(0, np.int64)
        ),
    )


def _split(values: np.ndarray, names: list[str], sizes: list[int]) -> dict[str, np.ndarray]:
    if len(names) != len(sizes) or sum(sizes) != values.size or any(s < 0 for s in sizes):
        raise ProtocolViolation("reconciliation message sizes do not add up")
    out, offset = {}, 0
    for name, size in zip(names, sizes, strict=True):
        out[name] = values[offset : offset + size]
        offset += size
    return out


def _recon_from_wire(r: Reconcile) -> ReconMessage:
    disclosed = _split(r.disclosed.astype(np.uint8), r.disclosed_names, r.disclosed_sizes)
    if any(bool((v > 1).any()) for v in disclosed.values()):
        raise ProtocolViolation("disclosed bits must be 0/1")
    public: dict[str, Any] = dict(r.public)
    public.update(_split(r.public_ints.astype(np.int64), r.public_int_names, r.public_int_sizes))
    total = sum(v.size for v in disclosed.values())
    if not 0 <= r.credit <= total:
        raise ProtocolViolation("credit out of range")
    return ReconMessage(r.sender, r.step, disclosed, public, r.credit)


__all__ = ["BlockAborted", "EngineSettings", "LinkEngine", "TimingLost"]
