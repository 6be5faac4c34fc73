"""DynamoTableSink.write against a stand-in for DynamoDB's BatchWriteItem (no network).

The stand-in behaves like DynamoDB where it matters here: it rejects a request naming
the same key twice, holds at most 25 requests, and can leave items unprocessed or fail
the way a throttled or unreachable service does.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import botocore.exceptions
import orjson
import pytest
from quixstreams.sinks import SinkBackpressureError

from crypto_live.errors import DestinationError
from processors.dynamo_items import item_key, to_item
from processors.dynamo_sink import DynamoTableSink
from tests.factories import key_of, sink_batch, ticker

TABLE = "tickers"


def client_error(code: str, status: int = 400) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": f"{code} happened"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "BatchWriteItem",
    )


class FakeDynamo:
    """BatchWriteItem for one table. ``script`` says, call by call, how many of the
    requests to leave unprocessed (an int) or which exception to raise; afterwards
    every call succeeds."""

    def __init__(self, script=(), barrier: threading.Barrier | None = None):
        self.meta = SimpleNamespace(region_name="ap-southeast-1")
        self.rows: dict[tuple[str, str], dict] = {}
        self.calls: list[int] = []
        self._script = list(script)
        self._barrier = barrier  # when set, each call waits for the others to arrive
        self._lock = threading.Lock()  # the sink calls from several threads
        self.failing_symbols: dict[str, Exception] = {}  # requests starting with this symbol fail

    def batch_write_item(self, RequestItems):
        ((table, requests),) = RequestItems.items()
        assert table == TABLE
        if self._barrier is not None:
            self._barrier.wait()
        with self._lock:
            return self._apply(table, requests)

    def _apply(self, table, requests):
        self.calls.append(len(requests))
        if len(requests) > 25:
            raise client_error("ValidationException")
        keys = [item_key(r["PutRequest"]["Item"]) for r in requests]
        if len(set(keys)) != len(keys):
            raise client_error("ValidationException")  # "Provided list of item keys contains duplicates"
        failure = self.failing_symbols.get(requests[0]["PutRequest"]["Item"]["symbol"]["S"])
        if failure is not None:
            raise failure
        step = self._script.pop(0) if self._script else 0
        if isinstance(step, Exception):
            raise step
        unprocessed, accepted = requests[:step], requests[step:]
        for request in accepted:
            item = request["PutRequest"]["Item"]
            self.rows[item_key(item)] = item
        return {"UnprocessedItems": {table: unprocessed} if unprocessed else {}}


def make_sink(client: FakeDynamo, sleeps: list[float], **options) -> DynamoTableSink:
    return DynamoTableSink(client, TABLE, ttl_days=1, sleep=sleeps.append, jitter=lambda: 1.0, **options)


def row_key(event: dict) -> tuple[str, str]:
    """The stored row's key of ``event``, as the stand-in files it."""
    symbol, event_time = key_of(event)
    return symbol, str(event_time)


def test_unprocessed_items_are_retried_with_backoff_until_all_are_written():
    client = FakeDynamo(script=[10, 4, 1])  # the first chunk comes back partly unprocessed three times
    sleeps: list[float] = []
    # One writer: the two requests of this batch go out in order, so the script is theirs.
    sink = make_sink(client, sleeps, retry_base=0.05, retry_cap=2.0, writers=1)
    events = [ticker(n) for n in range(40)]

    sink.write(sink_batch(events))

    assert set(client.rows) == {item_key(to_item(e, 1)) for e in events}
    assert client.calls == [25, 10, 4, 1, 15]  # retries resend only what was left over
    assert sleeps == [0.05, 0.1, 0.2]  # jitter pinned at its maximum shows the exponential ceiling
    assert sink.rows_written == 40


