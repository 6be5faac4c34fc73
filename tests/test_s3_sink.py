"""The S3 sink in this process against the test broker and moto: batching, hours, DLQ, gzip, failures.

Quix installs signal handlers, so ``app.run()`` runs in the main thread and a watchdog
thread drives each scenario and stops the app when it is done.
"""

from __future__ import annotations

import gzip
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable

import boto3
import botocore.config
import orjson
import pytest
from botocore.stub import Stubber
from confluent_kafka.admin import AdminClient
from quixstreams.sinks import SinkBackpressureError

from crypto_live.backoff import Backoff, exponential
from crypto_live.errors import BucketSetupError, DestinationError
from crypto_live.kafka import ensure_topics
from crypto_live.settings import S3SinkSettings, load
from processors.s3_objects import GZIP_CONTENT_TYPE, JSONL_CONTENT_TYPE
from processors.s3_sink import STAGE, S3JsonlSink, application, jsonl_sink, run
from processors.stream import backpressure_backoff, state_directory
from processors.topic_log import TopicReadError
from tests.factories import (
    BASE_TIME_MS,
    assert_exactly_once,
    committed,
    key_of,
    publish,
    run_app_until,
    run_service,
    sink_batch,
    ticker,
    topic_log,
)
from tests.helpers import cli_env, read_topic, run_cli, start_cli, wait_for

REGION = "ap-southeast-1"
HOUR_MS = 3_600_000
#: 2023-11-14T23:00:00Z
NEXT_HOUR = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS + HOUR_MS


# --------------------------------------------------------------------------- helpers


def stored(s3, bucket: str) -> dict[str, list[dict]]:
    """Every object in ``bucket``: key -> its rows (gzip bodies decompressed)."""
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
            if entry["Key"].endswith(".gz"):
                body = gzip.decompress(body)
            objects[entry["Key"]] = [orjson.loads(line) for line in body.splitlines()]
    return objects


def key_count(s3, bucket: str) -> int:
    return sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))


def identities(rows) -> Counter:
    """Multiset of (symbol, event time): an event stored twice counts 2."""
    return Counter((row["s"], row["E"]) for row in rows)


def all_rows(objects: dict[str, list[dict]]) -> list[dict]:
    return [row for rows in objects.values() for row in rows]


def first_offset(key: str) -> int:
    return int(key.rsplit("-", 1)[1].split(".")[0])


def create_bucket(s3, name: str) -> str:
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


@pytest.fixture
def s3(aws_endpoint):
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def bucket(s3, unique):
    return create_bucket(s3, f"s3-sink-{unique}")


def sink_settings(kafka_env: dict, bucket: str, **env: str) -> S3SinkSettings:
    return load(S3SinkSettings, {**kafka_env, "S3_BUCKET": bucket, "REGION": REGION, **env})


def run_sink(settings: S3SinkSettings, scenario: Callable[[], None], sink: S3JsonlSink | None = None) -> S3JsonlSink:
    """Run the sink's app here until ``scenario`` (run in a watchdog thread) returns or fails."""
    sink = sink or jsonl_sink(settings)
    with state_directory(STAGE) as state_dir:
        run_app_until(application(settings, sink, state_dir), scenario)
    return sink


def until_rows(s3, bucket: str, count: int, timeout: float = 30) -> Callable[[], None]:
    return lambda: wait_for(
        lambda: len(all_rows(stored(s3, bucket))) >= count, timeout, interval=0.1, what=f"{count} rows in s3://{bucket}"
    )


# --------------------------------------------------------------------------- batching


def test_full_objects_by_count_then_the_rest_by_time_from_the_earliest_offset(kafka_env, s3, bucket):
    settings = sink_settings(
        kafka_env,
        bucket,
        MAX_BATCH_SIZE="50",
        MAX_BATCH_TIMEOUT="3",
        KAFKA_TOPIC_PARTITIONS="1",
        S3_JSONL_DIR_PATH="raw/jsonl",
    )
    events = [ticker(n) for n in range(230)]
    publish(settings.kafka, events)  # before the group exists: it has to start at the earliest offset

    run_sink(settings, until_rows(s3, bucket, 230))

    objects = stored(s3, bucket)
    keys = sorted(objects)
    assert [len(objects[key]) for key in keys] == [50, 50, 50, 50, 30]  # the last 30 by the timeout
    assert [first_offset(key) for key in keys] == [0, 50, 100, 150, 200]
    assert all(key.startswith(f"raw/jsonl/dt=2023-11-14/hour=22/{settings.kafka.topic}-00000-") for key in keys)
    assert [row for key in keys for row in objects[key]] == events


