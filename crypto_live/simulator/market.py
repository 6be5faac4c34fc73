"""Pure market model: a seeded random walk that emits Binance miniTicker events.

Contract:

* ``initial_state(symbols, seed)`` builds a market of ``symbols`` instruments.
* ``step(state, now_ms)`` returns ``(next_state, events)``; it is a pure function
  of its arguments (the random generator's state lives inside ``MarketState``),
  so the same seed and the same sequence of clock readings give the same events.
* ``events`` holds one ``24hrMiniTicker`` dict per symbol that changed in this
  tick (Binance's all-market stream only carries changed tickers), in symbol order.
* Prices and volumes are kept as integers in units of 1e-8 and rendered as
  decimal strings with exactly 8 decimals, like Binance does; never floats.
* Per symbol, ``E`` is strictly increasing across ticks, so ``(s, E)`` is unique
  for every event the model ever emits, even if the clock stalls or goes back.
* 24 h fields stay consistent: ``l <= o <= h``, ``l <= c <= h``, volumes are
  non-negative and ``q`` is the sum of per-trade ``volume x price``.  The window
  never rolls: ``o`` is the price at start-up (good enough for a simulator).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

SCALE = 10**8  # Binance renders spot prices and volumes with 8 decimals.

# Real pairs first so small simulations look familiar; prices are rough levels.
KNOWN_SYMBOLS: tuple[tuple[str, str], ...] = (
    ("BTCUSDT", "65000"),
    ("ETHUSDT", "3200"),
    ("BNBUSDT", "580"),
    ("SOLUSDT", "150"),
    ("XRPUSDT", "0.52"),
    ("DOGEUSDT", "0.12"),
    ("ADAUSDT", "0.45"),
    ("TRXUSDT", "0.12"),
    ("AVAXUSDT", "35"),
    ("LINKUSDT", "14"),
    ("DOTUSDT", "7"),
    ("LTCUSDT", "80"),
    ("BCHUSDT", "450"),
    ("UNIUSDT", "9"),
    ("ATOMUSDT", "8"),
    ("XLMUSDT", "0.11"),
    ("ETCUSDT", "25"),
    ("FILUSDT", "5"),
    ("NEARUSDT", "6"),
    ("SHIBUSDT", "0.00002"),
)


@dataclass(frozen=True, slots=True)
class SymbolState:
    """One instrument; all money fields are integers in units of 1e-8."""

    symbol: str
    open: int
    high: int
    low: int
    close: int
    volume: int
    quote_volume: int
    tick: int = 1  # price increment; every price is a multiple of it
    lot: int = 1  # quantity increment of a single trade
    last_event_ms: int = 0


@dataclass(frozen=True, slots=True)
class MarketState:
    """The whole market, including the random generator's state (for purity)."""

    seed: int
    symbols: tuple[SymbolState, ...]
    rng_state: tuple[Any, ...]
    ticks: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.symbol for s in self.symbols)


def symbol_names(count: int) -> tuple[str, ...]:
    """The first ``count`` symbol names: known pairs, then ``SYM0020USDT``...

    Synthetic names are numbered by position, so they never collide with the
    known ones and stay stable when ``count`` grows.
    """
    if count < 1:
        raise ValueError(f"need at least one symbol, got {count}")
    known = [name for name, _ in KNOWN_SYMBOLS[:count]]
    synthetic = [f"SYM{i:04d}USDT" for i in range(len(KNOWN_SYMBOLS), count)]
    return tuple(known + synthetic)


def parse_units(text: str) -> int:
    """Parse a non-negative decimal string into 1e-8 units (exact, no floats)."""
    whole, _, frac = text.partition(".")
    if len(frac) > 8 or not (whole + frac).isdigit():
        raise ValueError(f"not a decimal with at most 8 decimals: {text!r}")
    return int(whole or "0") * SCALE + int(frac.ljust(8, "0"))


def format_units(units: int) -> str:
    """Render 1e-8 units the way Binance does: ``"0.00123000"``."""
    if units < 0:
        raise ValueError(f"negative amount: {units}")
    return f"{units // SCALE}.{units % SCALE:08d}"