def test_full_jitter_spreads_retries_below_the_ceiling():
    client = FakeDynamo(script=[5, 5])
    sleeps: list[float] = []
    jitters = iter([0.5, 0.25])
    sink = DynamoTableSink(
        client, TABLE, ttl_days=1, sleep=sleeps.append, jitter=lambda: next(jitters), retry_base=0.1, retry_cap=2.0
    )
    sink.write(sink_batch([ticker(n, symbol="ETHUSDT") for n in range(5)]))
    assert sleeps == [0.05, 0.05]  # 0.5 × 0.1, then 0.25 × 0.2
    assert len(client.rows) == 5


def test_retry_delays_double_up_to_their_cap_and_jitter_draws_below_it():
    client = FakeDynamo(script=[1] * 8)  # one item left unprocessed by eight calls in a row
    sleeps: list[float] = []
    sink = make_sink(client, sleeps, unprocessed_retries=8, retry_base=0.05, retry_cap=2.0)
    sink.write(sink_batch([ticker(n) for n in range(3)]))
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]  # jitter pinned at its maximum: the ceilings
    assert len(client.rows) == 3

    no_wait: list[float] = []
    unlucky = DynamoTableSink(
        FakeDynamo(script=[1] * 3), TABLE, ttl_days=1, sleep=no_wait.append, jitter=lambda: 0.0, retry_base=0.05
    )
    unlucky.write(sink_batch([ticker(n) for n in range(3)]))
    assert no_wait == [0.0, 0.0, 0.0]  # full jitter reaches down to no wait at all


def test_items_still_unprocessed_become_backpressure_that_grows_and_resets():
    never_through = [3] * 6  # one call and five retries, each leaving all three items unprocessed
    client = FakeDynamo(script=never_through * 2 + [0] + never_through)
    sleeps: list[float] = []
    sink = make_sink(client, sleeps, unprocessed_retries=5)  # the production backpressure: 1 s, doubling
    batch = sink_batch([ticker(n) for n in range(3)])
    pauses = []
    for _ in range(2):
        with pytest.raises(SinkBackpressureError) as pause:
            sink.write(batch)
        pauses.append(pause.value.retry_after)
    assert len(sleeps) == 10 and client.rows == {}
    sink.write(batch)  # DynamoDB caught up: the replayed batch goes through
    assert len(client.rows) == 3
    with pytest.raises(SinkBackpressureError) as after_success:
        sink.write(batch)
    assert pauses + [after_success.value.retry_after] == [1.0, 2.0, 1.0]


@pytest.mark.parametrize(
    "failure",
    [
        client_error("ProvisionedThroughputExceededException"),
        client_error("ThrottlingException"),
        client_error("InternalServerError", status=500),
        client_error("SomethingNew", status=503),
        botocore.exceptions.EndpointConnectionError(endpoint_url="https://dynamodb.ap-southeast-1.amazonaws.com"),
        botocore.exceptions.ReadTimeoutError(endpoint_url="https://dynamodb.ap-southeast-1.amazonaws.com"),
    ],
)
def test_throttling_and_outages_after_boto3_retries_become_backpressure(failure):
    client = FakeDynamo(script=[failure])
    sink = make_sink(client, [])
    with pytest.raises(SinkBackpressureError):
        sink.write(sink_batch([ticker(1)]))
    assert client.rows == {}


@pytest.mark.parametrize("code", ["ResourceNotFoundException", "AccessDeniedException", "ValidationException"])
def test_errors_waiting_cannot_fix_stop_the_sink_naming_the_table(code):
    sink = make_sink(FakeDynamo(script=[client_error(code)]), [])
    with pytest.raises(DestinationError, match=f"DynamoDB table 'tickers' .*BatchWriteItem failed: {code}"):
        sink.write(sink_batch([ticker(1)]))


def test_duplicate_keys_in_one_batch_are_written_once_with_the_last_values():
    client = FakeDynamo()
    sink = make_sink(client, [])
    events = [ticker(1, c="1.0"), ticker(2), ticker(1, c="1.0"), ticker(1, c="2.5")]
    sink.write(sink_batch(events))
    assert client.calls == [2]
    assert client.rows[row_key(events[0])]["close"] == {"N": "2.5"}


