"""The producer against the market simulator and the test broker: nothing sent is lost
or doubled, whatever the websocket does."""

from __future__ import annotations

import asyncio
import itertools
import logging

import orjson
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME
from confluent_kafka.admin import AdminClient, NewTopic

from crypto_live.dead_letter import original_bytes
from crypto_live.embedded import free_port
from crypto_live.event import MiniTicker, validate
from crypto_live.kafka import ensure_topics
from crypto_live.settings import ProducerSettings, load
from crypto_live.simulator import JUNK_FRAMES, SimulatorOptions, SimulatorThread
from producer.inprocess import ProducerThread
from producer.publisher import DLQ_MAX_RAW_BYTES, DLQ_REASON_HEADER, Publisher
from producer.source import plan_connections
from producer.stats import Stats
from tests.factories import assert_exactly_once, key_of, ticker
from tests.helpers import read_topic, wait_for
from tests.producer_helpers import published_keys


def producer_settings(kafka_env: dict, url: str, **extra: str) -> ProducerSettings:
    return load(
        ProducerSettings,
        {
            **kafka_env,
            "BINANCE_WEBSOCKET_URL": url,
            "PRODUCER_STATS_INTERVAL": "1",
            "PRODUCER_SHUTDOWN_TIMEOUT": "15",
            **extra,
        },
    )


def assert_sent_exactly_once(sim: SimulatorThread, bootstrap: str, topic: str) -> None:
    """Every event the simulator sent is on ``topic`` once, and nothing else is."""
    assert_exactly_once(published_keys(bootstrap, topic), sim.sent_keys())


def keeps_flowing(producer: ProducerThread, more: int = 20):
    """A condition: at least ``more`` further events were read since it was made."""
    start = producer.stats.events
    return lambda: producer.stats.events >= start + more


def test_every_event_arrives_exactly_once_through_drop_shutdown_junk_and_stale(broker, kafka_env):
    with SimulatorThread(SimulatorOptions(symbols=20, interval=0.05)) as sim:
        settings = producer_settings(kafka_env, sim.url(), PRODUCER_STALE_AFTER="1")
        with ProducerThread(settings) as producer:
            stats = producer.stats
            wait_for(lambda: stats.published >= 50, what="first events published")

            sim.drop_connections()
            flowing = keeps_flowing(producer)
            wait_for(lambda: stats.connections >= 2 and flowing(), what="reconnect after a dropped connection")

            sim.server_shutdown()
            flowing = keeps_flowing(producer)
            wait_for(lambda: stats.connections >= 3 and flowing(), what="reconnect after serverShutdown")
            assert stats.server_shutdowns == 1

            sim.send_junk()
            wait_for(lambda: stats.invalid >= 2, what="junk frames dead-lettered")

            sim.stall(2.0)
            wait_for(lambda: stats.stale >= 1, what="stale-stream watchdog")
            flowing = keeps_flowing(producer)
            wait_for(lambda: flowing(), what="events after the stall")
            assert producer.stop() == 0

    assert_sent_exactly_once(sim, broker, kafka_env["KAFKA_TOPIC"])
    assert stats.delivery_failures == 0 and stats.published == stats.events
    assert stats.reconnects >= 3

    dead = read_topic(broker, kafka_env["KAFKA_TOPIC"] + ".dlq")
    records = [orjson.loads(m.value()) for m in dead]
    assert sorted(original_bytes(r) for r in records) == sorted(f.encode() for f in JUNK_FRAMES)
    assert all(r["stage"] == "producer" and r["source"] is None for r in records)
    by_raw = {original_bytes(r): r["reason"] for r in records}
    assert by_raw[JUNK_FRAMES[0].encode()].startswith("not JSON")
    assert "missing fields" in by_raw[JUNK_FRAMES[1].encode()]
    assert [dict(m.headers())[DLQ_REASON_HEADER].decode() for m in dead] == [r["reason"] for r in records]
    assert stats.not_json == 1


def test_message_key_value_and_timestamp_are_symbol_fields_as_sent_and_event_time(broker, kafka_env):
    with SimulatorThread(SimulatorOptions(symbols=5, interval=0.05)) as sim:
        with ProducerThread(producer_settings(kafka_env, sim.url())) as producer:
            wait_for(lambda: producer.stats.published >= 30, what="events published")
        sent = {key_of(e): e for e in sim.sent_events}
    messages = read_topic(broker, kafka_env["KAFKA_TOPIC"])
    assert len(messages) == len(sent)
    assert {m.partition() for m in messages} == {0, 1, 2}  # created with KAFKA_TOPIC_PARTITIONS=3
    for message in messages:
        event = orjson.loads(message.value())
        original = sent[key_of(event)]
        assert message.key() == original["s"].encode("utf-8")
        assert message.value() == orjson.dumps(original)  # same fields, same order, strings kept
        assert message.timestamp() == (TIMESTAMP_CREATE_TIME, original["E"])


