"""The stack every `make bench` measurement runs against, and the tools to read it from outside.

One embedded broker (Tansu) and one AWS emulator (moto) per run: every contender runs
against the same two, as child processes, so their figures compare side by side.
Progress is read from outside the measured process (committed offsets, the stores),
never taken from its own word.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

#: Binance's all-market stream starts at this moment in the bench's events (2024-01-01).
BASE_TIME_MS = 1_704_067_200_000
#: Children run from the checkout, so `python -m bench.contenders...` imports wherever the bench was started.
REPO = Path(__file__).resolve().parent.parent
REGION = "ap-southeast-1"


@dataclass
class Child:
    """A child process with its CPU time and peak memory readable while it runs."""

    popen: subprocess.Popen[bytes]
    log: Path
    _process: psutil.Process = field(init=False, repr=False)
    _cpu: float = field(default=0.0, init=False, repr=False)
    _rss: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._process = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def _read(self) -> None:
        # Read while the process lives: after exit /proc no longer holds its figures.
        try:
            times = self._process.cpu_times()
            self._cpu = times.user + times.system
            status = Path(f"/proc/{self.pid}/status").read_text()
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self._rss = max(self._rss, int(line.split()[1]) / 1024)
        except (psutil.Error, OSError):
            pass

    def cpu_seconds(self) -> float:
        """User + system time of the process so far (the last reading once it has exited)."""
        if self.running():
            self._read()
        return self._cpu

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM), MiB (the last reading once it has exited)."""
        if self.running():
            self._read()
        return self._rss

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a user stops a service; its exit status (killed after ``timeout``)."""
        if self.running():
            self._read()
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


@dataclass
class Stack:
    """The broker, the emulator and a directory for the children's logs."""

    bootstrap: str
    aws_env: dict[str, str]
    workdir: Path
    _names: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def name(self, kind: str) -> str:
        """A unique topic / group / bucket / table name (lower case, valid for all four)."""
        return f"bench-{kind}-{os.getpid()}-{next(self._names)}".lower()

    def client(self, service: str, **config: Any) -> Any:
        """A boto3 client of ``service`` against the stack's emulator (``config``: botocore Config keywords)."""
        import boto3
        from botocore.config import Config

        env = self.aws_env
        return boto3.client(
            service,
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            config=Config(**config),
        )

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a child: ours, the emulator's, the broker's, then ``extra``."""
        return {**os.environ, **self.aws_env, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, **extra}

    def start(self, args: list[str], log_name: str, env: dict[str, str]) -> Child:
        """Start ``args``, its output to workdir/log_name (a file: a full pipe would freeze it)."""
        log = self.workdir / log_name
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        return Child(popen, log)


@contextmanager
def running_stack() -> Iterator[Stack]:
    """A broker and an emulator on free loopback ports, stopped at exit (KAFKA_BOOTSTRAP_SERVERS
    in the environment replaces the embedded broker)."""
    from crypto_live.embedded import EmbeddedAws, EmbeddedBroker, emulator_environment

    workdir = Path(tempfile.mkdtemp(prefix="crypto-live-bench-"))
    with EmbeddedAws() as aws:
        aws_env = {**emulator_environment(aws.endpoint_url), "REGION": REGION, "AWS_DEFAULT_REGION": REGION}
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if external:
            yield Stack(external, aws_env, workdir)
            return
        with EmbeddedBroker() as broker:
            yield Stack(broker.bootstrap_servers, aws_env, workdir)


def market_events(count: int, symbols: int) -> list[bytes]:
    """``count`` miniTicker events (about 190 B each) over ``symbols`` symbols, in time order.

    Each (s, E) is unique: a symbol's n-th event is n milliseconds after the previous one.
    Prices carry 8 decimals, as Binance renders them.
    """
    names = [f"S{index:04d}USDT" for index in range(symbols)]
    events = []
    for n in range(count):
        symbol, round_ = names[n % symbols], n // symbols
        price = 65_000_00000000 + (n * 7919) % 1_000_000_00000000
        events.append(
            orjson.dumps(
                {
                    "e": "24hrMiniTicker",
                    "E": BASE_TIME_MS + round_ * 1000 + n % symbols,
                    "s": symbol,
                    "c": _decimal(price),
                    "o": _decimal(65_000_00000000),
                    "h": _decimal(max(price, 65_000_00000000) + 12_34000000),
                    "l": _decimal(min(price, 65_000_00000000) - 5_67000000),
                    "v": _decimal(123_456_78900000 + n),
                    "q": _decimal(8_024_567_812_34567800 + n * 31),
                }
            )
        )
    return events


def _decimal(units: int) -> str:
    """An integer number of 1e-8 units as Binance's 8-decimal string."""
    return f"{units // 100_000_000}.{units % 100_000_000:08d}"


