"""Coalesced sending and acknowledgement for the QUIC connection protocols of both ends.

Each ``send`` queues stream data in aioquic; datagrams go out once per event-loop
iteration instead of once per frame. Inside ``datagram_received`` aioquic transmits
right after the handlers return, so no flush is scheduled then.

Acknowledgements ride along with data.  aioquic sends a QUIC ACK only once its ack timer
(1 ms) is due, as a datagram of its own, even when stream data leaves a moment earlier.
A fan-out measured six datagrams per command that way (EXEC, its ACK, EXIT, its ACK, the
hub's acknowledgement of the EXIT, its ACK).  Here an ACK that is owed is made due
whenever stream data is queued, so it travels in the same packet; and a connection may
wait longer before acknowledging on its own (``ack_delay``, at most the 25 ms that aioquic
announces as ``max_ack_delay``), so that the agent's EXIT carries the ACK of the EXEC.
With a longer delay, a second ack-eliciting datagram is acknowledged at once (RFC 9000
section 13.2.2), so bulk transfers towards this end are not slowed down.

Liveness: ``last_heard`` is the monotonic time of the peer's last packet that aioquic
decrypted and accepted (it re-arms its idle timer, ``_close_at``, for exactly those), so
a bare QUIC ACK counts as a sign of life as much as a frame does -- the agent's
heartbeat needs no answer of its own -- and garbage from elsewhere counts for nothing.

This mixin imports no aioquic: it relies on the ``QuicConnectionProtocol`` attributes
(``_quic``, ``_loop``, ``transmit``, ``datagram_received``) of the class it is mixed into,
listed first, and on aioquic's packet-space object (``ack_at``); if that ever moves, it
falls back to aioquic's own acknowledgement timing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

# aioquic announces max_ack_delay = 25 ms in its transport parameters: acknowledging later
# than that would make the peer retransmit.  Stay below it, timer slack included.
MAX_ACK_DELAY = 0.020


class CoalescedSending:
    """Mix into a ``QuicConnectionProtocol`` subclass (before it in the bases)."""

    closed: bool = False
    # When the peer was last heard from (``time.monotonic``): see the module docstring.
    last_heard: float = 0.0
    # Seconds this end may wait before acknowledging (None: aioquic's default, 1 ms).
    ack_delay: float | None = None
    _transmit_scheduled: bool = False
    _receiving: bool = False
    _ack_space: Any = None
    _ack_spaces: Any = None
    _quic: Any
    _loop: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.ack_delay is not None and hasattr(self._quic, "_ack_delay"):
            self._quic._ack_delay = min(self.ack_delay, MAX_ACK_DELAY)

    def transmit(self) -> None:  # provided by QuicConnectionProtocol
        super().transmit()  # type: ignore[misc]

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Feed a datagram to aioquic, noting that a transmit follows anyway."""
        space = self._application_space()
        owed_before = space is not None and space.ack_at is not None
        idle_deadline = getattr(self._quic, "_close_at", None)
        self._receiving = True
        try:
            super().datagram_received(data, addr)  # type: ignore[misc]
        finally:
            self._receiving = False
        if idle_deadline is None or getattr(self._quic, "_close_at", None) != idle_deadline:
            # aioquic accepted a packet (or this aioquic cannot tell: count the datagram).
            self.last_heard = time.monotonic()
        if owed_before and self.ack_delay is not None and space.ack_at is not None:
            # Two ack-eliciting datagrams are waiting for an ACK: send it now.
            space.ack_at = self._loop.time()
            self.transmit()

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on ``stream_id``; datagrams go out once per loop iteration."""
        if self.closed:
            return
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except Exception:  # noqa: BLE001 - the peer reset the stream; nothing to deliver
            logger.debug("cannot send on stream %d", stream_id, exc_info=True)
            return
        self.acknowledge_now()  # an ACK owed leaves in the packet that carries this data
        if not self._transmit_scheduled and not self._receiving:
            self._transmit_scheduled = True
            self._loop.call_soon(self._flush)

    def acknowledge_now(self) -> None:
        """Make an owed ACK due at once: it leaves with the next transmit (inside
        ``datagram_received``, right after the handlers return) instead of at aioquic's
        ack timer, a wake-up and a datagram of its own."""
        space = self._application_space()
        if space is not None and space.ack_at is not None:
            space.ack_at = self._loop.time()

    def _flush(self) -> None:
        self._transmit_scheduled = False
        if not self.closed:
            self.transmit()

    def _application_space(self) -> Any:
        """aioquic's 1-RTT packet space (None before the handshake or if aioquic changed)."""
        spaces = getattr(self._quic, "_spaces", None)
        if spaces is not self._ack_spaces or self._ack_space is None:
            # aioquic makes the spaces at the handshake (again after a Retry).
            self._ack_spaces, self._ack_space = spaces, None
            for epoch, candidate in (spaces or {}).items():
                if getattr(epoch, "name", "") == "ONE_RTT" and hasattr(candidate, "ack_at"):
                    self._ack_space = candidate
        return self._ack_space
