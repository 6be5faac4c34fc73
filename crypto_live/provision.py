"""Create what the pipeline needs when it is missing: topics, bucket, table, secret.

For local stacks only (`crypto-live run`, the compose `aws-init` step via
`crypto-live provision`): production resources come from infrastructure code. Every
step leaves an existing resource exactly as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping

import botocore.exceptions

from crypto_live import aws
from crypto_live.errors import SettingsError
from crypto_live.kafka import ensure_topics
from crypto_live.parsers import websocket_url as parse_websocket_url
from crypto_live.settings import (
    AwsSettings,
    DynamoSinkSettings,
    KafkaSettings,
    ProducerSettings,
    S3SinkSettings,
    load,
)

log = logging.getLogger(__name__)


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def ensure_bucket(aws_settings: AwsSettings, bucket: str) -> bool:
    """Create ``bucket`` in the configured region unless it exists; True if created."""
    s3 = aws.client(aws_settings, "s3")
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
            raise
    kwargs = {}
    if aws_settings.region != "us-east-1":  # us-east-1 rejects an explicit constraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": aws_settings.region}
    s3.create_bucket(Bucket=bucket, **kwargs)
    log.info("created bucket %s", bucket)
    return True


def ensure_secret(aws_settings: AwsSettings, name: str, websocket_url: str) -> bool:
    """Store ``websocket_url`` under secret ``name`` unless the secret exists; True if created."""
    secrets = aws.client(aws_settings, "secretsmanager")
    try:
        secrets.describe_secret(SecretId=name)
        return False
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
    secrets.create_secret(
        Name=name, SecretString=websocket_url, Description="Binance websocket URL read by crypto-live producer"
    )
    log.info("created secret %s", name)
    return True


def ensure_table(dynamo: DynamoSinkSettings) -> None:
    """Create the DynamoDB table (on-demand, TTL on ``ttl``) unless it exists; check its keys."""
    from processors.dynamo_sink import table_sink

    # The sink's own start-up check with its create switch on: one definition of the table.
    table_sink(dataclasses.replace(dynamo, create_table=True)).setup()


def provision_kafka(kafka: KafkaSettings) -> list[str]:
    return ensure_topics(kafka)


def provision_aws(
    producer: ProducerSettings, s3: S3SinkSettings, dynamo: DynamoSinkSettings, websocket_url: str
) -> None:
    ensure_bucket(s3.aws, s3.bucket)
    ensure_table(dynamo)
    ensure_secret(producer.aws, producer.websocket_secret, websocket_url)


def provision_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`crypto-live provision [--kafka] [--aws]`: both when neither flag is given."""
    producer, s3, dynamo = (load(cls, environ) for cls in (ProducerSettings, S3SinkSettings, DynamoSinkSettings))
    try:
        url = parse_websocket_url(args.websocket_url)
    except ValueError as exc:
        raise SettingsError("--websocket-url", args.websocket_url, str(exc)) from None
    both = not (args.kafka or args.aws)
    if args.kafka or both:
        created = provision_kafka(producer.kafka)
        print(f"topics: created {', '.join(created)}" if created else "topics: already there")
    if args.aws or both:
        provision_aws(producer, s3, dynamo, url)
        print(f"bucket {s3.bucket}, table {dynamo.table}, secret {producer.websocket_secret}: ready")
    return 0
