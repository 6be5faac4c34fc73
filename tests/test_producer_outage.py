"""A broker that is down at start-up or mid-stream: the producer keeps reading, buffers,
and delivers everything once the broker is back.

Each test owns a private Tansu broker on a fixed port, stopped and started again on
that port. Tansu keeps data in memory only, so a restarted broker is empty: the
producer has to create the topics again, and what the old broker had acknowledged is
gone with it. "Loses nothing" therefore means: every event read from the moment the
broker went down arrives in the new broker, exactly once, with no delivery failure.

Outages last PRODUCER_TEST_OUTAGE seconds (default 4); one test uses the real 30 s.
"""

from __future__ import annotations

import os
import time

import pytest

from crypto_live.embedded import EmbeddedBroker, free_port
from crypto_live.settings import ProducerSettings, load
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from producer.inprocess import ProducerThread
from tests.factories import assert_exactly_once, key_of
from tests.helpers import wait_for
from tests.producer_helpers import published_keys

OUTAGE = float(os.environ.get("PRODUCER_TEST_OUTAGE", "4"))


def settings_for(port: int, topic: str, url: str) -> ProducerSettings:
    return load(
        ProducerSettings,
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "KAFKA_TOPIC": topic,
            "BINANCE_WEBSOCKET_URL": url,
            "PRODUCER_STATS_INTERVAL": "2",
            "PRODUCER_SHUTDOWN_TIMEOUT": "20",
        },
    )


def fast_pinging_simulator() -> SimulatorThread:
    # Pings every 0.5 s, dropping a client silent for 2 s: a producer whose event loop
    # blocked on Kafka while the broker is away would be cut off and reconnect.
    return SimulatorThread(SimulatorOptions(symbols=10, interval=0.05, ping_interval=0.5, ping_timeout=2.0))


@pytest.mark.parametrize("outage", [OUTAGE, 30.0], ids=["short", "30s"])
def test_broker_down_at_start_up_loses_nothing_once_it_is_up(unique, outage):
    port = free_port()
    topic = f"outage-start-{unique}"
    with fast_pinging_simulator() as sim, ProducerThread(settings_for(port, topic, sim.url())) as producer:
        stats = producer.stats
        wait_for(lambda: stats.events >= 20, what="events read while the broker is down")
        time.sleep(outage)  # the outage itself: nothing to wait for but time
        assert stats.published == 0
        read_during_outage = stats.events
        broker = EmbeddedBroker(port=port).start()
        try:
            wait_for(lambda: stats.published >= read_during_outage, timeout=30, what="the backlog delivered")
            assert producer.stop() == 0
            got = published_keys(broker.bootstrap_servers, topic)
        finally:
            broker.kill()  # memory only: nothing to shut down cleanly (stop() waits for clients)
    assert sim.connections_accepted == 1, "the websocket was dropped while Kafka was away"
    assert_exactly_once(got, sim.sent_keys())
    assert stats.delivery_failures == 0


def test_broker_lost_mid_stream_delivers_everything_read_since(unique):
    port = free_port()
    topic = f"outage-mid-{unique}"
    broker = EmbeddedBroker(port=port).start()
    try:
        with fast_pinging_simulator() as sim:
            with ProducerThread(settings_for(port, topic, sim.url())) as producer:
                stats = producer.stats
                wait_for(lambda: stats.published >= 50, what="events published before the outage")
                broker.kill()
                since = len(sim.sent_events)  # everything sent from here on must survive
                time.sleep(OUTAGE)
                read_during_outage = stats.events
                broker = EmbeddedBroker(port=port).start()  # empty: memory only
                wait_for(lambda: stats.producer_resets >= 1, timeout=30, what="producer rebuilt for the new broker")
                wait_for(lambda: stats.published >= read_during_outage, timeout=30, what="backlog delivered")
                assert producer.stop() == 0
            must_arrive = {key_of(e) for e in sim.sent_events[since:]}
            got = published_keys(broker.bootstrap_servers, topic)
    finally:
        broker.kill()
    assert must_arrive and len(got) == len(set(got)), "an event was published twice"
    assert must_arrive <= set(got), f"{len(must_arrive - set(got))} events read during or after the outage are missing"
    assert set(got) <= sim.sent_keys()
    assert sim.connections_accepted == 1
    assert stats.delivery_failures == 0
