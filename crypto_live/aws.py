"""The AWS session every service uses, and the one classification of AWS errors.

A non-empty PIPELINE_IAM_USER selects that boto3 profile; empty leaves boto3's default
credential chain (environment, ECS task role, instance profile). Endpoints are never
configured here: boto3 reads AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE> itself,
which is how local runs and tests reach an emulator.

Errors, for every caller (both sinks, provisioning, the producer's secret):

* :func:`is_transient` -- "not now": throttling, 5xx, a timeout, an endpoint unreachable.
  Services wait these out (backpressure) and never stop for them.
* :func:`is_gone` -- "not here": the resource does not exist or access is denied.
* anything else is a bug or a misconfiguration, reported with :func:`error_text`.

A sink stops for anything that is not transient (see
:class:`~crypto_live.errors.DestinationError`).
"""

from __future__ import annotations

import copy
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from crypto_live.errors import SettingsError
from crypto_live.settings import AwsSettings

# Standard retry mode already backs off with jitter on throttling and 5xx; the sinks add
# their own backpressure on top, so a few attempts per call are enough.
_CLIENT_CONFIG = botocore.config.Config(
    retries={"mode": "standard", "max_attempts": 4},
    connect_timeout=5,
    read_timeout=30,
)

#: Error codes that mean "not now" rather than "never".
TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
    }
)
#: The resource is not there.
MISSING_CODES = frozenset({"404", "NoSuchBucket", "NotFound", "ResourceNotFoundException"})
#: We may not use it.
DENIED_CODES = frozenset({"403", "AccessDenied", "AccessDeniedException", "Forbidden", "AllAccessDisabled"})

#: Failures before any answer: the endpoint is unreachable, or credentials cannot be had yet.
UNREACHABLE = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
)


def session(aws: AwsSettings) -> boto3.session.Session:
    """A boto3 session for ``aws``; an unknown profile is a SettingsError naming it."""
    try:
        return boto3.session.Session(profile_name=aws.profile or None, region_name=aws.region)
    except botocore.exceptions.ProfileNotFound:
        raise SettingsError(
            "PIPELINE_IAM_USER", aws.profile, "a profile configured for boto3 (aws configure --profile)"
        ) from None


#: Per-request limits of the sinks' writes, which run inside Quix's flush: at most
#: SINK_ATTEMPTS x (connect + read timeout) + standard-mode backoff (< 3 s) = under 40 s,
#: however the endpoint misbehaves. (``total_max_attempts`` counts the first try;
#: botocore's ``max_attempts`` would count retries only.)
SINK_CONNECT_TIMEOUT = 2.0
SINK_READ_TIMEOUT = 10.0
SINK_ATTEMPTS = 3
SINK_REQUEST_LIMITS: dict[str, Any] = {
    "connect_timeout": SINK_CONNECT_TIMEOUT,
    "read_timeout": SINK_READ_TIMEOUT,
    "retries": {"mode": "standard", "total_max_attempts": SINK_ATTEMPTS},
}
#: The longest one sink request can take, retries and backoff included.
SINK_REQUEST_MAX_SECONDS = SINK_ATTEMPTS * (SINK_CONNECT_TIMEOUT + SINK_READ_TIMEOUT) + 3.0


def client(aws: AwsSettings, service: str, **config: Any) -> Any:
    """A client for ``service`` with crypto-live's retry and timeout policy.

    ``config`` overrides parts of it (botocore.config.Config keywords); it is copied, since
    botocore rewrites a ``retries`` dict in place.
    """
    merged = _CLIENT_CONFIG.merge(botocore.config.Config(**copy.deepcopy(config))) if config else _CLIENT_CONFIG
    return session(aws).client(service, config=merged)


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def error_text(exc: BaseException) -> str:
    """``Code: Message`` of an AWS error answer; the exception's own text otherwise."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', str(exc))}"
    return str(exc)


def is_transient(exc: BaseException) -> bool:
    """Whether waiting and trying again may succeed (see the module docstring)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in TRANSIENT_CODES or status >= 500
    return isinstance(exc, UNREACHABLE)


def is_gone(exc: BaseException) -> bool:
    """Whether the resource is missing or access to it is denied."""
    return isinstance(exc, botocore.exceptions.ClientError) and error_code(exc) in MISSING_CODES | DENIED_CODES
