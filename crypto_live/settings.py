"""Typed, validated settings: one frozen object per service, read from the environment.

Contract:
- ``load(SettingsClass, environ)`` is pure: it reads only the mapping it is given.
- Every value is checked before any service connects anywhere. The first bad value
  raises :class:`SettingsError`, whose message is one line naming the variable, the
  value, and what was expected (``MAX_BATCH_SIZE='ten' is invalid: expected a whole
  number >= 1``).
- Variable names, defaults and meanings of the original single-script design are kept
  (PIPELINE_IAM_USER, REGION, MAX_BATCH_SIZE, MAX_BATCH_TIMEOUT, S3_BUCKET,
  S3_JSONL_DIR_PATH, BINANCE_WEBSOCKET_SECRET, DYNAMO_TABLE_NAME, RETENTION_TTL_DAYS).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from crypto_live import binance
from crypto_live import parsers as p
from crypto_live.errors import SettingsError


@dataclasses.dataclass(frozen=True)
class Var:
    """How one field is read: its variable, default, parser and documentation.

    ``default`` is the raw string used when the variable is unset (or set to the empty
    string, as the original design's ``os.getenv(name, default)`` never distinguished
    the two for numbers). ``fallback`` names another variable whose value is used
    instead of ``default`` when this one is unset; ``derive`` computes a default from
    fields already read in the same object.
    """

    env: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    fallback: str | None = None
    derive: Callable[[dict[str, Any]], str] | None = None
    empty_is_unset: bool = True


def var(env: str, default: str | None, parse: Callable[[str], Any], help: str, **kw: Any) -> Any:
    """Declare a dataclass field read from environment variable ``env``; a secret stays out of repr()."""
    return dataclasses.field(metadata={"var": Var(env, default, parse, help, **kw)}, repr=not kw.get("secret", False))


def group(cls: type) -> Any:
    """Declare a nested settings group (its variables are read from the same mapping)."""
    return dataclasses.field(metadata={"group": cls})


T = TypeVar("T")


def load(cls: type[T], environ: Mapping[str, str]) -> T:
    """Build ``cls`` from ``environ``, validating every field; raise SettingsError."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if "group" in f.metadata:
            values[f.name] = load(f.metadata["group"], environ)
            continue
        spec: Var = f.metadata["var"]
        source, raw = _raw_value(spec, environ, values)
        if raw is None:
            values[f.name] = None
            continue
        try:
            values[f.name] = spec.parse(raw)
        except ValueError as exc:
            shown = raw if not spec.secret else p.mask(raw)
            raise SettingsError(source, shown, str(exc)) from None
    return cls(**values)


def _raw_value(spec: Var, environ: Mapping[str, str], values: dict[str, Any]) -> tuple[str, str | None]:
    """(variable the value came from, raw string or None) — errors name that variable."""
    source = _source(spec, environ)
    if source is not None:
        return source, environ[source].strip()
    if spec.derive is not None:
        return spec.env, spec.derive(values)
    return spec.env, spec.default


def _source(spec: Var, environ: Mapping[str, str]) -> str | None:
    """The variable that sets this field: its own, its fallback, or None (a default)."""
    raw = environ.get(spec.env)
    if raw is not None and (raw.strip() or not spec.empty_is_unset):
        return spec.env
    if spec.fallback is not None and environ.get(spec.fallback, "").strip():
        return spec.fallback
    return None


def variables(cls: type) -> Iterator[Var]:
    """Every variable ``cls`` reads, nested groups included, once each, in declaration order."""
    seen: set[str] = set()
    for spec in _variables(cls):
        if spec.env not in seen:
            seen.add(spec.env)
            yield spec


def _variables(cls: type) -> Iterator[Var]:
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            yield from _variables(f.metadata["group"])
        else:
            yield f.metadata["var"]


