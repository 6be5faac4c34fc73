"""Where the producer reads from: the websocket URL and the connections to open.

* :func:`resolve_url` — BINANCE_WEBSOCKET_URL when set, otherwise the Secrets Manager
  secret named by BINANCE_WEBSOCKET_SECRET, whose value is the URL itself or a JSON
  object ``{"url": "wss://..."}``. A missing secret or an unusable value is a
  :class:`~crypto_live.errors.SecretError` naming the secret, never showing its value.
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

from crypto_live import aws, binance, parsers
from crypto_live.binance import MAX_STREAMS_PER_CONNECTION, stream_name
from crypto_live.errors import SecretError, SettingsError
from crypto_live.settings import ProducerSettings

#: Streams named in the URL or in one SUBSCRIBE frame (keeps URLs and frames short).
STREAMS_PER_MESSAGE = 200
#: Binance's limit counts every incoming message, pings and pongs included: one a second
#: is left for websockets' keepalive, so a SUBSCRIBE burst never gets the connection cut.
CONTROL_MESSAGES_PER_SECOND = binance.MAX_MESSAGES_PER_SECOND - 1


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


def plan_connections(
    url: str,
    symbols: tuple[str, ...] = (),
    *,
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
    per_message: int = STREAMS_PER_MESSAGE,
) -> list[ConnectionPlan]:
    """The connections to open to read ``symbols`` (all-market when empty) from ``url``.

    Raises SettingsError (BINANCE_WEBSOCKET_URL, path and query redacted) when symbols
    are given and ``url``'s path has no ``/ws`` or ``/stream`` segment to derive the
    stream endpoint from.
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
    root = stream_root(parts.path)
    if root is None:
        raise SettingsError(
            "BINANCE_WEBSOCKET_URL",
            parsers.redact_url(url),
            "a URL whose path contains /ws or /stream, where BINANCE_SYMBOLS' streams are read",
        )
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "streams"]
    query.append(("streams", "/".join(streams)))
    return urlunsplit((parts.scheme, parts.netloc, root + "/stream", urlencode(query, safe="/@!"), ""))


def stream_root(path: str) -> str | None:
    """The part of a URL ``path`` before its ``/ws`` or ``/stream`` segment; None without one."""
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment in {"ws", "stream"}:
            return "/".join(segments[:index])
    return None


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
            raise SecretError(f"secret {secret!r} looks like JSON but does not parse") from None
        candidate = obj.get("url") if isinstance(obj, dict) else None
        if not isinstance(candidate, str):
            raise SecretError(f"secret {secret!r} is a JSON object without a string field 'url'")
        text = candidate.strip()
    try:
        return parsers.websocket_url(text)
    except ValueError as exc:
        raise SecretError(f"secret {secret!r} does not hold a websocket URL: expected {exc}") from None


def resolve_url(settings: ProducerSettings) -> str:
    """BINANCE_WEBSOCKET_URL if set, else the URL read from Secrets Manager.

    A secret whose URL cannot carry BINANCE_SYMBOLS (no ``/ws`` or ``/stream`` in its
    path) is a SecretError here, naming the secret rather than BINANCE_WEBSOCKET_URL.
    """
    if settings.websocket_url:
        return settings.websocket_url
    name = settings.websocket_secret
    try:
        with _quiet_botocore():
            response = aws.client(settings.aws, "secretsmanager").get_secret_value(SecretId=name)
    except botocore.exceptions.ClientError as exc:
        if aws.error_code(exc) == "ResourceNotFoundException":
            raise SecretError(
                f"secret {name!r} not found in Secrets Manager ({settings.aws.region}); "
                "create it or set BINANCE_WEBSOCKET_URL"
            ) from None
        raise SecretError(f"could not read secret {name!r} from Secrets Manager: {aws.error_text(exc)}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise SecretError(f"could not read secret {name!r} from Secrets Manager: {aws.error_text(exc)}") from None
    if "SecretString" in response:
        value = response["SecretString"]
    else:
        try:
            value = bytes(response.get("SecretBinary", b"")).decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"secret {name!r} is binary and not UTF-8 text") from None
    url = url_from_secret_value(name, value)
    if settings.symbols and stream_root(urlsplit(url).path) is None:
        raise SecretError(
            f"secret {name!r} holds a URL without /ws or /stream in its path, where BINANCE_SYMBOLS' streams are read"
        )
    return url


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
