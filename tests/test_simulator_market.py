"""Unit tests for the pure market model (no I/O)."""

import re
from decimal import Decimal

import pytest

from crypto_live.simulator import market

DECIMAL_8 = re.compile(r"^\d+\.\d{8}$")
KEYS = ["e", "E", "s", "c", "o", "h", "l", "v", "q"]


def run_ticks(state, clock_ms):
    """Step through the given clock readings; return final state and all events."""
    events = []
    for now in clock_ms:
        state, tick = market.step(state, now)
        events.extend(tick)
    return state, events


def test_symbol_names_known_then_synthetic():
    assert market.symbol_names(3) == ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    names = market.symbol_names(45)
    assert len(set(names)) == 45
    assert names[len(market.KNOWN_SYMBOLS)] == "SYM0020USDT"
    assert names[42] == "SYM0042USDT"
    assert all(n == n.upper() and n.endswith("USDT") for n in names)


def test_symbol_names_rejects_zero():
    with pytest.raises(ValueError):
        market.symbol_names(0)


@pytest.mark.parametrize(
    ("units", "text"),
    [(123_000, "0.00123000"), (65_000 * market.SCALE, "65000.00000000"), (0, "0.00000000")],
)
def test_format_and_parse_units_round_trip(units, text):
    assert market.format_units(units) == text
    assert market.parse_units(text) == units


def test_format_units_rejects_negative():
    with pytest.raises(ValueError):
        market.format_units(-1)


def test_same_seed_and_clock_give_same_events():
    clock = [1_000 * i for i in range(1, 30)]
    _, first = run_ticks(market.initial_state(30, seed=42), clock)
    _, second = run_ticks(market.initial_state(30, seed=42), clock)
    _, other = run_ticks(market.initial_state(30, seed=43), clock)
    assert first == second
    assert first != other


def test_step_is_pure():
    state = market.initial_state(10, seed=1)
    before = state
    a = market.step(state, 5_000)
    b = market.step(state, 5_000)
    assert a == b
    assert state == before


def test_event_shape_matches_binance_mini_ticker():
    _, events = market.step(market.initial_state(20, seed=3), 1_700_000_000_123)
    assert events
    for event in events:
        assert list(event) == KEYS
        assert event["e"] == "24hrMiniTicker"
        assert event["E"] == 1_700_000_000_123
        assert isinstance(event["E"], int)
        for key in "cohlvq":
            assert isinstance(event[key], str) and DECIMAL_8.match(event[key]), event


def test_24h_fields_stay_consistent():
    state, events = run_ticks(market.initial_state(40, seed=9), range(1, 400))
    assert len(events) > 1_000
    trades_per_symbol = state.ticks  # upper bound on rounding steps in q
    for e in events:
        open_, high, low, close = (Decimal(e[k]) for k in "ohlc")
        volume, quote = Decimal(e["v"]), Decimal(e["q"])
        assert low <= open_ <= high and low <= close <= high, e
        assert low > 0 and volume > 0 and quote > 0, e
        # q is a sum of trade volume x trade price, each price within [low, high].
        slack = Decimal(trades_per_symbol) / market.SCALE
        assert low * volume - slack <= quote <= high * volume, e


def test_prices_sit_on_the_symbol_tick():
    state, _ = run_ticks(market.initial_state(30, seed=5), range(1, 50))
    for sym in state.symbols:
        for price in (sym.open, sym.high, sym.low, sym.close):
            assert price % sym.tick == 0, sym
        assert sym.volume % sym.lot == 0, sym


def test_volumes_never_decrease():
    state = market.initial_state(15, seed=2)
    previous = {s.symbol: (s.volume, s.quote_volume) for s in state.symbols}
    for now in range(1, 60):
        state, _ = market.step(state, now)
        for s in state.symbols:
            assert (s.volume, s.quote_volume) >= previous[s.symbol]
            previous[s.symbol] = (s.volume, s.quote_volume)


def test_event_time_is_strictly_increasing_even_if_clock_stalls_or_goes_back():
    clock = [1_000, 1_000, 1_000, 999, 500, 1_001, 1_001]
    _, events = run_ticks(market.initial_state(25, seed=11), clock)
    last = {}
    for e in events:
        assert e["E"] > last.get(e["s"], 0), e
        last[e["s"]] = e["E"]
    keys = [(e["s"], e["E"]) for e in events]
    assert len(keys) == len(set(keys))


def test_event_time_follows_an_advancing_clock():
    _, events = run_ticks(market.initial_state(5, seed=4), [10_000, 20_000, 30_000])
    assert {e["E"] for e in events} == {10_000, 20_000, 30_000}


def test_only_changed_symbols_are_reported():
    state = market.initial_state(50, seed=8)
    _, none_changed = market.step(state, 1, change_probability=0.0)
    _, all_changed = market.step(state, 1, change_probability=1.0)
    assert len(none_changed) == 1  # a tick always moves at least one symbol
    assert [e["s"] for e in all_changed] == list(state.names)
    _, some = market.step(state, 1)
    assert 0 < len(some) < 50
