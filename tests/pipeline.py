"""The whole of crypto-live as processes, for the fault suite: the simulated exchange, the
producer and any number of sink instances, on a topic, groups, bucket and table of their own.

A fault test starts services, breaks something, lets the pipeline drain and asks for the
verdict: every event on the topic stored exactly once in S3 and in DynamoDB, counted as
figures (events, lost, doubled) that the test records for RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import boto3
import orjson
import psutil

from crypto_live.dynamo_table import create_table_request
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from tests.conftest import TEST_SESSION_TIMEOUT_MS
from tests.factories import committed, key_of
from tests.helpers import CliProcess, cli_env, read_topic, wait_for
from tests.test_dynamo_sink import scan
from tests.test_s3_sink import REGION, all_rows, stored

SERVICES = ("producer", "s3-sink", "dynamo-sink")
GROUP_VARIABLE = {"s3-sink": "S3_SINK_GROUP", "dynamo-sink": "DYNAMO_SINK_GROUP"}
Key = tuple[str, int]


@dataclass(frozen=True)
class Verdict:
    """How the events on the topic ended up in one store."""

    store: str
    events: int  # distinct events on the topic
    lost: int  # on the topic, not in the store
    doubled: int  # stored more than once (extra copies)
    unexpected: int  # in the store, never on the topic

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and self.unexpected == 0


def verdict(store: str, stored_keys: Iterable[Key], topic_keys: Iterable[Key]) -> Verdict:
    counts = Counter(stored_keys)
    sent = set(topic_keys)
    return Verdict(
        store=store,
        events=len(sent),
        lost=len(sent - counts.keys()),
        doubled=sum(n - 1 for n in counts.values() if n > 1),
        unexpected=len(counts.keys() - sent),
    )


def rss_mb(process: CliProcess) -> float:
    """Resident memory of a running service, in MB (0 once it exited)."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(process.process.pid).memory_info().rss / 1e6
    return 0.0


