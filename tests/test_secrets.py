"""Secrets: a websocket URL carrying a secret (a token in its query string), set in the
environment and in Secrets Manager, shows in no line any service writes, at any LOG_LEVEL,
in either LOG_FORMAT — while the services work, lose the exchange for a while (reconnects
are logged), read junk (dead letters are logged) and stop on SIGTERM.

Every service gets the same environment, as in compose or ECS. A secret is searched in
stdout and stderr as every fragment :func:`crypto_live.logs.secret_fragments` hides: the
whole URL, what follows its host, its path, its query and each query value. The unit
checks of the redaction itself are in tests/test_logs_json.py.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from crypto_live import cli, logs
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from tests.factories import committed
from tests.helpers import CliProcess, cli_env, wait_for
from tests.json_logs import json_records
from tests.pipeline import SERVICES, running_pipeline
from tests.proxy import TcpGate

REGION = "ap-southeast-1"
#: How long the exchange is unreachable: long enough for failed attempts and their log lines.
OUTAGE_S = 3.0
#: 5 symbols every 0.2 s: 25 events/s for each of the nine producers. Enough for every
#: instance to publish, store and commit within seconds; more only loads a 2-core machine
#: that runs seventeen services beside the rest of the suite.
SIMULATOR = SimulatorOptions(symbols=5, interval=0.2)
#: How long every sink instance gets to commit: seventeen services starting at once, on 2
#: cores shared with the rest of the suite, were seen to need more than 90 s.
COMMIT_TIMEOUT = 150


def accepted_levels() -> set[str]:
    """The levels LOG_LEVEL (the CLI's --log-level) accepts."""
    (option,) = [action for action in cli.build_parser()._actions if "--log-level" in action.option_strings]
    return set(option.choices or ())


SINK_LEVELS = (("DEBUG", "json"), ("INFO", "text"), ("WARNING", "json"), ("ERROR", "text"))
#: (service, LOG_LEVEL, LOG_FORMAT, where the producer finds the URL) of the instances run
#: side by side: every service at every level, both formats; producers reading the URL from
#: the environment (it wins over the secret, also set) and from Secrets Manager only. The
#: sinks never read it, yet see it in their environment (as in compose or ECS).
INSTANCES = (
    ("producer", "DEBUG", "text", "env"),
    ("producer", "DEBUG", "json", "env"),
    ("producer", "INFO", "json", "env"),
    ("producer", "WARNING", "text", "env"),
    ("producer", "ERROR", "json", "env"),
    ("producer", "DEBUG", "json", "secret"),
    ("producer", "INFO", "text", "secret"),
    ("producer", "WARNING", "json", "secret"),
    ("producer", "ERROR", "text", "secret"),
    *((sink, level, fmt, "env") for sink in ("s3-sink", "dynamo-sink") for level, fmt in SINK_LEVELS),
)
GROUP_VARIABLE = {"s3-sink": "S3_SINK_GROUP", "dynamo-sink": "DYNAMO_SINK_GROUP"}


def test_the_instances_cover_every_service_level_and_format():
    assert {(service, source) for service, _, _, source in INSTANCES} == {
        ("producer", "env"),
        ("producer", "secret"),
        ("s3-sink", "env"),
        ("dynamo-sink", "env"),
    }
    for service, source in {(service, source) for service, _, _, source in INSTANCES}:
        levels = {level for name, level, _, src in INSTANCES if (name, src) == (service, source)}
        formats = {fmt for name, _, fmt, src in INSTANCES if (name, src) == (service, source)}
        assert levels == accepted_levels() and formats == {"text", "json"}, (service, source)


# --------------------------------------------------------------------------- checks


def fragments(*urls: str) -> set[str]:
    found = set().union(*(logs.secret_fragments(url) for url in urls))
    assert any("token=" in fragment for fragment in found), found  # the query itself is searched
    return found


def assert_no_secret(output: str, secrets: set[str], fmt: str, where: str) -> None:
    """No line of ``output`` holds a secret; in json format every line is a JSON record too."""
    for number, line in enumerate(output.splitlines(), start=1):
        shown = [secret for secret in secrets if secret in line]
        assert not shown, f"{where}: line {number} shows {shown}: {line[:400]}"
    if fmt == "json" and output:  # at WARNING or ERROR a service may say nothing at all
        json_records(output, secrets=secrets)


@contextlib.contextmanager
def gated(sim: SimulatorThread) -> Iterator[tuple[TcpGate, str]]:
    """A gate in front of the simulator, and the all-market URL through it (no secret yet)."""
    gate = TcpGate(sim.port)
    gate.open()
    try:
        yield gate, sim.url().replace(f":{sim.port}/", f":{gate.port}/")
    finally:
        gate.close()


def secret_url(base: str, unique: str, tag: str) -> str:
    return f"{base}?token=tok-{tag}-{unique}-Zq8Xw"


def outage(gate: TcpGate, sim: SimulatorThread, producers: int) -> None:
    """The exchange unreachable for OUTAGE_S (connections cut, new ones refused), then back;
    returns once every producer has connected again."""
    accepted = sim.connections_accepted
    gate.close()
    time.sleep(OUTAGE_S)  # the outage itself: a duration, not a condition
    gate.open()
    wait_for(lambda: sim.connections_accepted >= accepted + producers, timeout=60, what="the producers to reconnect")


def events_on(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Events on each topic, by its high watermarks (Tansu's may trail the last batch:
    enough to tell a producer published)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        counts = {}
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            counts[topic] = sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
            )
        return counts
    finally:
        consumer.close()


def await_commits(started: list, since: list[int], commits: Callable[[], list[int]], what: str) -> None:
    """Wait until every sink instance in ``started`` committed past ``since``; on timeout,
    name those that did not, with the end of their output."""
    try:
        wait_for(lambda: all(map(int.__lt__, since, commits())), COMMIT_TIMEOUT, 0.5, what)
    except AssertionError as timeout:
        sinks = [
            (service, level, fmt, process) for service, level, fmt, _, process in started if service in GROUP_VARIABLE
        ]
        behind = [
            f"{service} at {level} in {fmt}:\n{process.output()[-2000:]}"
            for (service, level, fmt, process), before, now in zip(sinks, since, commits(), strict=True)
            if now <= before
        ]
        raise AssertionError(f"{timeout}; not committed:\n" + "\n".join(behind)) from None


# --------------------------------------------------------------------------- cases


@pytest.mark.long
@pytest.mark.timeout(2 * COMMIT_TIMEOUT + 120)
def test_no_service_logs_the_websocket_url_at_any_level_in_either_format(broker, aws_env, unique):
    """Every instance works (events published, stored and committed), goes through junk
    and an outage of the exchange, and stops on SIGTERM; no line of any shows a secret."""
    with running_pipeline(broker, aws_env, unique, simulator=SIMULATOR) as pipeline:
        sim = pipeline.simulator
        assert sim is not None
        with gated(sim) as (gate, base):
            url, stored = secret_url(base, unique, "env"), secret_url(base, unique, "stored")
            name = f"crypto-live/secrets-{unique}"
            boto3.client("secretsmanager", region_name=REGION).create_secret(
                Name=name, SecretString=orjson.dumps({"url": stored}).decode()
            )
            pipeline.env.update(BINANCE_WEBSOCKET_URL=url, BINANCE_WEBSOCKET_SECRET=name, METRICS_INTERVAL="1")
            producers = [i for i, (service, *_) in enumerate(INSTANCES) if service == "producer"]
            started = []
            for service, level, fmt, source in INSTANCES:
                # The n-th instance of a service uses the n-th producer's topic, and a group of its own.
                n = sum(1 for other, *_ in INSTANCES[: len(started)] if other == service)
                env = {"LOG_LEVEL": level, "LOG_FORMAT": fmt, "KAFKA_TOPIC": f"{pipeline.topic}-{producers[n]}"}
                if service in GROUP_VARIABLE:
                    env[GROUP_VARIABLE[service]] = f"{pipeline.env[GROUP_VARIABLE[service]]}-{n}"
                if source == "secret":
                    env["BINANCE_WEBSOCKET_URL"] = ""  # unset: the producer reads the secret
                started.append((service, level, fmt, env, pipeline.start(service, **env)))

            def commits() -> list[int]:
                assert all(process.alive for *_, process in started), pipeline.logs()
                return [
                    sum(
                        max(o, 0)
                        for o in committed(
                            pipeline.bootstrap, env[GROUP_VARIABLE[service]], env["KAFKA_TOPIC"], pipeline.partitions
                        )
                    )
                    for service, _, _, env, _ in started
                    if service in GROUP_VARIABLE
                ]

            await_commits(started, commits(), commits, "every sink instance to commit")
            sim.send_junk()  # a dead letter for every producer
            outage(gate, sim, producers=len(producers))
            await_commits(started, commits(), commits, "commits after the outage")
            for *_, process in started:  # all at once: each takes a second or two to stop
                process.process.send_signal(signal.SIGTERM)
            for *_, process in started:  # a second SIGTERM would cut a flush short: wait for the first
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.process.wait(40)
            statuses = [process.stop(signal.SIGTERM) for *_, process in started]  # exited: collects the output
            assert statuses == [0] * len(started), (statuses, pipeline.logs())
            published = events_on(pipeline.bootstrap, [env["KAFKA_TOPIC"] for *_, env, _ in started])
    secrets = fragments(url, stored)
    for service, level, fmt, env, process in started:
        where = f"{service} at {level} in {fmt} ({env})"
        assert_no_secret(process.output(), secrets, fmt, where)
        assert published[env["KAFKA_TOPIC"]] > 0, where
        # The lines that would carry the URL were written: connections, the outage, the junk.
        if service == "producer" and level in {"DEBUG", "INFO"}:
            assert "connected to" in process.output() and "reconnecting" in process.output(), where
        if service == "producer" and level == "DEBUG":
            assert "dead-letter" in process.output(), where


def _dynamo_count(table: str) -> int:
    try:
        return boto3.client("dynamodb", region_name=REGION).describe_table(TableName=table)["Table"]["ItemCount"]
    except Exception:  # noqa: BLE001 - the table is created by the command under test
        return 0


@pytest.mark.long
def test_crypto_live_run_at_debug_logs_the_url_nowhere(aws_env, unique, tmp_path):
    """`crypto-live run` reads BINANCE_WEBSOCKET_URL, provisions it as the secret, starts every
    service with it in their environment; neither it nor any service log file shows it."""
    table = f"secrets-run-{unique}"
    with SimulatorThread(SIMULATOR) as sim, gated(sim) as (gate, base):
        url = secret_url(base, unique, "run")
        env = cli_env(
            aws_env,
            {
                "BINANCE_WEBSOCKET_URL": url,
                "BINANCE_WEBSOCKET_SECRET": f"crypto-live/secrets-run-{unique}",
                "S3_BUCKET": f"secrets-run-{unique}",
                "DYNAMO_TABLE_NAME": table,
                "KAFKA_TOPIC": f"secrets-run-{unique}",
                "MAX_BATCH_SIZE": "100",
                "MAX_BATCH_TIMEOUT": "1",
                "CRYPTO_LIVE_LOG_DIR": str(tmp_path),
                "LOG_LEVEL": "DEBUG",
                "LOG_FORMAT": "json",
                "PRODUCER_STATS_INTERVAL": "1",
                "METRICS_INTERVAL": "1",
            },
        )
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # run starts its own broker
        run = CliProcess(["run"], env)
        try:
            wait_for(lambda: _dynamo_count(table) >= 30, timeout=90, interval=0.5, what="rows in DynamoDB")
            outage(gate, sim, producers=1)
            rows = _dynamo_count(table)
            wait_for(lambda: _dynamo_count(table) > rows, timeout=60, interval=0.5, what="rows after the outage")
            assert run.stop(signal.SIGTERM, timeout=120) == 0, run.output()[-3000:]
        finally:
            run.kill()
    secrets = fragments(url)
    assert_no_secret(run.output(), secrets, "text", "crypto-live run")  # its own lines: status for people
    written = {path.name: path.read_text() for path in Path(tmp_path).glob("*.log")}
    assert set(written) == {f"{service}.log" for service in SERVICES}
    for name, output in written.items():
        assert_no_secret(output, secrets, "json", name)
    assert "reconnecting" in written["producer.log"]