def _magnitude(units: int) -> int:
    """floor(log10(units)) for positive integers, without float rounding."""
    return len(str(units)) - 1


def tick_size(price: int) -> int:
    """A Binance-like price increment: ~5 significant digits, 0.01 at most."""
    increment: int = 10 ** max(0, _magnitude(price) - 4)  # annotated: int ** int is typed Any
    return min(10**6, increment)


def lot_size(price: int) -> int:
    """A Binance-like quantity increment: coarser for cheap coins (1e-5 for BTC)."""
    increment: int = 10 ** max(0, 15 - _magnitude(price))
    return min(SCALE, increment)


def initial_state(symbols: int, seed: int) -> MarketState:
    """A fresh market of ``symbols`` instruments; deterministic in ``seed``."""
    rng = random.Random(seed)
    known = dict(KNOWN_SYMBOLS)
    states = []
    for name in symbol_names(symbols):
        # Unknown symbols get a log-uniform spread of synthetic prices between 0.01 and 1000.
        price = parse_units(known[name]) if name in known else max(1, round(10 ** rng.uniform(-2, 3) * SCALE))
        tick = tick_size(price)
        price = max(tick, price - price % tick)
        lot = lot_size(price)
        # Start with some 24 h history so volumes look like a live market.
        quote = round(rng.uniform(1e5, 5e7) * SCALE)
        volume = max(lot, quote * SCALE // price // lot * lot)
        states.append(
            SymbolState(
                symbol=name,
                open=price,
                high=price,
                low=price,
                close=price,
                volume=volume,
                quote_volume=volume * price // SCALE,
                tick=tick,
                lot=lot,
            )
        )
    return MarketState(seed=seed, symbols=tuple(states), rng_state=rng.getstate())


def mini_ticker(state: SymbolState) -> dict[str, Any]:
    """The miniTicker payload for one symbol, keys in Binance's order."""
    return {
        "e": "24hrMiniTicker",
        "E": state.last_event_ms,
        "s": state.symbol,
        "c": format_units(state.close),
        "o": format_units(state.open),
        "h": format_units(state.high),
        "l": format_units(state.low),
        "v": format_units(state.volume),
        "q": format_units(state.quote_volume),
    }


def _trade(rng: random.Random, sym: SymbolState, now_ms: int, volatility: float) -> SymbolState:
    moved = round(sym.close * (1.0 + rng.gauss(0.0, volatility)) / sym.tick)
    close = max(1, moved) * sym.tick
    # A trade of random notional at the new price; q grows by exactly v x price.
    notional = round(rng.uniform(10.0, 50_000.0) * SCALE)
    base = max(1, notional * SCALE // close // sym.lot) * sym.lot
    return replace(
        sym,
        close=close,
        high=max(sym.high, close),
        low=min(sym.low, close),
        volume=sym.volume + base,
        quote_volume=sym.quote_volume + base * close // SCALE,
        # max(): a stalled or stepped-back clock must not repeat (s, E).
        last_event_ms=max(now_ms, sym.last_event_ms + 1),
    )


def step(
    state: MarketState,
    now_ms: int,
    *,
    change_probability: float = 0.7,
    volatility: float = 0.002,
) -> tuple[MarketState, tuple[dict[str, Any], ...]]:
    """Advance the market one tick at wall time ``now_ms``.

    Each symbol changes with ``change_probability``; at least one always does,
    so every tick yields a non-empty event tuple.  ``volatility`` is the
    standard deviation of the relative price move per change.
    """
    rng = random.Random()
    rng.setstate(state.rng_state)
    symbols = list(state.symbols)
    changed = [i for i in range(len(symbols)) if rng.random() < change_probability]
    if not changed:
        changed = [rng.randrange(len(symbols))]
    for i in changed:
        symbols[i] = _trade(rng, symbols[i], now_ms, volatility)
    next_state = replace(state, symbols=tuple(symbols), rng_state=rng.getstate(), ticks=state.ticks + 1)
    return next_state, tuple(mini_ticker(symbols[i]) for i in changed)
