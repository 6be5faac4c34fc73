"""Where the producer reads from: URL resolution (env or Secrets Manager) and stream plans."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import boto3
import orjson
import pytest

from crypto_live import binance
from crypto_live.binance import MAX_STREAMS_PER_CONNECTION, stream_name
from crypto_live.errors import SecretError, SettingsError
from crypto_live.settings import ProducerSettings, load
from crypto_live.simulator import protocol
from producer.source import (
    CONTROL_MESSAGES_PER_SECOND,
    STREAMS_PER_MESSAGE,
    plan_connections,
    resolve_url,
    url_from_secret_value,
)

URL = binance.LIVE_URL


def symbols(n: int) -> tuple[str, ...]:
    return tuple(f"SYM{i:04d}USDT" for i in range(n))


def streams_of(plan) -> list[str]:
    """Every stream a plan asks for: in its URL, then in its SUBSCRIBE frames."""
    query = parse_qs(urlsplit(plan.url).query)
    names = query["streams"][0].split("/") if "streams" in query else []
    for frame in plan.subscribe:
        message = orjson.loads(frame)
        assert message["method"] == "SUBSCRIBE"
        names += message["params"]
    return names


# --------------------------------------------------------------------------- plans


def test_without_symbols_the_url_is_read_as_given():
    [plan] = plan_connections(URL)
    assert plan.url == URL and plan.subscribe == () and plan.streams == ()


def test_symbols_become_lowercase_miniticker_streams_on_the_combined_endpoint():
    [plan] = plan_connections(URL, ("BTCUSDT", "ETHUSDT"))
    assert plan.url == "wss://stream.binance.com:9443/stream?streams=btcusdt@miniTicker/ethusdt@miniTicker"
    assert plan.subscribe == ()
    assert streams_of(plan) == ["btcusdt@miniTicker", "ethusdt@miniTicker"]


def test_streams_beyond_the_url_chunk_are_subscribed_in_frames_with_distinct_ids():
    [plan] = plan_connections(URL, symbols(450))
    assert len(plan.subscribe) == 2
    assert [orjson.loads(f)["id"] for f in plan.subscribe] == [1, 2]
    assert all(len(orjson.loads(f)["params"]) <= STREAMS_PER_MESSAGE for f in plan.subscribe)
    assert streams_of(plan) == [stream_name(s) for s in symbols(450)]
    assert stream_name("BTCUSDT") == "btcusdt@miniTicker"


def test_more_than_1024_streams_open_more_connections_each_within_the_limit():
    wanted = symbols(2500)
    plans = plan_connections(URL, wanted)
    assert len(plans) == 3
    assert all(len(streams_of(p)) <= MAX_STREAMS_PER_CONNECTION for p in plans)
    assert [s for p in plans for s in streams_of(p)] == [stream_name(s) for s in wanted]
    # The simulator, which enforces Binance's rules, accepts each URL.
    for plan in plans:
        path = urlsplit(plan.url)
        protocol.parse_path(f"{path.path}?{path.query}")


def test_path_prefix_and_other_query_parameters_are_kept():
    [plan] = plan_connections("wss://proxy.example/binance/ws/x?token=s3cr3t&streams=old", ("BTCUSDT",))
    parts = urlsplit(plan.url)
    assert parts.path == "/binance/stream"
    assert parse_qs(parts.query) == {"token": ["s3cr3t"], "streams": ["btcusdt@miniTicker"]}


def test_symbols_need_a_url_with_a_ws_or_stream_path():
    with pytest.raises(SettingsError, match="/ws or /stream") as caught:
        plan_connections("wss://host.example/feed/secret-path", ("BTCUSDT",))
    assert caught.value.variable == "BINANCE_WEBSOCKET_URL"
    assert "BINANCE_SYMBOLS" in str(caught.value)
    assert "secret-path" not in str(caught.value)


def test_control_messages_leave_room_under_the_exchanges_limit_for_pings_and_pongs():
    assert 0 < CONTROL_MESSAGES_PER_SECOND < binance.MAX_MESSAGES_PER_SECOND


def test_plan_label_never_shows_path_or_query():
    [plan] = plan_connections("wss://host.example:9443/ws/x?listenKey=TOPSECRET", ("BTCUSDT",))
    assert "TOPSECRET" not in plan.label and "btcusdt" not in plan.label
    assert plan.label == "wss://host.example:9443/… (1 streams)"


# --------------------------------------------------------------------------- secret values


@pytest.mark.parametrize(
    "value",
    [
        URL,
        f"  {URL}\n",
        orjson.dumps({"url": URL}).decode(),
        orjson.dumps({"url": URL, "note": "rotated 2024"}).decode(),
    ],
)
def test_secret_value_is_the_url_or_json_with_url(value):
    assert url_from_secret_value("s", value) == URL


@pytest.mark.parametrize(
    "value, complaint",
    [
        ("", "does not hold a websocket URL"),
        ("https://example.com/x", "does not hold a websocket URL"),
        ("{not json", "does not parse"),
        ('{"uri": "wss://x/ws"}', "without a string field 'url'"),
        ('{"url": 3}', "without a string field 'url'"),
        ('{"url": "ftp://x"}', "does not hold a websocket URL"),
    ],
)
def test_unusable_secret_value_names_the_secret_not_the_value(value, complaint):
    with pytest.raises(SecretError, match=complaint) as caught:
        url_from_secret_value("crypto-live.binance_ws", value)
    assert "'crypto-live.binance_ws'" in str(caught.value)
    if len(value) > 3:
        assert value not in str(caught.value)


# --------------------------------------------------------------------------- Secrets Manager (moto)


def settings_for(secret: str, **extra: str) -> ProducerSettings:
    return load(ProducerSettings, {"BINANCE_WEBSOCKET_SECRET": secret, "REGION": "ap-southeast-1", **extra})


def put_secret(name: str, **value) -> None:
    client = boto3.client("secretsmanager", region_name="ap-southeast-1")
    client.create_secret(Name=name, **value)


@pytest.mark.parametrize("form", ["plain", "json"])
def test_url_is_read_from_secrets_manager_in_both_forms(aws_endpoint, unique, form):
    url = f"wss://stream.binance.com:9443/ws/!miniTicker@arr?token={unique}"
    value = url if form == "plain" else orjson.dumps({"url": url}).decode()
    put_secret(f"ws-{form}-{unique}", SecretString=value)
    assert resolve_url(settings_for(f"ws-{form}-{unique}")) == url


def test_binary_secret_holding_the_url_is_read(aws_endpoint, unique):
    put_secret(f"ws-bin-{unique}", SecretBinary=URL.encode())
    assert resolve_url(settings_for(f"ws-bin-{unique}")) == URL


def test_environment_url_wins_over_the_secret(aws_endpoint, unique):
    settings = settings_for(f"never-created-{unique}", BINANCE_WEBSOCKET_URL="ws://127.0.0.1:1/ws/x")
    assert resolve_url(settings) == "ws://127.0.0.1:1/ws/x"


def test_missing_secret_is_a_clear_start_up_error(aws_endpoint, unique):
    with pytest.raises(SecretError, match=f"secret 'absent-{unique}' not found in Secrets Manager"):
        resolve_url(settings_for(f"absent-{unique}"))


def test_secret_without_a_url_is_a_clear_start_up_error(aws_endpoint, unique):
    put_secret(f"ws-bad-{unique}", SecretString='{"user": "me", "password": "hunter2"}')
    with pytest.raises(SecretError, match=f"secret 'ws-bad-{unique}' is a JSON object without") as caught:
        resolve_url(settings_for(f"ws-bad-{unique}"))
    assert "hunter2" not in str(caught.value)


def test_secret_url_that_cannot_carry_symbols_names_the_secret_not_its_value(aws_endpoint, unique):
    put_secret(f"ws-feed-{unique}", SecretString="wss://host.example/feed/listenKey-s3cr3t")
    with pytest.raises(SecretError, match=f"secret 'ws-feed-{unique}' holds a URL without /ws or /stream") as caught:
        resolve_url(settings_for(f"ws-feed-{unique}", BINANCE_SYMBOLS="BTCUSDT"))
    assert "s3cr3t" not in str(caught.value)
