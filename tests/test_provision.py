"""`crypto-live provision`: failures other than "missing" are one line naming the resource."""

from __future__ import annotations

import botocore.exceptions
import pytest

from crypto_live import provision
from crypto_live.errors import BucketSetupError, SecretError
from crypto_live.settings import AwsSettings


def denied(operation: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "not for you"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
        operation,
    )


class Refusing:
    """A boto3 client whose every call is denied."""

    def __getattr__(self, operation: str):
        def call(**kwargs):
            raise denied(operation)

        return call


@pytest.fixture
def refusing_aws(monkeypatch):
    monkeypatch.setattr(provision.aws, "client", lambda settings, service, **config: Refusing())
    return AwsSettings(profile="", region="eu-west-1")


def test_a_denied_bucket_is_a_setup_error_naming_it(refusing_aws):
    with pytest.raises(BucketSetupError, match=r"S3 bucket 'my-bucket' \(region eu-west-1\): AccessDenied: not for"):
        provision.ensure_bucket(refusing_aws, "my-bucket")


def test_a_denied_secret_is_a_setup_error_naming_it_but_not_its_value(refusing_aws):
    with pytest.raises(SecretError, match=r"secret 'ws-url' \(region eu-west-1\): AccessDenied") as info:
        provision.ensure_secret(refusing_aws, "ws-url", "wss://example.invalid/ws?listenKey=s3cr3t")
    assert "s3cr3t" not in str(info.value)