def prefill(stack: Stack, topic: str, events: list[bytes], partitions: int) -> None:
    """Create ``topic`` (configs explicit, as ensure_topics creates it) and produce ``events``
    keyed by symbol with timestamp E, waiting until every one is acknowledged."""
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    config = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config)])[
        topic
    ]
    future.result(timeout=30)
    producer = Producer(
        {
            "bootstrap.servers": stack.bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
        }
    )
    failed: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failed.append(str(error))

    for raw in events:
        parsed = orjson.loads(raw)
        while True:
            try:
                producer.produce(topic, raw, key=parsed["s"].encode(), timestamp=parsed["E"], on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:  # pragma: no cover - the broker refused outright
                raise RuntimeError(f"prefill of {topic}: {exc}") from exc
        producer.poll(0)
    left = producer.flush(120)
    if left or failed:
        raise RuntimeError(f"prefill of {topic}: {left} undelivered, {len(failed)} failed ({failed[:1]})")


def committed_total(stack: Stack, group: str, topic: str, partitions: int) -> int:
    """Sum of ``group``'s committed offsets on ``topic`` (0 per partition with none).

    Progress comes from commits, never from watermarks: Tansu's trail the last batch.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        wanted = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(wanted, timeout=10))
    finally:
        consumer.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll ``condition()`` until true; RuntimeError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


@dataclass(frozen=True)
class Drain:
    """How one consumer drained a pre-filled topic, read from its group's commits."""

    events_per_s: float  # from the first commit seen to the last (start-up and group join left out)
    cpu_us_per_event: float  # the process's user + system time over the same window
    peak_rss_mb: float
    committed: int  # events the group committed in the end
    startup_s: float  # from process start to its first commit
    exit_status: int
    #: The longest wait between two commits seen, as a share of the timed span: how much a
    #: commit landing late could move the rate (the bench wants it under 5 %).
    commit_share: float = float("nan")


def drain(
    stack: Stack, child: Child, group: str, topic: str, partitions: int, expected: int, *, limit: float = 300
) -> Drain:
    """Watch ``group``'s commits until ``expected`` events are committed (or they stop moving
    for 30 s, or ``limit`` seconds pass, or the child exits), then SIGTERM ``child``.

    One consumer reads the commits every 0.1 s: a new one per reading would take longer
    than the readings' spacing. A rate needs two distinct commits; with one, it is NaN.
    """
    from confluent_kafka import Consumer, TopicPartition

    watcher = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group, "enable.auto.commit": False})
    wanted = [TopicPartition(topic, p) for p in range(partitions)]
    started = time.monotonic()
    first: tuple[float, int, float] | None = None  # (time, committed, cpu) at the first commit seen
    last: tuple[float, int, float] | None = None
    moved_at = started
    longest_gap = 0.0
    try:
        while time.monotonic() - started < limit and child.running():
            done = sum(max(tp.offset, 0) for tp in watcher.committed(wanted, timeout=10))
            now = time.monotonic()
            if done and (last is None or done != last[1]):
                reading = (now, done, child.cpu_seconds())
                if last is not None:
                    longest_gap = max(longest_gap, now - last[0])
                first = first or reading
                last, moved_at = reading, now
            if done >= expected or (first is not None and now - moved_at > 30):
                break
            time.sleep(0.1)
    finally:
        rss = child.peak_rss_mb()
        status = child.stop()
        watcher.close()
    nan = float("nan")
    if first is None or last is None or last[1] == first[1]:
        return Drain(nan, nan, rss, last[1] if last else 0, (first[0] if first else nan) - started, status)
    events = last[1] - first[1]
    return Drain(
        events_per_s=events / (last[0] - first[0]),
        cpu_us_per_event=(last[2] - first[2]) / events * 1e6,
        peak_rss_mb=rss,
        committed=last[1],
        startup_s=first[0] - started,
        exit_status=status,
        commit_share=longest_gap / (last[0] - first[0]),
    )
