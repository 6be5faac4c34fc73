"""MSK IAM authentication: librdkafka's ``oauth_cb`` for SASL/OAUTHBEARER on Amazon MSK.

An MSK IAM "token" is a SigV4-presigned ``kafka-cluster:Connect`` request to
``https://kafka.<REGION>.amazonaws.com/``, base64url-encoded; AWS's
``aws-msk-iam-sasl-signer-python`` builds it. The credentials that sign it come from the
same boto3 session every other AWS client of crypto-live uses (:func:`crypto_live.aws.session`):
PIPELINE_IAM_USER's profile when it is set, else the default chain (the ECS task role).
botocore refreshes temporary credentials itself, so one session serves a client for its
whole life.

librdkafka asks for a token when the client starts and again at 80 % of the token's
lifetime (15 minutes), from whichever thread polls the client. An exception raised by
the callback only reaches librdkafka as "OAuth callback raised exception" (it retries
later), so the callback logs the reason first: the region and the credential source,
never a key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import botocore.exceptions
from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
from botocore.credentials import CredentialProvider

from crypto_live import aws
from crypto_live.settings import AwsSettings

log = logging.getLogger(__name__)

#: librdkafka's oauth_cb: (sasl.oauthbearer.config) -> (token, expiry in epoch seconds).
OAuthCallback = Callable[[str], tuple[str, float]]


class _SessionCredentials(CredentialProvider):  # type: ignore[misc]  # botocore ships no types
    """The signer's credential source: whatever the boto3 session resolves, refreshed by botocore."""

    METHOD = "crypto-live-session"
    CANONICAL_NAME = "custom-crypto-live-session"

    def __init__(self, session: Any) -> None:
        super().__init__()
        self._boto_session = session

    def load(self) -> Any:
        credentials = self._boto_session.get_credentials()
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        return credentials


def credential_source(settings: AwsSettings) -> str:
    """Where the signing credentials come from, for log lines."""
    return f"profile {settings.profile!r}" if settings.profile else "the default credential chain"


def oauth_callback(settings: AwsSettings) -> OAuthCallback:
    """The ``oauth_cb`` signing MSK IAM tokens for ``settings.region``.

    An unknown PIPELINE_IAM_USER profile is a SettingsError here, when the client is
    configured; credentials themselves are resolved on each call (they may appear later,
    as a task role's do).
    """
    provider = _SessionCredentials(aws.session(settings))
    source = credential_source(settings)

    def token(_oauthbearer_config: str) -> tuple[str, float]:
        try:
            signed, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(
                settings.region, provider
            )
        except Exception as exc:
            log.error("no MSK IAM token for region %s from %s: %s", settings.region, source, exc)
            raise
        log.debug("MSK IAM token signed for region %s with %s", settings.region, source)
        # The signer counts in milliseconds; librdkafka's oauth_cb wants epoch seconds.
        return signed, expiry_ms / 1000

    return token
