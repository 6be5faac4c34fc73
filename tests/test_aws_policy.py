"""The one AWS client policy: bounded sink requests, configuration never shared by accident."""

from __future__ import annotations

import copy

from crypto_live import aws
from crypto_live.settings import AwsSettings
from processors import s3_sink

#: Quix gives a sink's flush 0.2 x max.poll.interval.ms (300 s) when a rebalance revokes partitions.
QUIX_REVOKE_FLUSH_SECONDS = 60


def test_a_revoked_s3_sink_finishes_its_write_before_the_new_owner_replays():
    assert s3_sink.WRITE_BUDGET + aws.SINK_REQUEST_MAX_SECONDS < QUIX_REVOKE_FLUSH_SECONDS


def test_sink_clients_make_exactly_the_attempts_the_limits_say_and_the_limits_stay_as_written(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    before = copy.deepcopy(aws.SINK_REQUEST_LIMITS)
    settings = AwsSettings(profile="", region="eu-west-1")
    for service in ("s3", "dynamodb"):
        client = aws.client(settings, service, **aws.SINK_REQUEST_LIMITS)
        assert client.meta.config.retries["total_max_attempts"] == aws.SINK_ATTEMPTS
        assert client.meta.config.connect_timeout == aws.SINK_CONNECT_TIMEOUT
        assert client.meta.config.read_timeout == aws.SINK_READ_TIMEOUT
    assert before == aws.SINK_REQUEST_LIMITS