def test_a_quiet_stream_is_flushed_by_time_without_a_newer_message(kafka_env, s3, bucket):
    settings = sink_settings(
        kafka_env, bucket, MAX_BATCH_SIZE="1000", MAX_BATCH_TIMEOUT="1.5", KAFKA_TOPIC_PARTITIONS="1"
    )
    few = [ticker(n) for n in range(1, 8)]
    waited: list[float] = []

    def scenario():
        publish(settings.kafka, [ticker(0)])
        wait_for(lambda: key_count(s3, bucket) == 1, 30, what="the first event's object (the sink is running)")
        # A checkpoint opened as that object was written: these arrive early in the next one.
        started = time.monotonic()
        publish(settings.kafka, few)
        wait_for(lambda: key_count(s3, bucket) == 2, 10, interval=0.02, what="the quiet stream's object")
        waited.append(time.monotonic() - started)

    run_sink(settings, scenario)

    objects = stored(s3, bucket)
    second = sorted(objects)[1]
    assert objects[second] == few and first_offset(second) == 1
    assert waited[0] < 1.5 + 0.75, f"the object took {waited[0]:.2f} s to appear"


def test_a_batch_across_an_hour_boundary_becomes_one_object_per_hour(kafka_env, s3, bucket):
    # 12 events in one batch: 7 before 23:00, 4 after, and a late 22:59 event after those.
    settings = sink_settings(
        kafka_env, bucket, MAX_BATCH_SIZE="12", MAX_BATCH_TIMEOUT="1", KAFKA_TOPIC_PARTITIONS="1", S3_JSONL_DIR_PATH=""
    )
    times = [NEXT_HOUR - 7 + n for n in range(7)] + [NEXT_HOUR + n for n in range(4)] + [NEXT_HOUR - 1_000]
    events = [ticker(n, event_time=t) for n, t in enumerate(times)]
    publish(settings.kafka, events)

    run_sink(settings, until_rows(s3, bucket, 12))

    topic = settings.kafka.topic
    assert stored(s3, bucket) == {
        f"dt=2023-11-14/hour=22/{topic}-00000-00000000000000000000.jsonl": events[:7] + events[11:],
        f"dt=2023-11-14/hour=23/{topic}-00000-00000000000000000007.jsonl": events[7:11],
    }


# --------------------------------------------------------------------------- bad data, gzip


def test_poison_goes_to_the_dlq_and_later_events_still_land(kafka_env, s3, bucket):
    settings = sink_settings(
        kafka_env, bucket, MAX_BATCH_SIZE="1000", MAX_BATCH_TIMEOUT="0.5", KAFKA_TOPIC_PARTITIONS="1"
    )
    before, after = [ticker(n) for n in range(10)], [ticker(n) for n in range(10, 15)]
    poison = [b"{not json", orjson.dumps(ticker(99, c=1.5)), orjson.dumps(ticker(98, e="trade"))]
    publish(settings.kafka, [*before, *poison])
    dead: list = []

    def scenario():
        until_rows(s3, bucket, 10)()
        dead.extend(read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic, expected=3))
        publish(settings.kafka, after)  # the sink carries on after the poison
        until_rows(s3, bucket, 15)()

    run_sink(settings, scenario)

    assert identities(all_rows(stored(s3, bucket))) == identities(before + after)
    records = [orjson.loads(message.value()) for message in dead]
    assert [r["source"] for r in records] == [
        {"topic": settings.kafka.topic, "partition": 0, "offset": offset} for offset in (10, 11, 12)
    ]
    assert {r["stage"] for r in records} == {"s3-sink"}
    assert records[0]["reason"].startswith("not JSON") and "expected '24hrMiniTicker'" in records[2]["reason"]
    assert "field 'c' (close price) is a number 1.5" in records[1]["reason"]