def test_symbol_subscriptions_over_several_connections_with_subscribe_frames(broker, kafka_env):
    with SimulatorThread(SimulatorOptions(symbols=12, interval=0.05)) as sim:
        chosen = sim.symbols[:5]
        settings = producer_settings(kafka_env, sim.url(), BINANCE_SYMBOLS=",".join(chosen))
        # Limits shrunk so five symbols need two connections, one of them with
        # streams both in its URL and in a paced SUBSCRIBE frame.
        plans = plan_connections(settings.websocket_url, settings.symbols, max_streams=3, per_message=2)
        assert [len(p.subscribe) for p in plans] == [1, 0]
        with ProducerThread(settings, plans) as producer:
            wait_for(lambda: producer.stats.answers == 1, what="the SUBSCRIBE answer")
            wait_for(lambda: {e["s"] for e in sim.sent_events[-40:]} == set(chosen), what="all five symbols")
            wait_for(keeps_flowing(producer), what="more events")
        assert producer.stats.connections == 2
    assert {s for s, _ in sim.sent_keys()} == set(chosen)
    assert_sent_exactly_once(sim, broker, kafka_env["KAFKA_TOPIC"])


def test_subscribe_frames_are_paced_under_the_exchanges_message_limit(broker, kafka_env):
    # The simulator, like Binance, closes a connection (1008) that sends more than five
    # messages in a second. Eight SUBSCRIBE frames on one connection all get their answer
    # and the connection is never closed only if the producer spaces them out.
    with SimulatorThread(SimulatorOptions(symbols=12, interval=0.05)) as sim:
        chosen = sim.symbols[:9]
        settings = producer_settings(kafka_env, sim.url(), BINANCE_SYMBOLS=",".join(chosen))
        plans = plan_connections(settings.websocket_url, settings.symbols, per_message=1)
        assert [len(p.subscribe) for p in plans] == [8]
        with ProducerThread(settings, plans) as producer:
            wait_for(lambda: producer.stats.answers == 8, what="all eight SUBSCRIBE answers")
            wait_for(lambda: {e["s"] for e in sim.sent_events[-60:]} == set(chosen), what="all nine symbols")
        assert producer.stats.connections == 1
    assert_sent_exactly_once(sim, broker, kafka_env["KAFKA_TOPIC"])


def test_connections_are_renewed_before_their_maximum_age_without_losing_events(broker, kafka_env):
    with SimulatorThread(SimulatorOptions(symbols=10, interval=0.05)) as sim:
        settings = producer_settings(kafka_env, sim.url(), PRODUCER_MAX_CONNECTION_AGE="0.6")
        with ProducerThread(settings) as producer:
            wait_for(lambda: producer.stats.connections >= 4, what="three renewals")
        assert producer.stats.stale == 0 and producer.exit_code == 0
    assert_sent_exactly_once(sim, broker, kafka_env["KAFKA_TOPIC"])


@pytest.mark.parametrize("where", ["nothing listening", "handshake refused"])
def test_unreachable_websocket_is_retried_without_logging_the_url(kafka_env, unique, caplog, where):
    token = f"listenKey-{unique}"
    with SimulatorThread(SimulatorOptions(symbols=2)) as sim:
        base = (
            f"ws://127.0.0.1:{free_port()}/ws/!miniTicker@arr"
            if where == "nothing listening"
            else sim.url("nosuchstream@nosuchtype")
        )  # the simulator answers HTTP 400
        settings = producer_settings(kafka_env, f"{base}?{token}=1", PRODUCER_RECONNECT_MAX_DELAY="0.2")
        with caplog.at_level("DEBUG"), ProducerThread(settings) as producer:
            wait_for(lambda: producer.stats.reconnects >= 3, what="reconnect attempts")
            assert producer.stop(timeout=15) == 0
    assert producer.stats.connections == 0 and producer.stats.events == 0
    # The simulator (the server side, same process) logs request lines; the producer must not.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("producer"))
    assert ("retrying in" if where == "handshake refused" else "reconnecting in") in logged
    assert token not in logged and "nosuchstream" not in logged


