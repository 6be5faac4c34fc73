"""The miniTicker validator: valid events pass untouched, anything else gets a reason."""

from __future__ import annotations

import orjson
import pytest

from crypto_live.event import Invalid, MiniTicker, decode, validate

GOOD = {
    "e": "24hrMiniTicker",
    "E": 1672515782136,
    "s": "BNBBTC",
    "c": "0.00250000",
    "o": "0.00100000",
    "h": "0.00250000",
    "l": "0.00100000",
    "v": "10000.00000000",
    "q": "18",
}


def test_valid_event_keeps_its_fields_and_decimal_strings_exactly():
    result = validate(dict(GOOD))
    assert isinstance(result, MiniTicker)
    assert result.symbol == "BNBBTC" and result.event_time == 1672515782136
    assert orjson.loads(result.to_json()) == GOOD
    assert result.to_json() == orjson.dumps(GOOD)  # same order, no float round-trip


def test_decode_preserves_decimal_digits_that_a_float_would_lose():
    raw = orjson.dumps({**GOOD, "c": "0.10000000000000000555"})
    result = decode(raw)
    assert isinstance(result, MiniTicker)
    assert result.fields["c"] == "0.10000000000000000555"


def test_extra_fields_are_kept():
    result = validate({**GOOD, "x": 1})
    assert isinstance(result, MiniTicker) and result.fields["x"] == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("c"), "missing field 'c'"),
        (lambda d: (d.pop("c"), d.pop("q")), "missing fields 'c', 'q'"),
        (lambda d: d.update(e="24hrTicker"), "field 'e' is '24hrTicker'"),
        (lambda d: d.update(E="1672515782136"), "field 'E' is a string"),
        (lambda d: d.update(E=1672515782.136), "field 'E' is a number 1672515782.136, expected an integer"),
        (lambda d: d.update(E=True), "field 'E' is a boolean"),
        (lambda d: d.update(E=1672515782), "not an event time in milliseconds"),
        (lambda d: d.update(s="bnbbtc"), "field 's' is 'bnbbtc'"),
        (lambda d: d.update(s=None), "field 's' is None"),
        (lambda d: d.update(c=0.0025), "field 'c' (close price) is a number 0.0025, expected a decimal string"),
        (lambda d: d.update(h="NaN"), "field 'h' (high price) is 'NaN', expected a finite decimal string"),
        (lambda d: d.update(l="1e-3"), "field 'l' (low price) is '1e-3'"),
        (lambda d: d.update(v="-1.0"), "field 'v' (total traded base asset volume) is '-1.0'"),
        (lambda d: d.update(q=""), "field 'q' (total traded quote asset volume) is ''"),
        (lambda d: d.update(o="Infinity"), "field 'o' (open price) is 'Infinity'"),
    ],
)
def test_invalid_events_get_a_reason_naming_the_field(mutate, reason):
    event = dict(GOOD)
    mutate(event)
    result = validate(event)
    assert isinstance(result, Invalid)
    assert reason in result.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([GOOD], "expected a JSON object, got an array"),
        ("text", "expected a JSON object, got a string"),
        (None, "expected a JSON object, got null"),
    ],
)
def test_non_objects_are_invalid(payload, reason):
    assert validate(payload) == Invalid(reason)


def test_decode_reports_non_json():
    result = decode(b"}{not json")
    assert isinstance(result, Invalid) and result.reason.startswith("not JSON")