def test_gzip_on_request_writes_jsonl_gz_that_decompresses_to_the_lines(kafka_env, s3, bucket):
    settings = sink_settings(
        kafka_env, bucket, MAX_BATCH_SIZE="25", MAX_BATCH_TIMEOUT="1", KAFKA_TOPIC_PARTITIONS="1", S3_COMPRESSION="gzip"
    )
    events = [ticker(n) for n in range(40)]
    publish(settings.kafka, events)

    run_sink(settings, until_rows(s3, bucket, 40))

    keys = sorted(stored(s3, bucket))
    assert [k.rsplit("/", 1)[1].split("-", 2)[2] for k in keys] == [
        "00000-00000000000000000000.jsonl.gz",
        "00000-00000000000000000025.jsonl.gz",
    ]
    first = s3.get_object(Bucket=bucket, Key=keys[0])
    assert first["ContentType"] == GZIP_CONTENT_TYPE and "ContentEncoding" not in first
    assert gzip.decompress(first["Body"].read()) == b"".join(orjson.dumps(e) + b"\n" for e in events[:25])
    assert stored(s3, bucket)[keys[1]] == events[25:]


def test_plain_objects_are_declared_ndjson(kafka_env, s3, bucket):
    settings = sink_settings(kafka_env, bucket, MAX_BATCH_SIZE="3", MAX_BATCH_TIMEOUT="1", KAFKA_TOPIC_PARTITIONS="1")
    publish(settings.kafka, [ticker(n) for n in range(3)])
    run_sink(settings, until_rows(s3, bucket, 3))
    [key] = stored(s3, bucket)
    assert s3.head_object(Bucket=bucket, Key=key)["ContentType"] == JSONL_CONTENT_TYPE


# --------------------------------------------------------------------------- start-up


def test_a_missing_bucket_is_refused_in_one_line_naming_it(kafka_env, aws_env, unique):
    result = run_cli(["s3-sink"], cli_env(kafka_env, aws_env, {"S3_BUCKET": f"no-such-bucket-{unique}"}))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"crypto-live s3-sink: S3 bucket 'no-such-bucket-{unique}' does not exist"), last


def offline_s3():
    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_denied_access_is_refused_naming_the_bucket_and_the_permissions():
    client = offline_s3()
    with Stubber(client) as stub:
        stub.add_client_error(
            "head_bucket", service_error_code="403", service_message="Forbidden", http_status_code=403
        )
        with pytest.raises(BucketSetupError) as raised:
            S3JsonlSink(client, "their-bucket", "raw").setup()
    assert str(raised.value).startswith("access to S3 bucket 'their-bucket' is denied (region ap-southeast-1")
    assert "s3:PutObject and s3:GetObject on raw/*" in str(raised.value)


# --------------------------------------------------------------------------- S3 failures


def one_event_batch(n: int):
    return sink_batch([ticker(n)], topic="ticks", first_offset=n)


def test_transient_s3_errors_become_backpressure_that_grows_to_its_cap_and_resets():
    client = offline_s3()
    sink = S3JsonlSink(client, "b", "p", backpressure=Backoff(lambda: exponential(1.0, 3.0)))
    delays = []
    with Stubber(client) as stub:
        # Each write that starts a partition's chain first lists its hour (here: empty).
        for code, status in [("SlowDown", 503), ("InternalError", 500), ("ServiceUnavailable", 503), ("Busy", 502)]:
            stub.add_response("list_objects_v2", {"KeyCount": 0})
            stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        stub.add_response("list_objects_v2", {"KeyCount": 0})
        stub.add_response("put_object", {})
        stub.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
        for n in range(6):
            try:
                sink.write(one_event_batch(n))
            except SinkBackpressureError as exc:
                delays.append(exc.retry_after)
    assert delays == [1.0, 2.0, 3.0, 3.0, 1.0]  # a success resets the streak
    assert (sink.objects_written, sink.backpressures) == (1, 5)
    # With the defaults a pause never exceeds 30 s: an outage of any length costs at most 30 s after it.
    default = backpressure_backoff()
    pauses = [default.next_delay() for _ in range(51)]
    assert [pauses[n] for n in (0, 1, 4, 5, 50)] == [1.0, 2.0, 16.0, 30.0, 30.0]