@dataclass
class Pipeline:
    """The services of one fault case and the stores they write to.

    ``env`` is every service's environment; ``start(service, **overrides)`` starts one more
    instance (overrides reach that instance only, e.g. an endpoint through a proxy).
    """

    env: dict[str, str]
    simulator: SimulatorThread | None = None
    processes: list[tuple[str, CliProcess]] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.env["KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def topic(self) -> str:
        return self.env["KAFKA_TOPIC"]

    @property
    def partitions(self) -> int:
        return int(self.env["KAFKA_TOPIC_PARTITIONS"])

    def start(self, service: str, **overrides: str) -> CliProcess:
        process = CliProcess([service], cli_env(self.env, overrides))
        self.processes.append((service, process))
        return process

    def running(self, service: str) -> list[CliProcess]:
        return [p for name, p in self.processes if name == service and p.alive]

    def stop_all(self) -> dict[str, list[int]]:
        """SIGTERM every running instance; their exit statuses by service."""
        statuses: dict[str, list[int]] = {}
        for name, process in self.processes:
            if process.alive:
                statuses.setdefault(name, []).append(process.stop(signal.SIGTERM))
        return statuses

    def logs(self, service: str | None = None, tail: int = 6000) -> str:
        text = "".join(
            f"--- {name} pid {p.process.pid}\n{p.output()}" for name, p in self.processes if service in (None, name)
        )
        return text[-tail:]

    # -- what is where ----------------------------------------------------------------

    def topic_messages(self) -> list:
        return read_topic(self.bootstrap, self.topic, timeout=120)

    def topic_keys(self) -> list[Key]:
        return [key_of(orjson.loads(m.value())) for m in self.topic_messages()]

    def topic_ends(self) -> list[int]:
        """Each partition's end offset, from the messages themselves (Tansu's watermarks trail)."""
        ends = [0] * self.partitions
        for message in self.topic_messages():
            ends[message.partition()] = max(ends[message.partition()], message.offset() + 1)
        return ends

    def committed(self, service: str) -> list[int]:
        return committed(self.bootstrap, self.env[GROUP_VARIABLE[service]], self.topic, self.partitions)

    def s3_keys(self) -> list[Key]:
        s3 = boto3.client("s3", region_name=REGION)
        return [key_of(row) for row in all_rows(stored(s3, self.env["S3_BUCKET"]))]

    def dynamo_keys(self) -> list[Key]:
        return list(scan(boto3.client("dynamodb", region_name=REGION), self.env["DYNAMO_TABLE_NAME"]))

    def wait_drained(self, *services: str, timeout: float = 120) -> list[int]:
        """Wait until each sink service's group committed the end of every partition.

        The ends are read again once a group reached them, and the wait goes on if they moved:
        a read of the topic that missed its last messages (Tansu's fetches can end before
        them) would otherwise let a verdict be taken before a sink stored them.
        """
        ends = self.topic_ends()
        assert sum(ends) > 0, "nothing reached the topic: the case would prove nothing"
        for service in services or tuple(GROUP_VARIABLE):
            while True:
                wait_for(
                    lambda service=service, ends=ends: self.committed(service) == ends,
                    timeout,
                    interval=0.5,
                    what=f"{service} to commit {ends} (committed {self.committed(service)})\n{self.logs(service)}",
                )
                again = self.topic_ends()
                if again == ends:
                    break
                ends = again
        return ends

    def verdicts(self, *services: str) -> list[Verdict]:
        topic = self.topic_keys()
        found = {"s3-sink": self.s3_keys, "dynamo-sink": self.dynamo_keys}
        return [verdict(service, found[service](), topic) for service in services or tuple(GROUP_VARIABLE)]


def pipeline_env(broker: str, aws_env: Mapping[str, str], unique: str, **extra: str) -> dict[str, str]:
    """Environment of a pipeline on its own topics, groups, bucket and table (created here)."""
    bucket, table = f"faults-{unique}", f"faults-{unique}"
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    boto3.client("dynamodb", region_name=REGION).create_table(**create_table_request(table))
    return {
        **aws_env,
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "KAFKA_TOPIC": f"faults-{unique}",
        "KAFKA_TOPIC_PARTITIONS": "3",
        "KAFKA_SESSION_TIMEOUT_MS": TEST_SESSION_TIMEOUT_MS,
        "S3_SINK_GROUP": f"s3-sink-{unique}",
        "DYNAMO_SINK_GROUP": f"dynamo-sink-{unique}",
        "S3_BUCKET": bucket,
        "DYNAMO_TABLE_NAME": table,
        "MAX_BATCH_SIZE": "200",
        "MAX_BATCH_TIMEOUT": "1",
        "DYNAMO_MAX_BATCH_TIMEOUT": "0.5",
        "PRODUCER_STATS_INTERVAL": "5",
        **extra,
    }


@contextlib.contextmanager
def running_pipeline(
    broker: str, aws_env: Mapping[str, str], unique: str, *, simulator: SimulatorOptions | None = None, **extra: str
) -> Iterator[Pipeline]:
    """A :class:`Pipeline` with the simulator running (when ``simulator`` is given) and the
    producer pointed at it; every process still running at the end is killed."""
    env = pipeline_env(broker, aws_env, unique, **extra)
    with contextlib.ExitStack() as stack:
        sim = None
        if simulator is not None:
            sim = stack.enter_context(SimulatorThread(simulator))
            env["BINANCE_WEBSOCKET_URL"] = sim.url()
        pipeline = Pipeline(env, sim)
        try:
            yield pipeline
        finally:
            for _, process in pipeline.processes:
                process.kill()


class RssSampler:
    """Samples the resident memory of every running instance of a service, on a thread."""

    def __init__(self, pipeline: Pipeline, service: str, interval: float = 0.5):
        self._pipeline, self._service, self._interval = pipeline, service, interval
        self.samples: list[tuple[float, float]] = []  # (monotonic time, MB summed over instances)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            total = sum(rss_mb(p) for p in self._pipeline.running(self._service))
            self.samples.append((time.monotonic(), total))

    def peak(self, since: float = 0.0) -> float:
        return max((mb for t, mb in self.samples if t >= since), default=0.0)