def describe(obj: Any, environ: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """(variable, shown value, source) for each field of a loaded settings object.

    Secret values are masked; source is ``env`` when the variable was set, ``from NAME``
    when the value came from the fallback variable NAME, ``derived`` when it was computed
    from other fields, else ``default``. A variable read by two groups (REGION by a
    service's and by its Kafka settings) is listed once.
    """
    seen: set[str] = set()
    for row in _describe(obj, environ):
        if row[0] not in seen:
            seen.add(row[0])
            yield row


def _describe(obj: Any, environ: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "group" in f.metadata:
            yield from _describe(value, environ)
            continue
        spec: Var = f.metadata["var"]
        shown = "" if value is None else p.show(value)
        if spec.secret and value is not None:
            shown = p.mask(str(value))
        origin = _source(spec, environ)
        if origin == spec.env:
            source = "env"
        elif origin is not None:
            source = f"from {origin}"
        else:
            source = "derived" if spec.derive is not None else "default"
        yield spec.env, shown, source


def secret_values(obj: Any) -> Iterator[str]:
    """The values of a loaded settings object's secret fields (set ones only), nested groups included."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "group" in f.metadata:
            yield from secret_values(value)
        elif f.metadata["var"].secret and value is not None:
            yield str(value)


def _env(obj: Any, field: str) -> str:
    """The variable that sets ``field`` of settings object ``obj``."""
    spec: Var = next(f.metadata["var"] for f in dataclasses.fields(obj) if f.name == field)
    return spec.env


# --------------------------------------------------------------------------- groups


@dataclasses.dataclass(frozen=True)
class AwsSettings:
    """How boto3 authenticates; endpoints come from boto3's own AWS_ENDPOINT_URL[_<SERVICE>]."""

    profile: str = var(
        "PIPELINE_IAM_USER",
        "",
        p.text,
        "boto3 profile to use (also for MSK IAM); empty uses the default credential chain (ECS task role).",
        empty_is_unset=False,
    )
    region: str = var(
        "REGION", "ap-southeast-1", p.aws_region, "AWS region of S3, DynamoDB, Secrets Manager and an MSK IAM cluster."
    )


#: KAFKA_SECURITY_PROTOCOL values: librdkafka's security.protocol names.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_SSL")
#: KAFKA_SASL_MECHANISM values: a user name and password, or MSK IAM (OAUTHBEARER signed with AWS credentials).
SCRAM = "SCRAM-SHA-512"
MSK_IAM = "AWS_MSK_IAM"


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
    """Where the bus is, how clients authenticate to it, and how its topics look when this
    service has to create them.

    Security rules across fields are checked when the object is built (``load`` reports
    them like any bad value, naming the variable at fault): SASL_SSL needs a mechanism and
    nothing else takes one; SCRAM-SHA-512 needs a user name and password and nothing else
    takes them; a CA bundle is for SSL or SASL_SSL only. MSK IAM signs with ``aws``: the
    same PIPELINE_IAM_USER and REGION every AWS client reads.
    """

    bootstrap_servers: str = var(
        "KAFKA_BOOTSTRAP_SERVERS",
        "localhost:9092",
        p.bootstrap_servers,
        "Comma-separated host:port list of Kafka brokers.",
    )
    topic: str = var("KAFKA_TOPIC", "binance.miniticker", p.topic_name, "Topic holding the raw miniTicker events.")
    dlq_topic: str = var(
        "KAFKA_DLQ_TOPIC",
        None,
        p.topic_name,
        "Dead-letter topic for frames and messages that are not valid events (default <KAFKA_TOPIC>.dlq).",
        derive=lambda v: f"{v['topic']}.dlq",
    )
    partitions: int = var(
        "KAFKA_TOPIC_PARTITIONS", "3", p.whole(1, 10_000), "Partitions used when a topic has to be created."
    )
    replication_factor: int = var(
        "KAFKA_TOPIC_REPLICATION_FACTOR", "1", p.whole(1, 32), "Replication factor used when a topic has to be created."
    )
    retention_ms: int = var(
        "KAFKA_TOPIC_RETENTION_MS",
        "604800000",
        p.retention,
        "retention.ms used when a topic has to be created (-1 keeps forever; default 7 days).",
    )
    retention_bytes: int = var(
        "KAFKA_TOPIC_RETENTION_BYTES",
        "-1",
        p.retention,
        "retention.bytes per partition used when a topic has to be created (-1 = no size limit).",
    )
    session_timeout_ms: int = var(
        "KAFKA_SESSION_TIMEOUT_MS",
        "45000",
        p.whole(1000, 3_600_000),
        "Consumer group session timeout in ms (sinks only).",
    )
    security_protocol: str = var(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        p.keyword(*SECURITY_PROTOCOLS),
        "PLAINTEXT (local brokers), SSL, or SASL_SSL (with KAFKA_SASL_MECHANISM).",
    )
    sasl_mechanism: str | None = var(
        "KAFKA_SASL_MECHANISM",
        None,
        p.keyword(SCRAM, MSK_IAM),
        f"{SCRAM} (with KAFKA_SASL_USERNAME/PASSWORD) or {MSK_IAM} (PIPELINE_IAM_USER or task role, REGION); "
        "SASL_SSL only.",
    )
    sasl_username: str | None = var("KAFKA_SASL_USERNAME", None, p.text, f"SASL user name ({SCRAM} only).")
    sasl_password: str | None = var(
        "KAFKA_SASL_PASSWORD", None, p.text, f"SASL password ({SCRAM} only; never printed).", secret=True
    )
    ssl_ca_location: str | None = var(
        "KAFKA_SSL_CA_LOCATION",
        None,
        p.ca_bundle,
        "PEM file of CA certificates the brokers' certificates must chain to (SSL/SASL_SSL; default: system CAs).",
    )
    aws: AwsSettings = group(AwsSettings)

    def __post_init__(self) -> None:
        protocol, mechanism = self.security_protocol, self.sasl_mechanism
        if protocol == "SASL_SSL" and mechanism is None:
            raise SettingsError(
                _env(self, "sasl_mechanism"), "", f"{SCRAM} or {MSK_IAM} when KAFKA_SECURITY_PROTOCOL=SASL_SSL"
            )
        if protocol != "SASL_SSL" and mechanism is not None:
            raise SettingsError(
                _env(self, "sasl_mechanism"),
                mechanism,
                f"no value when KAFKA_SECURITY_PROTOCOL={protocol} (SASL needs SASL_SSL)",
            )
        for name in ("sasl_username", "sasl_password"):
            value = getattr(self, name)
            if mechanism == SCRAM and value is None:
                raise SettingsError(_env(self, name), "", f"a value when KAFKA_SASL_MECHANISM={SCRAM}")
            if mechanism != SCRAM and value is not None:
                why = " (MSK IAM signs with AWS credentials)" if mechanism == MSK_IAM else ""
                shown = p.mask(value) if name == "sasl_password" else value
                raise SettingsError(_env(self, name), shown, f"no value unless KAFKA_SASL_MECHANISM={SCRAM}{why}")
        if protocol == "PLAINTEXT" and self.ssl_ca_location is not None:
            raise SettingsError(
                _env(self, "ssl_ca_location"),
                self.ssl_ca_location,
                "no value when KAFKA_SECURITY_PROTOCOL=PLAINTEXT (a CA bundle is for SSL or SASL_SSL)",
            )


#: LOG_FORMAT values: lines for people, or one JSON object per line for CloudWatch Logs.
LOG_FORMATS = ("text", "json")


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """How a process writes its log; read by the CLI before anything logs."""

    format: str = var(
        "LOG_FORMAT",
        "text",
        p.choice(*LOG_FORMATS),
        "text (lines for people) or json (one JSON object per line, with CloudWatch metrics; the image's default).",
    )


@dataclasses.dataclass(frozen=True)
class MonitoringSettings:
    """The heartbeat `crypto-live healthcheck` judges and the metrics each service emits."""

    heartbeat_dir: str = var(
        "CRYPTO_LIVE_HEARTBEAT_DIR",
        None,
        p.absolute_path,
        "Directory of the heartbeat files crypto-live-<service>.heartbeat (default: the system's temp directory).",
        derive=lambda _: tempfile.gettempdir(),
    )
    max_age: float = var(
        "HEALTHCHECK_MAX_AGE",
        "60",
        p.seconds,
        "Seconds without a heartbeat after which `crypto-live healthcheck SERVICE` fails "
        "(a working loop beats about every second).",
    )
    metrics_interval: float = var(
        "METRICS_INTERVAL",
        "60",
        p.seconds,
        "Seconds between metrics records (CloudWatch embedded metric format with LOG_FORMAT=json).",
    )


# --------------------------------------------------------------------------- services


@dataclasses.dataclass(frozen=True)
class ProducerSettings:
    """`crypto-live producer`: Binance websocket -> KAFKA_TOPIC."""

    aws: AwsSettings = group(AwsSettings)
    kafka: KafkaSettings = group(KafkaSettings)
    websocket_url: str | None = var(
        "BINANCE_WEBSOCKET_URL",
        None,
        p.websocket_url,
        "Websocket URL to read; when set it overrides the secret (local runs).",
        secret=True,
    )
    websocket_secret: str = var(
        "BINANCE_WEBSOCKET_SECRET",
        "crypto-live.binance_ws",
        p.secret_name,
        'Secrets Manager secret holding the websocket URL (the URL itself or JSON {"url": ...}).',
    )
    symbols: tuple[str, ...] = var(
        "BINANCE_SYMBOLS",
        "",
        p.symbols,
        "Comma-separated symbols to subscribe to (<symbol>@miniTicker); empty = all-market !miniTicker@arr.",
        empty_is_unset=False,
    )
    stale_after: float = var(
        "PRODUCER_STALE_AFTER",
        "30",
        p.seconds,
        "Reconnect when no data arrived for this many seconds (the stream updates every second).",
    )
    max_connection_age: float = var(
        "PRODUCER_MAX_CONNECTION_AGE",
        # An hour before Binance's own cut: the reconnect is ours, at a moment we choose.
        f"{binance.MAX_CONNECTION_AGE - 3600:.0f}",
        p.seconds,
        "Reconnect on our own schedule after this many seconds (Binance cuts connections at 24 h).",
    )
    reconnect_max_delay: float = var(
        "PRODUCER_RECONNECT_MAX_DELAY", "60", p.seconds, "Cap of the exponential reconnect backoff, in seconds."
    )
    shutdown_timeout: float = var(
        "PRODUCER_SHUTDOWN_TIMEOUT",
        "25",
        p.seconds,
        "Seconds to flush in-flight messages on SIGTERM (fits ECS's 30 s stop window).",
    )
    stats_interval: float = var("PRODUCER_STATS_INTERVAL", "60", p.seconds, "Seconds between the counters log line.")
    logs: LogSettings = group(LogSettings)
    monitoring: MonitoringSettings = group(MonitoringSettings)


@dataclasses.dataclass(frozen=True)
class S3SinkSettings:
    """`crypto-live s3-sink`: KAFKA_TOPIC -> JSONL objects in S3."""

    aws: AwsSettings = group(AwsSettings)
    kafka: KafkaSettings = group(KafkaSettings)
    bucket: str = var("S3_BUCKET", "crypto-live-bucket", p.bucket_name, "S3 bucket receiving the JSONL objects.")
    prefix: str = var(
        "S3_JSONL_DIR_PATH",
        "batch_jsonl",
        p.s3_prefix,
        "Key prefix (directory) inside S3_BUCKET.",
        empty_is_unset=False,
    )
    max_batch_size: int = var(
        "MAX_BATCH_SIZE",
        "1000",
        p.whole(1, 1_000_000),
        "Rows per JSONL object at most; at steady load objects fill up to it.",
    )
    max_batch_timeout: float = var(
        "MAX_BATCH_TIMEOUT", "10", p.seconds, "Seconds an event waits at most before its batch is written."
    )
    compression: str = var("S3_COMPRESSION", "none", p.choice("none", "gzip"), "none (.jsonl) or gzip (.jsonl.gz).")
    consumer_group: str = var("S3_SINK_GROUP", "crypto-live-s3-sink", p.group_id, "Consumer group of the S3 sink.")
    logs: LogSettings = group(LogSettings)
    monitoring: MonitoringSettings = group(MonitoringSettings)


@dataclasses.dataclass(frozen=True)
class DynamoSinkSettings:
    """`crypto-live dynamo-sink`: KAFKA_TOPIC -> one TTL row per event in DynamoDB."""

    aws: AwsSettings = group(AwsSettings)
    kafka: KafkaSettings = group(KafkaSettings)
    table: str = var("DYNAMO_TABLE_NAME", "crypto-live-miniticker", p.table_name, "DynamoDB table receiving the rows.")
    retention_ttl_days: int = var(
        "RETENTION_TTL_DAYS", "1", p.whole(1, 36_500), "Days a row lives: ttl = event time + this many days."
    )
    max_batch_size: int = var(
        "DYNAMO_MAX_BATCH_SIZE",
        "1000",
        p.whole(1, 1_000_000),
        "Events per flush at most (defaults to MAX_BATCH_SIZE).",
        fallback="MAX_BATCH_SIZE",
    )
    max_batch_timeout: float = var(
        "DYNAMO_MAX_BATCH_TIMEOUT",
        "10",
        p.seconds,
        "Seconds an event waits at most before it is written (defaults to MAX_BATCH_TIMEOUT).",
        fallback="MAX_BATCH_TIMEOUT",
    )
    create_table: bool = var(
        "DYNAMO_CREATE_TABLE",
        "false",
        p.boolean,
        "Create the table (on-demand, TTL on `ttl`) when missing; for local runs only.",
    )
    consumer_group: str = var(
        "DYNAMO_SINK_GROUP", "crypto-live-dynamo-sink", p.group_id, "Consumer group of the DynamoDB sink."
    )
    logs: LogSettings = group(LogSettings)
    monitoring: MonitoringSettings = group(MonitoringSettings)


SERVICES: dict[str, type[Any]] = {
    "producer": ProducerSettings,
    "s3-sink": S3SinkSettings,
    "dynamo-sink": DynamoSinkSettings,
}