def test_an_unreachable_endpoint_is_backpressure():
    client = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",  # nothing listens: connection refused
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    sink = S3JsonlSink(client, "b", "p")
    with pytest.raises(SinkBackpressureError):
        sink.write(one_event_batch(0))
    assert sink.backpressures == 1


@pytest.mark.parametrize(
    "code, status",
    [("NoSuchBucket", 404), ("AccessDenied", 403), ("AllAccessDisabled", 403), ("InvalidRequest", 400)],
)
def test_s3_errors_waiting_cannot_fix_stop_the_sink_naming_the_bucket(code, status):
    client = offline_s3()
    sink = S3JsonlSink(client, "their-bucket", "raw")
    with Stubber(client) as stub, pytest.raises(DestinationError) as raised:
        stub.add_response("list_objects_v2", {"KeyCount": 0})
        stub.add_client_error("put_object", service_error_code=code, service_message="no", http_status_code=status)
        sink.write(one_event_batch(7))
    assert str(raised.value).startswith("S3 bucket 'their-bucket' (region ap-southeast-1")
    assert f"refused PutObject of raw/dt=2023-11-14/hour=22/ticks-00000-00000000000000000007.jsonl: {code}: no" in str(
        raised.value
    )
    assert (sink.objects_written, sink.backpressures) == (0, 0)


# --------------------------------------------------------------------------- a bucket deleted mid-run


