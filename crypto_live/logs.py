"""How every crypto-live process logs: one handler, one format, no secrets.

LOG_FORMAT picks the format (:func:`configure`, called by the CLI before anything logs):

* ``text`` (the default): ``2026-12-01 22:00:00,123 INFO producer: connected to wss://host/…``
* ``json`` (the container image's default): every line is one JSON object, ready for
  CloudWatch Logs without an agent::

    {"timestamp": "2026-12-01T22:00:00.123Z", "level": "INFO", "logger": "producer",
     "message": "connected to wss://host/…", "service": "producer"}

  with ``exception`` (the traceback as text) when a record carries one. Metrics records
  (:mod:`crypto_live.metrics`) are lines of their own with CloudWatch's embedded metric
  format members on top (a record's ``emf`` attribute, merged in); the CLI's final error
  line is :func:`final_line`; uncaught exceptions, in any thread, are logged as records.

Everything that logs reaches the one handler on the root logger: crypto-live's loggers,
Quix Streams' (its Application is built with ``loglevel=None``, so it installs no handler
of its own), librdkafka's (every client is given a Python logger), websockets, botocore
and Python warnings (``logging.captureWarnings``).

Secrets: :func:`register_secret` adds a value (for a URL, also its path, query, query
values and password) to the strings the handler's filter replaces with ``[redacted]`` in
every message and traceback. It is defense in depth: the code already never logs a secret
(logs name a websocket by its host only). The CLI registers every secret setting; the
producer also registers the URL it reads from Secrets Manager.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

#: What a secret is replaced with.
REDACTED = "[redacted]"
#: Shorter fragments are not redacted: replacing every "ws" or "1" would garble every line.
MIN_SECRET_LENGTH = 4
#: The logger metrics records go through (see :mod:`crypto_live.metrics`).
METRICS_LOGGER = "crypto_live.metrics"
#: The ``logger`` of the CLI's own lines (its final error line, uncaught exceptions).
CLI_LOGGER = "crypto-live"

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_secrets: list[str] = []  # longest first, so a whole URL is replaced before its parts
_format = "text"
_service = ""
_handler: logging.Handler | None = None


# --------------------------------------------------------------------------- secrets


def secret_fragments(secret: str) -> set[str]:
    """The strings to hide for ``secret`` (pure): the value itself and, for a URL, what
    follows its host, its path, query, each query value and its password, as written and
    percent-decoded. Fragments shorter than :data:`MIN_SECRET_LENGTH` are left out."""
    found = {secret.strip()}
    try:
        parts = urlsplit(secret.strip())
        password = parts.password
    except ValueError:
        parts, password = None, None
    if parts is not None and parts.scheme and parts.netloc:
        found.add(secret.strip().split(parts.netloc, 1)[1])
        found.update({parts.path, parts.query, parts.fragment, password or ""})
        found.update(value for _, value in parse_qsl(parts.query, keep_blank_values=True))
        found.update({unquote(fragment) for fragment in found})
    return {fragment for fragment in found if len(fragment) >= MIN_SECRET_LENGTH}


def register_secret(secret: str) -> None:
    """Never show ``secret`` (or, for a URL, its path, query or password) in a log line."""
    global _secrets
    _secrets = sorted(set(_secrets) | secret_fragments(secret), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by :data:`REDACTED`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message, traceback and stack with the secrets redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's own error to report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


#: Loggers that carry Kafka clients' own lines (librdkafka's log and error callbacks, which
#: Quix passes on): while a broker is down they repeat the same few lines hundreds of times
#: a minute.
KAFKA_CLIENT_LOGGERS = ("quixstreams.kafka", "producer.librdkafka", "crypto_live.kafka.librdkafka")
REPEAT_WINDOW_S = 30.0
_DIGITS = re.compile(r"[0-9]+")


class RepeatLimiter(logging.Filter):
    """Lets one line of each kind through per ``window`` seconds from the Kafka client
    loggers; the next one after the window says how many were held back.

    Lines are of a kind when they differ only in numbers (ports, counts, "after 3ms").
    Other loggers' lines always pass: the services' own lines are never repetitive noise.
    """

    def __init__(self, window: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._window, self._clock = window, clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # kind -> (passed at, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(KAFKA_CLIENT_LOGGERS):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's own error to report
            return True
        kind = (record.name, record.levelno, _DIGITS.sub("N", message))
        now = self._clock()
        passed_at, held = self._seen.get(kind, (-self._window, 0))
        if now - passed_at < self._window:
            self._seen[kind] = (passed_at, held + 1)
            return False
        if len(self._seen) > 1000:  # kinds are few; this only bounds a pathological stream
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._window}
        self._seen[kind] = (now, 0)
        if held:
            record.msg, record.args = f"{message} ({held} more like it in the last {now - passed_at:.0f} s)", None
        return True


# --------------------------------------------------------------------------- formats


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_line(entry: dict[str, Any]) -> str:
    # ASCII only: the line stays valid JSON whatever encoding the stream has.
    return json.dumps(entry, ensure_ascii=True, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, service, exception."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        emf = getattr(record, "emf", None)
        if isinstance(emf, dict):
            entry.update(emf)
        return _json_line(entry)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tests replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str, fmt: str = "text", service: str = "") -> None:
    """Send every log record to stderr at ``level`` in ``fmt`` (``text`` or ``json``).

    ``service`` is the command running (a json line's ``service``). Calling it again
    replaces the handler it installed before.
    """
    global _format, _service, _handler
    if fmt not in {"text", "json"}:
        raise ValueError(f"unknown log format {fmt!r}")
    _format, _service = fmt, service
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _StderrHandler(sys.stderr)
    _handler.setFormatter(JsonFormatter(service) if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    _handler.addFilter(RepeatLimiter())
    _handler.addFilter(RedactSecrets())
    root.addHandler(_handler)
    root.setLevel(level)
    silence_authlib_httpx_warning()
    logging.captureWarnings(True)
    # boto's INFO lines ("Found credentials ...") are noise, and its DEBUG shows request bodies.
    logging.getLogger("botocore").setLevel(max(logging.WARNING, root.level))
    # CloudWatch reads metrics from the log: LOG_LEVEL=WARNING must not switch them off there.
    logging.getLogger(METRICS_LOGGER).setLevel(logging.INFO if fmt == "json" else logging.NOTSET)
    if fmt == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger(CLI_LOGGER).critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger(CLI_LOGGER).critical(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )


def final_line(message: str, exit_status: int) -> str:
    """The CLI's last line for a failure, in the configured format, secrets redacted."""
    message = redact(message)
    if _format != "json":
        return message
    entry = {
        "timestamp": _timestamp(datetime.now(UTC).timestamp()),
        "level": "ERROR",
        "logger": CLI_LOGGER,
        "message": message,
        "service": _service,
        "exit_status": exit_status,
    }
    return _json_line(entry)


def silence_authlib_httpx_warning() -> None:
    """Hide authlib's import-time deprecation notice (pulled in by quixstreams).

    authlib.deprecate installs an "always" filter for its warning class when it is
    imported, which would override a filter set earlier; so import it first, then
    put ours in front.
    """
    try:
        import authlib.deprecate  # noqa: F401
    except ImportError:
        return
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
