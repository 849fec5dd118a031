"""Coalesced sending for the QUIC connection protocols of both ends (agent and hub).

Each ``send`` queues stream data in aioquic; datagrams go out once per event-loop
iteration instead of once per frame. Inside ``datagram_received`` aioquic transmits
right after the handlers return, so no flush is scheduled then. This mixin imports no
aioquic: it relies on the ``QuicConnectionProtocol`` attributes (``_quic``, ``_loop``,
``transmit``, ``datagram_received``) of the class it is mixed into, listed first.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


class CoalescedSending:
    """Mix into a ``QuicConnectionProtocol`` subclass (before it in the bases)."""

    closed: bool = False
    _transmit_scheduled: bool = False
    _receiving: bool = False
    _quic: Any
    _loop: Any

    def transmit(self) -> None:  # provided by QuicConnectionProtocol
        super().transmit()  # type: ignore[misc]

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Feed a datagram to aioquic, noting that a transmit follows anyway."""
        self._receiving = True
        try:
            super().datagram_received(data, addr)  # type: ignore[misc]
        finally:
            self._receiving = False

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on ``stream_id``; datagrams go out once per loop iteration."""
        if self.closed:
            return
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except Exception:  # noqa: BLE001 - the peer reset the stream; nothing to deliver
            logger.debug("cannot send on stream %d", stream_id, exc_info=True)
            return
        if not self._transmit_scheduled and not self._receiving:
            self._transmit_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._transmit_scheduled = False
        if not self.closed:
            self.transmit()
