"""`crypto-live run`: the whole pipeline on one machine.

Starts what is not configured (Tansu unless KAFKA_BOOTSTRAP_SERVERS is set, moto unless
AWS_ENDPOINT_URL is set), provisions topics, bucket, table and secret, then runs the
producer and both sinks as child processes — the same commands production runs — and
shows their progress as seen from outside: topic offsets, consumer lag, S3 objects,
DynamoDB rows. Stopping is ordered so nothing read is left behind: the producer first
(it flushes), then the sinks once they have caught up with the topic.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from crypto_live.binance import ALL_MARKET_STREAM, LIVE_URL
from crypto_live.errors import ServiceError
from crypto_live.observer import Observer, format_status
from crypto_live.parsers import redact_url
from crypto_live.settings import DynamoSinkSettings, ProducerSettings, S3SinkSettings, load

if TYPE_CHECKING:
    from crypto_live.simulator import SimulatorOptions

log = logging.getLogger(__name__)

SERVICES = ("producer", "s3-sink", "dynamo-sink")


# ------------------------------------------------------------------ pure decisions


@dataclass(frozen=True)
class SourceChoice:
    """Where the producer reads from, and what to tell the user about it."""

    kind: str  # "env" | "simulator" | "live"
    url: str | None  # None: start the built-in simulator
    note: str


def choose_source(environ: Mapping[str, str], simulate: bool, live_reachable: Callable[[str], bool]) -> SourceChoice:
    """BINANCE_WEBSOCKET_URL wins; then --simulate; then live Binance if reachable, else the simulator."""
    given = environ.get("BINANCE_WEBSOCKET_URL", "").strip()
    if given:
        return SourceChoice("env", given, f"reading BINANCE_WEBSOCKET_URL ({redact_url(given)})")
    if simulate:
        return SourceChoice("simulator", None, "reading the built-in market simulator (--simulate)")
    if live_reachable(LIVE_URL):
        return SourceChoice("live", LIVE_URL, f"reading live Binance data ({redact_url(LIVE_URL)})")
    return SourceChoice(
        "simulator",
        None,
        f"Binance ({redact_url(LIVE_URL)}) cannot be reached from this machine: "
        "falling back to the built-in market simulator",
    )


def tcp_reachable(url: str, timeout: float = 3.0) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ the command


def run_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from crypto_live.simulator import SimulatorOptions

    # Validate every service's settings, and the simulator's options, before starting anything.
    for cls in (ProducerSettings, S3SinkSettings, DynamoSinkSettings):
        load(cls, environ)
    simulator_options = SimulatorOptions(symbols=args.symbols)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with ExitStack() as stack:
        env = dict(environ)
        env.update(_start_missing_infrastructure(stack, environ))
        producer = load(ProducerSettings, env)
        s3 = load(S3SinkSettings, env)
        dynamo = load(DynamoSinkSettings, env)

        source = choose_source(env, args.simulate, tcp_reachable)
        _say(source.note)
        if source.url is None:
            env["BINANCE_WEBSOCKET_URL"] = _start_simulator(stack, simulator_options)
        secret_url = source.url or env["BINANCE_WEBSOCKET_URL"]

        from crypto_live.provision import provision_aws, provision_kafka

        provision_kafka(producer.kafka)
        provision_aws(producer, s3, dynamo, secret_url)

        log_dir = Path(env.get("CRYPTO_LIVE_LOG_DIR", ".crypto-live/logs"))
        log_dir.mkdir(parents=True, exist_ok=True)
        children = {name: _start_service(name, env, log_dir) for name in SERVICES}
        _say(f"producer, s3-sink and dynamo-sink started; their logs are in {log_dir}/")
        observer = Observer(s3, dynamo)
        stack.callback(observer.close)
        failed = _watch(children, observer, stop, args.duration)
        quiet_for = max(s3.max_batch_timeout, dynamo.max_batch_timeout) + 3
        code = _stop_in_order(children, observer, quiet_for)
        _print_summary(observer, s3, dynamo, env, embedded_aws=not environ.get("AWS_ENDPOINT_URL", "").strip())
        if failed:
            raise ServiceError(f"{failed} exited unexpectedly; see {log_dir}/{failed}.log")
        return code


def _say(message: str) -> None:
    print(f"crypto-live run: {message}", flush=True)


def _start_missing_infrastructure(stack: ExitStack, environ: Mapping[str, str]) -> dict[str, str]:
    from crypto_live.embedded import (
        EmbeddedAws,
        EmbeddedBroker,
        emulator_environment,
        patched_environ,
    )

    env: dict[str, str] = {}
    if not environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        broker = stack.enter_context(EmbeddedBroker())
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
        # Tansu holds a group's first assignment for half the session timeout: 22 s by
        # default. A short session keeps the sinks' start-up quick on one machine.
        if not environ.get("KAFKA_SESSION_TIMEOUT_MS", "").strip():
            env["KAFKA_SESSION_TIMEOUT_MS"] = "6000"
        _say(f"started the embedded Kafka broker (Tansu) on {broker.bootstrap_servers}")
    if not environ.get("AWS_ENDPOINT_URL", "").strip():
        emulator = stack.enter_context(EmbeddedAws())
        env.update(emulator_environment(emulator.endpoint_url))
        _say(f"started the embedded AWS emulator (moto) on {emulator.endpoint_url} (memory only)")
    # This process provisions and observes with boto3 too: same endpoint and credentials.
    stack.enter_context(patched_environ(env))
    return env


def _start_simulator(stack: ExitStack, options: SimulatorOptions) -> str:
    from crypto_live.simulator import SimulatorThread

    logging.getLogger("websockets").setLevel(logging.WARNING)  # its connection chatter hides the status
    simulator = SimulatorThread(options)
    simulator.start()
    stack.callback(simulator.stop)
    return simulator.url(ALL_MARKET_STREAM)


def _start_service(name: str, env: Mapping[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    log_file = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_live", name],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _watch(
    children: dict[str, subprocess.Popen[bytes]], observer: Observer, stop: threading.Event, duration: float | None
) -> str | None:
    """Show status until asked to stop; the name of a child that died on its own, if any."""
    deadline = None if duration is None else time.monotonic() + duration
    interactive = sys.stdout.isatty()
    before = None
    last_print = 0.0
    while not stop.wait(1.0):
        for name, child in children.items():
            if child.poll() is not None:
                return name
        if deadline is not None and time.monotonic() >= deadline:
            break
        try:
            now = observer.snapshot()
        except Exception as exc:  # noqa: BLE001 - status is best effort; services carry on
            log.debug("status unavailable: %s", exc)
            continue
        line = format_status(now, before)
        before = now
        if interactive:
            print("\r" + line, end="", flush=True)
        elif time.monotonic() - last_print >= 10:
            print(line, flush=True)
            last_print = time.monotonic()
    if interactive:
        print()
    return None


def _terminate(child: subprocess.Popen[bytes], timeout: float) -> int:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def _stop_in_order(children: dict[str, subprocess.Popen[bytes]], observer: Observer, quiet_for: float) -> int:
    """Producer first; then the sinks, once their commits have not moved for ``quiet_for`` s.

    A sink commits within its batch timeout of reading the last event, so commits that
    stay put that long after the producer stopped mean the sinks hold nothing more.
    (Watermarks alone cannot tell: some brokers report them behind the last batch.)
    """
    _say("stopping: producer first, then the sinks once they have caught up")
    codes = {"producer": _terminate(children["producer"], 35)}
    deadline = time.monotonic() + 120
    last, since = None, time.monotonic()
    while time.monotonic() < deadline and all(children[n].poll() is None for n in ("s3-sink", "dynamo-sink")):
        try:
            now = observer.committed()
        except Exception as exc:  # noqa: BLE001 - keep waiting until the deadline
            log.debug("offsets unavailable: %s", exc)
            now = None
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            break
        time.sleep(0.5)
    for name in ("s3-sink", "dynamo-sink"):
        codes[name] = _terminate(children[name], 35)
    bad = {name: code for name, code in codes.items() if code != 0}
    if bad:
        _say("not every service stopped cleanly: " + ", ".join(f"{n} exit {c}" for n, c in bad.items()))
        return 1
    return 0


def _print_summary(
    observer: Observer, s3: S3SinkSettings, dynamo: DynamoSinkSettings, env: Mapping[str, str], embedded_aws: bool
) -> None:
    try:
        final = observer.snapshot()
        keys = observer.s3_keys()
    except Exception as exc:  # noqa: BLE001
        _say(f"no summary: {exc}")
        return
    endpoint = env.get("AWS_ENDPOINT_URL", "")
    flag = f" --endpoint-url {endpoint}" if endpoint else ""
    print(format_status(final, None).replace(" (0/s)", ""))
    print(f"S3: s3://{s3.bucket}/{s3.prefix}  e.g. {keys[0] if keys else '(no objects yet)'}")
    print(f"  aws{flag} s3 ls s3://{s3.bucket}/{s3.prefix}/ --recursive")
    print(f"DynamoDB: table {dynamo.table}")
    print(
        f"  aws{flag} dynamodb query --table-name {dynamo.table} "
        "--key-condition-expression 'symbol = :s' "
        '--expression-attribute-values \'{":s":{"S":"BTCUSDT"}}\''
    )
    if embedded_aws:
        print(
            "(the embedded AWS emulator keeps data in memory only and stopped with this command; "
            "set AWS_ENDPOINT_URL to keep the output)"
        )