def empty_and_delete(s3, bucket: str) -> None:
    """Delete ``bucket`` (S3 deletes only empty buckets)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=entry["Key"])
    s3.delete_bucket(Bucket=bucket)


def delete_mid_run_settings(kafka_env: dict, bucket: str) -> S3SinkSettings:
    return sink_settings(kafka_env, bucket, MAX_BATCH_SIZE="10", MAX_BATCH_TIMEOUT="0.5", KAFKA_TOPIC_PARTITIONS="1")


def test_a_bucket_deleted_mid_run_stops_the_sink_naming_it_and_nothing_past_the_stored_objects_is_committed(
    kafka_env, s3, bucket, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run's Quix state directory goes
    settings = delete_mid_run_settings(kafka_env, bucket)
    kafka, group = settings.kafka, settings.consumer_group
    events = [ticker(n) for n in range(30)]
    publish(kafka, events)
    seen: dict[str, object] = {}

    def scenario(stopped: threading.Event) -> None:
        wait_for(lambda: committed(kafka.bootstrap_servers, group, kafka.topic, 1) == [30], 30, what="30 events")
        seen["rows"] = all_rows(stored(s3, bucket))
        seen["state"] = list(tmp_path.glob(f"crypto-live-{STAGE}-*"))
        empty_and_delete(s3, bucket)
        publish(kafka, [ticker(n) for n in range(30, 35)])
        assert stopped.wait(60), "the sink kept running without its bucket"

    with pytest.raises(DestinationError) as raised:
        run_service(lambda: run(settings), scenario)

    assert str(raised.value).startswith(f"S3 bucket {bucket!r} (region {REGION}")
    assert "refused PutObject" in str(raised.value) and "NoSuchBucket" in str(raised.value)
    assert seen["rows"] == events  # what was committed had been stored, and nothing else
    assert committed(kafka.bootstrap_servers, group, kafka.topic, 1) == [30]
    assert seen["state"], "the run kept its state elsewhere: nothing to check"
    assert not list(tmp_path.glob("crypto-live-*"))


def test_a_bucket_deleted_mid_run_ends_the_command_with_exit_1_and_one_line(kafka_env, aws_env, s3, bucket):
    settings = delete_mid_run_settings(kafka_env, bucket)
    kafka, group = settings.kafka, settings.consumer_group
    publish(kafka, [ticker(n) for n in range(20)])
    env = cli_env(kafka_env, aws_env, {"S3_BUCKET": bucket, "MAX_BATCH_SIZE": "10", "MAX_BATCH_TIMEOUT": "0.5"})
    process = start_cli(["s3-sink"], env)
    try:
        wait_for(
            lambda: process.poll() is not None or committed(kafka.bootstrap_servers, group, kafka.topic, 1) == [20],
            60,
            interval=0.2,
            what="20 events stored and committed",
        )
        assert process.poll() is None, process.communicate()[1][-3000:]
        empty_and_delete(s3, bucket)
        publish(kafka, [ticker(n) for n in range(20, 25)])
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"crypto-live s3-sink: S3 bucket {bucket!r} (region {REGION}"), last
    assert "NoSuchBucket" in last
    assert committed(kafka.bootstrap_servers, group, kafka.topic, 1) == [20]


# --------------------------------------------------------------------------- zombies, full objects


def test_a_zombie_writing_its_old_batch_after_the_new_owner_stores_nothing_twice(s3, bucket):
    """Instance A froze on its batch [0, 100) past its session timeout; B took the partition
    over, wrote different cuts and committed; A resumes and writes its batch; B goes on, and
    a restarted instance C starts from B's last commit, inside an object A wrote."""
    events = [ticker(n) for n in range(130)]

    def batch(start: int, end: int):
        return sink_batch(events[start:end], topic="ticks", first_offset=start)

    def sink() -> S3JsonlSink:
        return S3JsonlSink(
            boto3.client("s3", region_name=REGION), bucket, "raw", max_rows=30, topic_log=topic_log(events)
        )

    a, b, c = sink(), sink(), sink()
    b.write(batch(0, 45))  # objects [0..29], [30..44]; commits 45
    b.write(batch(45, 70))  # [45..69]; commits 70
    a.write(batch(0, 100))  # the zombie: finds B's three objects, writes [70..99]; its commit is refused
    b.write(batch(70, 85))  # finds A's [70..99]: nothing to write; commits 85
    c.write(batch(85, 130))  # a restart at 85: the object before it reaches 99, so [100..129]

    objects = stored(s3, bucket)
    assert_exactly_once([key_of(row) for row in all_rows(objects)], map(key_of, events))
    assert sorted((first_offset(key), len(rows)) for key, rows in objects.items()) == [
        (0, 30),
        (30, 15),
        (45, 25),
        (70, 30),
        (100, 30),
    ]
    assert (a.objects_written, a.objects_found, b.objects_found, c.objects_written) == (1, 3, 1, 1)
    head = s3.head_object(Bucket=bucket, Key=next(key for key in objects if first_offset(key) == 70))
    assert head["Metadata"] == {"first-offset": "70", "last-offset": "99", "rows": "30"}


def test_an_object_the_sink_did_not_write_is_reported_not_overwritten(s3, bucket):
    sink = S3JsonlSink(boto3.client("s3", region_name=REGION), bucket, "raw", max_rows=30)
    key = "raw/dt=2023-11-14/hour=22/ticks-00000-00000000000000000000.jsonl"
    s3.put_object(Bucket=bucket, Key=key, Body=b"someone else's\n")
    with pytest.raises(DestinationError, match=f"holds {key}, which the sink did not write and will not overwrite"):
        sink.write(sink_batch([ticker(0)], topic="ticks"))
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"someone else's\n"


def test_objects_fill_up_to_max_batch_size_with_several_busy_partitions(kafka_env, s3, bucket):
    # Before: a checkpoint of MAX_BATCH_SIZE messages across the three partitions, objects of about 7 rows.
    settings = sink_settings(kafka_env, bucket, MAX_BATCH_SIZE="20", MAX_BATCH_TIMEOUT="3", KAFKA_TOPIC_PARTITIONS="3")
    symbols = ["BTCUSDT", "ETHUSDT", "BNBBTC"]
    events = [ticker(n, symbol=symbols[n % 3]) for n in range(1200)]

    def steady_load():
        # All three partitions busy at once, as live: a backlog would be fetched a partition at a time.
        for start in range(0, len(events), 12):
            publish(settings.kafka, events[start : start + 12], partition_of=lambda e: symbols.index(e["s"]))
            time.sleep(0.005)  # the stream's pace, not a wait for a condition
        until_rows(s3, bucket, len(events))()

    run_sink(settings, steady_load)

    objects = stored(s3, bucket)
    assert identities(all_rows(objects)) == identities(events)
    sizes = Counter(len(rows) for rows in objects.values())
    assert max(sizes) == 20
    assert sizes[20] * 20 >= 0.75 * len(events), sizes  # measured: 87 %; before: 50 %


