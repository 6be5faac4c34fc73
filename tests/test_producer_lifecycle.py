"""When the producer leaves a websocket connection and how soon it connects again: the
pure state machine alone, on a made-up clock (seconds from 0)."""

from __future__ import annotations

import pytest

from crypto_live.backoff import Backoff
from producer.lifecycle import Cause, Leaving, Lifecycle

STALE_AFTER = 30.0
MAX_AGE = 1000.0
CAP = 60.0
#: A backoff without jitter, so delays can be compared exactly.
DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)


def lifecycle(**overrides: float) -> Lifecycle:
    limits = {"stale_after": STALE_AFTER, "max_age": MAX_AGE, "reconnect_cap": CAP, **overrides}
    return Lifecycle(**limits, backoff=Backoff(lambda: iter(DELAYS)))


def opened_at(now: float = 0.0, **overrides: float) -> Lifecycle:
    machine = lifecycle(**overrides)
    assert machine.opened(now) is None
    return machine


def drop(machine: Lifecycle, now: float, why: str = "received 1006") -> float | None:
    """The other side drops a fresh connection at once; the wait before the next one."""
    machine.opened(now)
    return machine.reconnect_delay(machine.closed(why))


# --------------------------------------------------------------------------- stale stream


def test_no_events_for_stale_after_seconds_leaves_the_connection_even_if_control_answers_arrive():
    machine = opened_at(0.0)
    assert machine.deadline == STALE_AFTER
    for now in (5.0, 15.0, 25.0):  # SUBSCRIBE answers: frames, but no market data
        assert machine.frame(now, had_events=False) is None
    assert machine.deadline == STALE_AFTER
    leaving = machine.timed_out(STALE_AFTER)
    assert leaving == Leaving("no data for 30 s (stale stream)", Cause.STALE)
    assert not leaving.immediate
    assert machine.reconnect_delay(machine.closed("sent 1000 (OK)")) == DELAYS[0]


def test_events_push_the_stale_deadline_back():
    machine = opened_at(0.0)
    assert machine.frame(20.0, had_events=True) is None
    assert machine.deadline == 20.0 + STALE_AFTER
    assert machine.timed_out(STALE_AFTER) is None  # not stale: an event came at 20 s
    assert machine.timed_out(20.0 + STALE_AFTER).cause is Cause.STALE


# --------------------------------------------------------------------------- leaving on purpose


def test_max_age_reconnects_immediately_however_lively_the_stream():
    machine = opened_at(0.0, max_age=100.0)
    for now in range(10, 100, 10):
        machine.frame(float(now), had_events=True)
    assert machine.deadline == 100.0
    leaving = machine.timed_out(100.0)
    assert leaving == Leaving("connection is 100 s old", Cause.MAX_AGE)
    assert leaving.immediate
    assert machine.reconnect_delay(machine.closed("sent 1000 (OK)")) == 0.0
    assert machine.backoff.failures == 0  # a planned renewal is no failure


def test_server_shutdown_reconnects_immediately():
    machine = opened_at(0.0)
    leaving = machine.frame(3.0, had_events=False, server_shutdown=True)
    assert leaving == Leaving("serverShutdown received", Cause.SERVER_SHUTDOWN)
    assert machine.reconnect_delay(machine.closed("received 1001 (going away)")) == 0.0


def test_a_connection_dropped_by_the_other_side_backs_off():
    machine = opened_at(0.0)
    leaving = machine.closed("received 1006 (abnormal closure)")
    assert leaving == Leaving("connection closed: received 1006 (abnormal closure)", Cause.CLOSED)
    assert machine.reconnect_delay(leaving) == DELAYS[0]


def test_while_the_connection_closes_there_is_no_receive_deadline():
    """The close handshake is bounded by websockets' close timeout, and the frames still
    in transit must be read, however long after the stale deadline they come."""
    machine = opened_at(0.0)
    machine.frame(1.0, had_events=False, server_shutdown=True)
    assert machine.deadline is None


# --------------------------------------------------------------------------- first reason, stop


def test_the_first_reason_is_kept():
    machine = opened_at(0.0)
    first = machine.frame(2.0, had_events=True, server_shutdown=True)
    assert first is not None
    # Later reasons are not decisions: the shell must not count or close twice.
    assert machine.frame(3.0, had_events=False, server_shutdown=True) is None
    assert machine.timed_out(MAX_AGE) is None
    assert machine.closed("received 1001 (going away)") == first


def test_stop_leaves_the_open_connection_and_never_reconnects():
    machine = opened_at(0.0)
    leaving = machine.stop_requested()
    assert leaving is not None and leaving.cause is Cause.STOP
    assert machine.deadline is None
    assert machine.reconnect_delay(machine.closed("sent 1000 (OK)")) is None