def test_the_requests_of_one_batch_are_written_concurrently():
    # Four requests (100 rows): each call waits at the barrier until all four have
    # arrived, so the batch completes only if the sink has them in flight together.
    client = FakeDynamo(barrier=threading.Barrier(4, timeout=10))
    sink = make_sink(client, [], writers=4)
    events = [ticker(n, symbol=f"SYM{n % 7}") for n in range(100)]
    sink.write(sink_batch(events))
    assert sorted(client.calls) == [25, 25, 25, 25]
    assert set(client.rows) == {item_key(to_item(e, 1)) for e in events}
    assert sink.rows_written == 100


def test_one_throttled_request_pauses_the_batch_and_the_replay_completes_it():
    client = FakeDynamo()
    client.failing_symbols["BB"] = client_error("ThrottlingException")
    sink = make_sink(client, [], writers=4)
    events = [ticker(n, symbol=symbol) for symbol in ("AA", "BB", "CC") for n in range(25)]
    with pytest.raises(SinkBackpressureError):
        sink.write(sink_batch(events))
    assert sink.rows_written == 50  # AA and CC went through; BB did not
    del client.failing_symbols["BB"]
    sink.write(sink_batch(events))  # Quix replays the whole batch from the committed offset
    assert set(client.rows) == {item_key(to_item(e, 1)) for e in events}


def test_an_error_waiting_cannot_fix_wins_over_backpressure_in_the_same_batch():
    client = FakeDynamo()
    client.failing_symbols["AA"] = client_error("ThrottlingException")
    client.failing_symbols["BB"] = client_error("AccessDeniedException")
    sink = make_sink(client, [], writers=4)
    events = [ticker(n, symbol=symbol) for symbol in ("AA", "BB") for n in range(25)]
    with pytest.raises(DestinationError, match="AccessDeniedException"):
        sink.write(sink_batch(events))


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("dynamo-sink-writer")}


def test_closing_the_sink_stops_its_writer_threads():
    before = writer_threads()
    with make_sink(FakeDynamo(), [], writers=4) as sink:
        sink.write(sink_batch([ticker(n) for n in range(100)]))  # four requests: the pool is used
        started = writer_threads() - before
        assert started, "the batch was written without the writer pool: the check below would prove nothing"
    assert not any(thread.is_alive() for thread in started)


def test_a_checkpoint_over_several_partitions_is_written_in_full_requests_and_only_its_last_partial():
    client = FakeDynamo()
    sink = make_sink(client, [])
    events = {partition: [ticker(n, symbol=f"P{partition}") for n in range(30)] for partition in range(3)}
    for partition, batch in events.items():
        for offset, event in enumerate(batch):
            sink.add(orjson.dumps(event), event["s"].encode(), event["E"], [], "miniticker", partition, offset)
    sink.flush()
    assert sorted(client.calls) == [15, 25, 25, 25]  # 90 rows: not 3 × (25 + 5)
    assert sink.rows_written == 90


def test_the_late_rewrite_of_a_key_waits_for_the_request_that_wrote_it():
    client = FakeDynamo()
    sink = make_sink(client, [], writers=4)
    events = [ticker(n) for n in range(25)] + [ticker(0, c="3.5")]
    sink.write(sink_batch(events))
    assert client.calls == [25, 1]
    assert client.rows[row_key(events[0])]["close"] == {"N": "3.5"}


def test_a_dropped_checkpoint_leaves_nothing_for_the_next_one():
    client = FakeDynamo()
    sink = make_sink(client, [])
    for offset, event in enumerate(ticker(n) for n in range(10)):
        sink.add(orjson.dumps(event), b"BTCUSDT", event["E"], [], "miniticker", 0, offset)
    sink.on_paused()  # Quix dropped the checkpoint (backpressure elsewhere, lost membership)
    sink.flush()
    assert client.calls == [] and sink.rows_written == 0