# --------------------------------------------------------------------------- storing while reading


def test_objects_are_stored_while_the_checkpoint_is_still_being_read(s3, bucket):
    sink = S3JsonlSink(boto3.client("s3", region_name=REGION), bucket, "raw", max_rows=30)
    events = [ticker(n) for n in range(75)]
    for offset, event in enumerate(events):
        sink.add(orjson.dumps(event), event["s"].encode(), event["E"], [], "ticks", 0, offset)
    # Two objects' worth were read: they are stored before the checkpoint closes.
    wait_for(lambda: key_count(s3, bucket) == 2, 30, what="the two full objects, before the flush")
    sink.flush()
    objects = stored(s3, bucket)
    assert sorted((first_offset(key), len(rows)) for key, rows in objects.items()) == [(0, 30), (30, 30), (60, 15)]
    assert_exactly_once([key_of(row) for row in all_rows(objects)], map(key_of, events))
    sink.close()


def test_rows_an_hour_change_left_over_are_stored_when_the_checkpoint_closes(s3, bucket):
    """An object's worth of rows handed over across an hour boundary makes two partial
    objects' worth, which wait for more rows; with none coming, the checkpoint's close stores them."""
    hour_ms = 3_600_000
    next_hour = BASE_TIME_MS - BASE_TIME_MS % hour_ms + hour_ms
    events = [ticker(n, event_time=next_hour - 20 + n) for n in range(30)]  # 20 in one hour, 10 in the next
    with S3JsonlSink(boto3.client("s3", region_name=REGION), bucket, "raw", max_rows=30) as sink:
        sink.write(sink_batch(events, topic="ticks"))
    objects = stored(s3, bucket)
    assert sorted((first_offset(key), len(rows)) for key, rows in objects.items()) == [(0, 20), (20, 10)]
    assert_exactly_once([key_of(row) for row in all_rows(objects)], map(key_of, events))


# --------------------------------------------------------------------------- topic incarnations


