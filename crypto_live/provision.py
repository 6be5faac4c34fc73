"""Create what the pipeline needs when it is missing: topics, bucket, table, secret.

For local stacks only (`crypto-live run`, the compose `aws-init` step via
`crypto-live provision`): production resources come from infrastructure code. Every
step leaves an existing resource exactly as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator, Mapping

import botocore.exceptions

from crypto_live import aws, dynamo_table
from crypto_live.errors import BucketSetupError, SecretError, SettingsError, SetupError
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


def ensure_bucket(aws_settings: AwsSettings, bucket: str) -> bool:
    """Create ``bucket`` in the configured region unless it exists; True if created.

    Any other failure is a BucketSetupError naming the bucket.
    """
    s3 = aws.client(aws_settings, "s3")
    with _failing_as(BucketSetupError, f"S3 bucket {bucket!r} (region {aws_settings.region})"):
        try:
            s3.head_bucket(Bucket=bucket)
            return False
        except botocore.exceptions.ClientError as exc:
            if aws.error_code(exc) not in aws.MISSING_CODES:
                raise
        kwargs = {}
        if aws_settings.region != "us-east-1":  # us-east-1 rejects an explicit constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": aws_settings.region}
        s3.create_bucket(Bucket=bucket, **kwargs)
    log.info("created bucket %s", bucket)
    return True


def ensure_secret(aws_settings: AwsSettings, name: str, websocket_url: str) -> bool:
    """Store ``websocket_url`` under secret ``name`` unless the secret exists; True if created.

    Any other failure is a SecretError naming the secret (never its value).
    """
    secrets = aws.client(aws_settings, "secretsmanager")
    with _failing_as(SecretError, f"secret {name!r} (region {aws_settings.region})"):
        try:
            secrets.describe_secret(SecretId=name)
            return False
        except botocore.exceptions.ClientError as exc:
            if aws.error_code(exc) not in aws.MISSING_CODES:
                raise
        secrets.create_secret(
            Name=name, SecretString=websocket_url, Description="Binance websocket URL read by crypto-live producer"
        )
    log.info("created secret %s", name)
    return True


@contextlib.contextmanager
def _failing_as(error: type[SetupError], what: str) -> Iterator[None]:
    """Turn an AWS failure into ``error``: one line naming ``what`` and the AWS error."""
    try:
        yield
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise error(f"{what}: {aws.error_text(exc)}") from None


def ensure_table(dynamo: DynamoSinkSettings) -> None:
    """Create the DynamoDB table (on-demand, TTL on ``ttl``) unless it exists; check its keys.

    The sink's own start-up check with creation allowed: one definition of the table.
    """
    dynamo_table.ensure_table(aws.client(dynamo.aws, "dynamodb"), dynamo.table, create=True)


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
    producer = load(ProducerSettings, environ)
    s3 = load(S3SinkSettings, environ)
    dynamo = load(DynamoSinkSettings, environ)
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
