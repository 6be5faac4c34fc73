"""Where the producer reads from: the websocket URL and the connections to open.

* :func:`resolve_url` — BINANCE_WEBSOCKET_URL when set, otherwise the Secrets Manager
  secret named by BINANCE_WEBSOCKET_SECRET, whose value is the URL itself or a JSON
  object ``{"url": "wss://..."}``. A missing secret or an unusable value is a
  :class:`~crypto_live.cli.CommandError` naming the secret, never showing its value.
* :func:`plan_connections` (pure) — which URLs to open and which SUBSCRIBE frames to
  send on each. Without symbols: the URL as given (by default the all-market
  ``!miniTicker@arr``). With symbols: ``<symbol>@miniTicker`` streams on the same host,
  as combined streams (``/stream?streams=a/b``) for the first
  :data:`STREAMS_PER_MESSAGE` of each connection and SUBSCRIBE frames for the rest, at
  most :data:`MAX_STREAMS_PER_CONNECTION` streams per connection (more symbols open
  more connections). The shell sends those frames at most
  :data:`CONTROL_MESSAGES_PER_SECOND` a second.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import botocore.exceptions
import orjson

from crypto_live import aws, parsers
from crypto_live.cli import CommandError
from crypto_live.settings import ProducerSettings

ALL_MARKET_STREAM = "!miniTicker@arr"
STREAM_SUFFIX = "@miniTicker"
#: Binance: "A single connection can listen to a maximum of 1024 streams."
MAX_STREAMS_PER_CONNECTION = 1024
#: Streams named in the URL or in one SUBSCRIBE frame (keeps URLs and frames short).
STREAMS_PER_MESSAGE = 200
#: Binance allows 5 incoming messages a second, pings and pongs included: send 4 at most.
CONTROL_MESSAGES_PER_SECOND = 4


@dataclass(frozen=True)
class ConnectionPlan:
    """One websocket connection: its URL, the SUBSCRIBE frames to send once open, and
    the streams it carries (empty when the URL names them itself)."""

    url: str
    subscribe: tuple[bytes, ...] = ()
    streams: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """What logs may say about this connection: host and stream count, no path."""
        shown = parsers.redact_url(self.url)
        return f"{shown} ({len(self.streams)} streams)" if self.streams else shown


def stream_name(symbol: str) -> str:
    """``BTCUSDT`` -> ``btcusdt@miniTicker`` (Binance stream names are lower-case)."""
    return symbol.lower() + STREAM_SUFFIX


def plan_connections(
    url: str,
    symbols: tuple[str, ...] = (),
    *,
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
    per_message: int = STREAMS_PER_MESSAGE,
) -> list[ConnectionPlan]:
    """The connections to open to read ``symbols`` (all-market when empty) from ``url``.

    Raises CommandError when symbols are given and ``url``'s path has no ``/ws`` or
    ``/stream`` segment to derive the stream endpoint from.
    """
    if not symbols:
        return [ConnectionPlan(url)]
    streams = [stream_name(symbol) for symbol in symbols]
    plans = []
    for start in range(0, len(streams), max_streams):
        chunk = streams[start : start + max_streams]
        in_url, rest = chunk[:per_message], chunk[per_message:]
        frames = tuple(
            subscribe_frame(rest[i : i + per_message], request_id=n)
            for n, i in enumerate(range(0, len(rest), per_message), start=1)
        )
        plans.append(ConnectionPlan(combined_url(url, in_url), frames, tuple(chunk)))
    return plans


def combined_url(url: str, streams: list[str]) -> str:
    """``url``'s combined-stream endpoint for ``streams``, other query parameters kept."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    for index, segment in enumerate(segments):
        if segment in {"ws", "stream"}:
            root = "/".join(segments[:index])
            break
    else:
        raise CommandError(
            f"BINANCE_SYMBOLS needs a websocket URL whose path contains /ws or /stream (got {parsers.redact_url(url)})"
        )
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "streams"]
    query.append(("streams", "/".join(streams)))
    return urlunsplit((parts.scheme, parts.netloc, root + "/stream", urlencode(query, safe="/@!"), ""))


def subscribe_frame(streams: list[str], request_id: int) -> bytes:
    return orjson.dumps({"method": "SUBSCRIBE", "params": streams, "id": request_id})


# --------------------------------------------------------------------------- URL


def url_from_secret_value(secret: str, value: str) -> str:
    """The URL held by ``value``: the URL itself, or JSON ``{"url": ...}``.

    Errors name the secret and say what is wrong, without showing the value.
    """
    text = value.strip()
    if text.startswith("{"):
        try:
            obj: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise CommandError(f"secret {secret!r} looks like JSON but does not parse") from None
        candidate = obj.get("url") if isinstance(obj, dict) else None
        if not isinstance(candidate, str):
            raise CommandError(f"secret {secret!r} is a JSON object without a string field 'url'")
        text = candidate.strip()
    try:
        return parsers.websocket_url(text)
    except ValueError as exc:
        raise CommandError(f"secret {secret!r} does not hold a websocket URL: expected {exc}") from None


def resolve_url(settings: ProducerSettings) -> str:
    """BINANCE_WEBSOCKET_URL if set, else the URL read from Secrets Manager."""
    if settings.websocket_url:
        return settings.websocket_url
    name = settings.websocket_secret
    try:
        with _quiet_botocore():
            response = aws.client(settings.aws, "secretsmanager").get_secret_value(SecretId=name)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        if code == "ResourceNotFoundException":
            raise CommandError(
                f"secret {name!r} not found in Secrets Manager ({settings.aws.region}); "
                "create it or set BINANCE_WEBSOCKET_URL"
            ) from None
        raise CommandError(f"could not read secret {name!r} from Secrets Manager: {code}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise CommandError(f"could not read secret {name!r} from Secrets Manager: {exc}") from None
    if "SecretString" in response:
        value = response["SecretString"]
    else:
        try:
            value = bytes(response.get("SecretBinary", b"")).decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError(f"secret {name!r} is binary and not UTF-8 text") from None
    return url_from_secret_value(name, value)


@contextlib.contextmanager
def _quiet_botocore() -> Iterator[None]:
    """botocore logs response bodies at DEBUG: the secret's value (the URL) among them."""
    logger = logging.getLogger("botocore")
    saved = logger.level
    logger.setLevel(max(logging.INFO, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(saved)