def recreated_sink(bucket: str, events: list[dict], **options) -> S3JsonlSink:
    """A sink started afresh on a topic that now holds ``events`` from offset 0."""
    options.setdefault("topic_log", topic_log(events))
    return S3JsonlSink(boto3.client("s3", region_name=REGION), bucket, "raw", max_rows=30, **options)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_topic_created_again_is_stored_beside_the_old_one_never_skipped(s3, bucket, caplog, compression):
    """The topic was deleted and created again: its offsets start again at 0, in an hour the
    old incarnation wrote. Every new event is stored, in keys of their own, and one warning
    names the topic, the partition and both first events."""
    old = [ticker(n) for n in range(75)]
    new = [ticker(n, symbol="ETHUSDT", event_time=BASE_TIME_MS + 500 + n) for n in range(100)]
    with recreated_sink(bucket, old, compression=compression) as sink:
        sink.write(sink_batch(old, topic="ticks"))
    with (
        caplog.at_level("WARNING", logger="processors.s3_sink"),
        recreated_sink(bucket, new, compression=compression) as sink,
    ):
        sink.write(sink_batch(new[:40], topic="ticks"))  # the offsets [0, 40) were the old one's too
        sink.write(sink_batch(new[40:], topic="ticks", first_offset=40))  # and [40, 75)
    objects = stored(s3, bucket)
    assert_exactly_once([key_of(row) for row in all_rows(objects)], map(key_of, old + new))
    generations = Counter(re.search(r"-(g\d+-)?\d{20}\.", key)[1] for key in objects)
    assert generations == {None: 3, "g1-": 4}, sorted(objects)  # [0..29] [30..59] [60..74]; 30, 10, 30, 30
    warnings = [r.getMessage() for r in caplog.records if "created again" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "topic ticks partition 0" in warnings[0] and "generation 1" in warnings[0]
    assert '"s":"BTCUSDT"' in warnings[0] and '"s":"ETHUSDT"' in warnings[0]


def test_a_replay_of_the_same_incarnation_still_skips_what_is_stored(s3, bucket):
    """Objects of the incarnation the sink reads (written before the check existed, too: the
    check needs nothing but their first line) are found, not written again."""
    events = [ticker(n) for n in range(90)]
    layout_key = "raw/dt=2023-11-14/hour=22/ticks-00000-00000000000000000000.jsonl"
    # The object as the sink wrote it before generations existed: the same key, body and metadata.
    body = b"".join(orjson.dumps(event) + b"\n" for event in events[:30])
    metadata = {"first-offset": "0", "last-offset": "29", "rows": "30"}
    s3.put_object(Bucket=bucket, Key=layout_key, Body=body, Metadata=metadata)
    with recreated_sink(bucket, events) as sink:
        sink.write(sink_batch(events[:60], topic="ticks"))  # a crash-replay from offset 0
        restarted = recreated_sink(bucket, events)
        restarted.write(sink_batch(events[45:], topic="ticks", first_offset=45))  # a restart inside [30..59]
        restarted.close()
    objects = stored(s3, bucket)
    assert_exactly_once([key_of(row) for row in all_rows(objects)], map(key_of, events))
    assert sorted(first_offset(key) for key in objects) == [0, 30, 60]
    assert not any("-g" in key for key in objects)
    assert (sink.objects_found, restarted.objects_written) == (1, 1)


def test_a_topic_that_cannot_be_read_for_the_check_is_backpressure_not_a_guess(s3, bucket):
    """The check reads the topic when the batch does not hold the offset it needs; a broker
    that does not answer makes the sink pause and replay, never decide blind."""
    old = [ticker(n) for n in range(60)]
    with recreated_sink(bucket, old) as sink:
        sink.write(sink_batch(old, topic="ticks"))

    def unreachable(topic: str, partition: int, offset: int):
        raise TopicReadError("Kafka did not answer")

    with recreated_sink(bucket, old, topic_log=unreachable) as sink, pytest.raises(SinkBackpressureError):
        sink.write(sink_batch(old[45:], topic="ticks", first_offset=45))  # the object before it starts at 30
    assert sorted(first_offset(key) for key in stored(s3, bucket)) == [0, 30]


def recreate_topic(kafka) -> None:
    """Delete the event and dead-letter topics and create them again, empty, as an operator would."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for future in admin.delete_topics([kafka.topic, kafka.dlq_topic], operation_timeout=30).values():
        future.result()
    wait_for(lambda: kafka.topic not in admin.list_topics(timeout=5).topics, 30, what=f"{kafka.topic} deleted")
    wait_for(lambda: ensure_topics(kafka) or True, 30, what=f"{kafka.topic} created again")


def incarnations() -> tuple[list[dict], list[dict]]:
    """The events of a topic before and after it is created again: the new one's offsets
    [0, 120) were the old one's too, in the same event hour."""
    old = [ticker(n) for n in range(120)]
    new = [ticker(n, symbol="ETHUSDT", event_time=BASE_TIME_MS + 500 + n) for n in range(150)]
    return old, new


def test_a_topic_created_again_under_a_stopped_sink_is_stored_whole(kafka_env, s3, bucket):
    settings = sink_settings(kafka_env, bucket, MAX_BATCH_SIZE="50", MAX_BATCH_TIMEOUT="1", KAFKA_TOPIC_PARTITIONS="1")
    old, new = incarnations()
    publish(settings.kafka, old)
    run_sink(settings, until_rows(s3, bucket, len(old)))
    recreate_topic(settings.kafka)
    publish(settings.kafka, new)
    run_sink(settings, until_rows(s3, bucket, len(old) + len(new)))
    objects = stored(s3, bucket)
    assert_exactly_once([key_of(row) for row in all_rows(objects)], map(key_of, old + new))
    assert sum("-g1-" in key for key in objects) == 3  # the new incarnation's, beside the old one's
