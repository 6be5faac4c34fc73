"""Unit tests for the pure fault schedule."""

import json

import pytest

from crypto_live.simulator.faults import JUNK_FRAMES, Fault, FaultSchedule


def test_parse_example_spec():
    schedule = FaultSchedule.parse("drop@5,shutdown@12,junk@every3,stall@20for8")
    assert schedule.faults == (
        Fault("drop", 5.0),
        Fault("shutdown", 12.0),
        Fault("junk", 3.0, repeat=True),
        Fault("stall", 20.0, duration=8.0),
    )


def test_parse_tolerates_spaces_and_decimals_and_round_trips():
    schedule = FaultSchedule.parse(" drop@0.25 , stall@every1.5for0.5 ")
    assert schedule.faults == (Fault("drop", 0.25), Fault("stall", 1.5, True, 0.5))
    assert FaultSchedule.parse(str(schedule)) == schedule


@pytest.mark.parametrize("spec", ["", "   ", None])
def test_empty_spec_is_an_empty_falsy_schedule(spec):
    schedule = FaultSchedule.parse(spec)
    assert schedule == FaultSchedule()
    assert not schedule
    assert schedule.next_time(float("-inf")) is None


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("explode@5", "explode@5"),
        ("drop@5,drop", "drop"),
        ("drop@x", "drop@x"),
        ("stall@5", "stall@5"),  # a stall needs a duration
        ("drop@5for3", "drop@5for3"),  # only stalls take one
        ("junk@every0", "junk@every0"),
        ("junk@-1", "junk@-1"),
        ("drop@5,", ""),
        ("DROP@5", "DROP@5"),
        ("stall@1for0", "stall@1for0"),
    ],
)
def test_parse_errors_name_the_bad_token(spec, bad):
    with pytest.raises(ValueError, match=f"bad fault token '{bad}'"):
        FaultSchedule.parse(spec)


def test_due_selects_half_open_window_in_time_order():
    schedule = FaultSchedule.parse("shutdown@12,drop@5,junk@every3")
    assert schedule.due(float("-inf"), 4) == (Fault("junk", 3, True),)
    assert [f.kind for f in schedule.due(4, 12)] == ["drop", "junk", "junk", "shutdown", "junk"]
    assert schedule.due(5, 5.5) == ()  # drop@5 already happened at the window's start


def test_ties_keep_spec_order():
    schedule = FaultSchedule.parse("junk@6,drop@every3")
    assert [f.kind for f in schedule.due(5, 6)] == ["junk", "drop"]


def test_next_time_walks_the_schedule():
    schedule = FaultSchedule.parse("drop@5,junk@every3,stall@0for1")
    times = []
    t = float("-inf")
    for _ in range(5):
        t = schedule.next_time(t)
        times.append(t)
    assert times == [0.0, 3.0, 5.0, 6.0, 9.0]


def test_single_faults_end_and_repeats_do_not():
    assert FaultSchedule.parse("drop@5").next_time(5) is None
    assert FaultSchedule.parse("junk@every0.1").next_time(1000) == pytest.approx(1000.1)


def test_repeat_never_fires_at_zero():
    assert Fault("junk", 2, repeat=True).times_between(float("-inf"), 6.5) == [2, 4, 6]


def test_junk_frames_are_not_market_events():
    not_json, not_event = JUNK_FRAMES
    with pytest.raises(json.JSONDecodeError):
        json.loads(not_json)
    parsed = json.loads(not_event)
    assert isinstance(parsed, dict) and "e" not in parsed and "s" not in parsed
