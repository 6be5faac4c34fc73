"""A loopback forwarder in front of a Kafka broker that writes down the API of every request.

Start the broker with its advertised listener on :attr:`KafkaRequestLog.port` (see
``EmbeddedBroker(advertised_port=...)``): clients bootstrap through the log, learn the
log's address from Metadata, and so send every request through it. Each request frame
starts with ``int32 size, int16 api_key, int16 api_version, int32 correlation_id,
int16-length client_id`` in every header version, which is all that is read here; bytes
are forwarded unchanged both ways.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable

from tests.proxy import TcpGate

#: Kafka API keys by number (the public protocol's numbering), for the APIs clients send.
API_NAMES = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    11: "JoinGroup",
    12: "Heartbeat",
    13: "LeaveGroup",
    14: "SyncGroup",
    15: "DescribeGroups",
    16: "ListGroups",
    17: "SaslHandshake",
    18: "ApiVersions",
    19: "CreateTopics",
    20: "DeleteTopics",
    21: "DeleteRecords",
    22: "InitProducerId",
    23: "OffsetForLeaderEpoch",
    24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn",
    26: "EndTxn",
    28: "TxnOffsetCommit",
    29: "DescribeAcls",
    32: "DescribeConfigs",
    33: "AlterConfigs",
    36: "SaslAuthenticate",
    37: "CreatePartitions",
    42: "DeleteGroups",
    44: "IncrementalAlterConfigs",
    47: "OffsetDelete",
    60: "DescribeCluster",
    61: "DescribeProducers",
    68: "ConsumerGroupHeartbeat",
    71: "GetTelemetrySubscriptions",
    72: "PushTelemetry",
}


class KafkaRequestLog:
    """Forwards loopback connections on :attr:`port` to ``target_port`` (a :class:`TcpGate`),
    noting ``(client_id, api name)`` of every request the clients send."""

    def __init__(self, target_port: int):
        self._gate = TcpGate(target_port, observe=self._connection)
        self.port = self._gate.port
        self._requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def start(self) -> KafkaRequestLog:
        self._gate.open()
        return self

    def stop(self) -> None:
        self._gate.close()

    def __enter__(self) -> KafkaRequestLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def take(self, *, ignore_clients: Iterable[str] = ()) -> set[str]:
        """The APIs requested since the last take, by clients other than ``ignore_clients``; clears the log."""
        ignored = set(ignore_clients)
        with self._lock:
            taken, self._requests = self._requests, []
        return {api for client, api in taken if client not in ignored}

    def _connection(self) -> Callable[[bytes], None]:
        """What sees one connection's request bytes: frames may span chunks, so it keeps the rest."""
        pending = b""

        def seen(data: bytes) -> None:
            nonlocal pending
            pending = self._note_frames(pending + data)

        return seen

    def _note_frames(self, buffer: bytes) -> bytes:
        """Note every complete request frame in ``buffer``; return the incomplete rest."""
        while len(buffer) >= 4:
            (size,) = struct.unpack_from(">i", buffer)
            if len(buffer) < 4 + size:
                break
            frame = buffer[4 : 4 + size]
            buffer = buffer[4 + size :]
            (api_key,) = struct.unpack_from(">h", frame)
            (id_length,) = struct.unpack_from(">h", frame, 8)
            client_id = frame[10 : 10 + id_length].decode(errors="replace") if id_length > 0 else ""
            with self._lock:
                self._requests.append((client_id, API_NAMES.get(api_key, f"api key {api_key}")))
        return buffer