def test_handshake_refused_by_the_exchange_is_an_error_retried_after_the_whole_cap(kafka_env, caplog):
    """An HTTP 400 (here: an unknown stream) will not pass by retrying fast: the log says
    what to check, and the attempts are spaced by PRODUCER_RECONNECT_MAX_DELAY, not by a
    backoff starting under half a second."""
    cap = 1.0
    with SimulatorThread(SimulatorOptions(symbols=2)) as sim:
        url = sim.url("nosuchstream@nosuchtype")  # the simulator answers HTTP 400
        host = f"ws://127.0.0.1:{sim.port}/…"
        settings = producer_settings(kafka_env, url, PRODUCER_RECONNECT_MAX_DELAY=f"{cap:g}")
        with caplog.at_level(logging.INFO, logger="producer"), ProducerThread(settings) as producer:
            wait_for(lambda: producer.stats.reconnects >= 3, what="three refused attempts")
            assert producer.stop(timeout=15) == 0
    refusals = [r for r in caplog.records if r.name == "producer" and "refused the connection" in r.getMessage()]
    assert len(refusals) >= 3
    assert {r.levelno for r in refusals} == {logging.ERROR}
    assert refusals[0].getMessage() == (
        f"{host}: the exchange refused the connection: HTTP 400 Bad Request; "
        f"check BINANCE_WEBSOCKET_URL / BINANCE_SYMBOLS; retrying in {cap:.1f} s"
    )
    gaps = [later.created - earlier.created for earlier, later in itertools.pairwise(refusals)]
    assert min(gaps) >= 0.9 * cap, f"attempts {gaps} s apart: not waiting the cap"


def test_stop_requested_while_starting_exits_zero(kafka_env):
    with (
        SimulatorThread(SimulatorOptions(symbols=2, interval=5)) as sim,
        ProducerThread(producer_settings(kafka_env, sim.url())) as producer,
    ):
        assert producer.stop(timeout=15) == 0


def test_oversized_junk_frame_is_dead_lettered_truncated_not_refused(broker, kafka_env):
    settings = producer_settings(kafka_env, "ws://127.0.0.1:1/ws/x")
    ensure_topics(settings.kafka, timeout=10)
    raw = b"x" * (DLQ_MAX_RAW_BYTES + 1000)

    async def publish_one() -> tuple[int, Stats]:
        stats = Stats(invalid=1)
        publisher = Publisher(settings.kafka, stats)
        await publisher.dead_letter("not JSON: huge", raw)
        return await publisher.flush(15), stats

    left, stats = asyncio.run(publish_one())
    assert left == 0 and stats.dead_lettered == 1 and stats.delivery_failures == 0
    [message] = read_topic(broker, settings.kafka.dlq_topic)
    record = orjson.loads(message.value())
    assert record["reason"] == f"not JSON: huge [raw truncated to {DLQ_MAX_RAW_BYTES} of {len(raw)} bytes]"
    assert original_bytes(record) == raw[:DLQ_MAX_RAW_BYTES]


def test_existing_topics_are_left_as_they_are(broker, kafka_env):
    topic = kafka_env["KAFKA_TOPIC"]
    config = {"retention.ms": "3600000", "retention.bytes": "-1", "cleanup.policy": "delete"}
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1, config=config) for name in (topic, topic + ".dlq")]
    ).values():
        future.result()
    with (
        SimulatorThread(SimulatorOptions(symbols=5, interval=0.05)) as sim,
        ProducerThread(producer_settings(kafka_env, sim.url())) as producer,
    ):
        wait_for(lambda: producer.stats.published >= 20, what="events published")
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 1
    assert_sent_exactly_once(sim, broker, topic)


def test_a_full_local_queue_makes_publishing_wait_and_loses_nothing(broker, kafka_env):
    # librdkafka's queue holds 5 messages here; 300 events overrun it many times over.
    settings = producer_settings(kafka_env, "ws://127.0.0.1:1/ws/x")
    ensure_topics(settings.kafka, timeout=10)
    events = []
    for n in range(300):
        event = validate(ticker(n, symbol=f"SYM{n % 7}"))
        assert isinstance(event, MiniTicker)
        events.append((event.to_json(), event.symbol.encode(), event.event_time))

    async def publish_all() -> tuple[int, Stats]:
        stats = Stats()
        publisher = Publisher(settings.kafka, stats, config={"queue.buffering.max.messages": 5})
        serving = asyncio.create_task(publisher.serve())
        try:
            await publisher.publish(events)
            return await publisher.flush(15), stats
        finally:
            serving.cancel()

    left, stats = asyncio.run(publish_all())
    assert stats.queue_full > 0, "the queue never filled: the test did not test anything"
    assert left == 0 and stats.delivery_failures == 0
    expected = [(key.decode(), timestamp) for _, key, timestamp in events]
    assert_exactly_once(published_keys(broker, settings.kafka.topic), expected)