@pytest.mark.parametrize("reason", ["serverShutdown", "max age", "stale"])
def test_stop_wins_over_a_reason_already_given(reason):
    machine = opened_at(0.0, max_age=50.0)
    if reason == "serverShutdown":
        machine.frame(1.0, had_events=False, server_shutdown=True)
    else:
        machine.timed_out(50.0 if reason == "max age" else STALE_AFTER)
    assert machine.stop_requested() is None  # already leaving: nothing more to close
    leaving = machine.closed("sent 1000 (OK)")
    assert leaving.cause is not Cause.STOP  # the log says why the connection was left
    assert machine.reconnect_delay(leaving) is None


def test_stop_while_connecting_leaves_the_connection_as_soon_as_it_opens():
    machine = lifecycle()
    assert machine.stop_requested() is None  # nothing open to close yet
    leaving = machine.opened(5.0)
    assert leaving is not None and leaving.cause is Cause.STOP
    assert machine.reconnect_delay(machine.closed("sent 1000 (OK)")) is None


def test_stop_after_a_failed_attempt_means_no_retry():
    machine = lifecycle()
    leaving = machine.failed("ConnectionRefusedError: [Errno 111] Connection refused")
    machine.stop_requested()
    assert machine.reconnect_delay(leaving) is None


def test_a_new_connection_starts_with_a_clean_slate():
    machine = opened_at(0.0)
    machine.timed_out(STALE_AFTER)
    machine.closed("sent 1000 (OK)")
    assert machine.opened(100.0) is None
    assert machine.deadline == 100.0 + STALE_AFTER
    assert machine.frame(101.0, had_events=False, server_shutdown=True) is not None


# --------------------------------------------------------------------------- backoff


def test_connections_that_bring_no_data_back_off_more_each_time():
    machine = lifecycle()
    assert [drop(machine, float(t)) for t in range(4)] == list(DELAYS[:4])


def test_data_resets_the_backoff_but_control_answers_do_not():
    machine = lifecycle()
    drop(machine, 0.0)
    drop(machine, 1.0)
    machine.opened(2.0)
    machine.frame(2.5, had_events=False)  # a SUBSCRIBE answer
    assert machine.reconnect_delay(machine.closed("received 1006")) == DELAYS[2]
    machine.opened(10.0)
    machine.frame(10.5, had_events=True)
    assert machine.reconnect_delay(machine.closed("received 1006")) == DELAYS[0]


def test_default_backoff_starts_under_half_a_second_and_stays_under_the_cap():
    machine = Lifecycle(stale_after=STALE_AFTER, max_age=MAX_AGE, reconnect_cap=8.0)
    delays = [machine.reconnect_delay(machine.failed("TimeoutError")) for _ in range(30)]
    assert 0 <= delays[0] < 0.5
    assert all(d is not None and 0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 20  # jittered, not in step with other producers


# --------------------------------------------------------------------------- failed handshakes


def test_handshake_refused_with_4xx_waits_the_whole_cap_every_time():
    machine = lifecycle()
    leaving = machine.failed("InvalidStatus: server rejected WebSocket connection: HTTP 400", status=400)
    assert leaving.cause is Cause.REFUSED and not leaving.immediate
    assert leaving.why == (
        "the exchange refused the connection: HTTP 400 Bad Request; check BINANCE_WEBSOCKET_URL / BINANCE_SYMBOLS"
    )
    assert [machine.reconnect_delay(leaving) for _ in range(3)] == [CAP, CAP, CAP]


def test_refusal_text_comes_from_the_status_alone_never_from_the_server():
    """What the server says may quote the requested path, and with it a secret."""
    leaving = lifecycle().failed("Invalid stream name: 'listenKey-s3cr3t@miniTicker'", status=404)
    assert leaving.why.startswith("the exchange refused the connection: HTTP 404 Not Found;")
    assert "s3cr3t" not in leaving.why


@pytest.mark.parametrize("status", [429, 418])
def test_rate_limit_refusals_say_so_and_wait_the_cap(status):
    machine = lifecycle()
    leaving = machine.failed("rejected", status=status)
    assert leaving.cause is Cause.REFUSED
    assert f"HTTP {status}" in leaving.why and "IP" in leaving.why and "BINANCE_SYMBOLS" not in leaving.why
    assert machine.reconnect_delay(leaving) == CAP


@pytest.mark.parametrize(
    "why, status",
    [
        ("InvalidStatus: server rejected WebSocket connection: HTTP 503", 503),
        ("InvalidStatus: server rejected WebSocket connection: HTTP 302", 302),
        ("ConnectionRefusedError: [Errno 111] Connection refused", None),
        ("TimeoutError: timed out during opening handshake", None),
    ],
)
def test_network_errors_and_5xx_back_off_from_the_start(why, status):
    machine = lifecycle()
    leaving = machine.failed(why, status)
    assert leaving == Leaving(why, Cause.UNREACHABLE)
    assert [machine.reconnect_delay(leaving) for _ in range(3)] == list(DELAYS[:3])


def test_a_refusal_does_not_advance_the_normal_backoff():
    machine = lifecycle()
    machine.reconnect_delay(machine.failed("HTTP 400", status=400))
    assert machine.reconnect_delay(machine.failed("TimeoutError")) == DELAYS[0]
