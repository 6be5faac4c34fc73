"""The AWS session every service uses.

A non-empty PIPELINE_IAM_USER selects that boto3 profile; empty leaves boto3's default
credential chain (environment, ECS task role, instance profile). Endpoints are never
configured here: boto3 reads AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE> itself,
which is how local runs and tests reach an emulator.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from crypto_live.settings import AwsSettings, SettingsError

# Standard retry mode already backs off with jitter on throttling and 5xx; the sinks add
# their own backpressure on top, so a few attempts per call are enough.
_CLIENT_CONFIG = botocore.config.Config(
    retries={"mode": "standard", "max_attempts": 4},
    connect_timeout=5,
    read_timeout=30,
)


def session(aws: AwsSettings) -> boto3.session.Session:
    """A boto3 session for ``aws``; an unknown profile is a SettingsError naming it."""
    try:
        return boto3.session.Session(profile_name=aws.profile or None, region_name=aws.region)
    except botocore.exceptions.ProfileNotFound:
        raise SettingsError(
            "PIPELINE_IAM_USER", aws.profile, "a profile configured for boto3 (aws configure --profile)"
        ) from None


def client(aws: AwsSettings, service: str, **config: Any) -> Any:
    """A client for ``service`` with crypto-live's retry and timeout policy."""
    merged = _CLIENT_CONFIG.merge(botocore.config.Config(**config)) if config else _CLIENT_CONFIG
    return session(aws).client(service, config=merged)
