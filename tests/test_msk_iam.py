"""MSK IAM: the token is a SigV4-presigned kafka-cluster:Connect request signed with the
chosen credentials, and librdkafka really asks our callback for it when it signs in.

Offline: credentials are fake keys in temporary AWS config files or the environment, and
the SASL_SSL "broker" is tests.sasl_listener on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from botocore.exceptions import NoCredentialsError
from confluent_kafka import Producer

from crypto_live.errors import SettingsError, TopicSetupError
from crypto_live.kafka import client_config, ensure_topics
from crypto_live.settings import KafkaSettings, load
from tests.sasl_listener import SaslListener, self_signed_certificate

REGION = "eu-west-1"
PROFILE_KEY, PROFILE_SECRET = "AKIAPROFILEEXAMPLE01", "profile/secret/EXAMPLEKEY"
ENV_KEY, ENV_SECRET = "AKIAENVIRONMENTEX001", "environment/secret/EXAMPLEKEY"
MSK_IAM_ENV = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "REGION": REGION}


@pytest.fixture
def aws_files(tmp_path, monkeypatch):
    """AWS config files holding profile `pipeline` (fake keys), environment keys that differ,
    and nothing of the developer's own; instance metadata is never asked."""
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[pipeline]\naws_access_key_id = {PROFILE_KEY}\naws_secret_access_key = {PROFILE_SECRET}\n")
    config = tmp_path / "config"
    config.write_text("[default]\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def presigned_request(token: str) -> tuple[str, dict[str, str]]:
    """(URL without its query, query parameters) of an MSK IAM token."""
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", dict(parse_qsl(parts.query, keep_blank_values=True))


def sigv4_signature(url: str, params: dict[str, str], secret_key: str) -> str:
    """The SigV4 query signature of a presigned GET, computed from the spec with ``secret_key``.

    The signer appends User-Agent after signing, so it is not part of what was signed.
    """
    signed = {k: v for k, v in params.items() if k not in {"X-Amz-Signature", "User-Agent"}}
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(signed.items()))
    parts = urlsplit(url)
    empty_payload = hashlib.sha256(b"").hexdigest()  # a GET has no body
    canonical = "\n".join(["GET", parts.path or "/", query, f"host:{parts.netloc}\n", "host", empty_payload])
    _, date, region, service, terminator = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/{terminator}"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, digest])
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def assert_connect_request(token: str, *, access_key: str, secret_key: str, region: str = REGION) -> datetime:
    """Assert ``token`` is a presigned kafka-cluster:Connect for ``region`` signed with these
    keys; returns when it expires."""
    url, params = presigned_request(token)
    assert url == f"https://kafka.{region}.amazonaws.com/"
    assert params["Action"] == "kafka-cluster:Connect"
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    key, _, credential_region, service, _ = params["X-Amz-Credential"].split("/")
    assert (key, credential_region, service) == (access_key, region, "kafka-cluster")
    assert params["X-Amz-Signature"] == sigv4_signature(url, params, secret_key)
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    expires = signed_at + timedelta(seconds=int(params["X-Amz-Expires"]))
    assert expires > datetime.now(UTC) + timedelta(minutes=5)
    return expires


def msk_iam_callback(environ: dict[str, str]):
    return client_config(load(KafkaSettings, {**MSK_IAM_ENV, **environ}))["oauth_cb"]


# ---------------------------------------------------------------- the token


def test_token_is_signed_with_the_pipeline_profile_when_set(aws_files):
    token, expiry = msk_iam_callback({"PIPELINE_IAM_USER": "pipeline"})("")
    expires = assert_connect_request(token, access_key=PROFILE_KEY, secret_key=PROFILE_SECRET)
    # librdkafka wants epoch seconds (the signer counts in milliseconds).
    assert expiry == pytest.approx(expires.timestamp(), abs=1)
    assert 5 * 60 < expiry - time.time() <= 15 * 60


def test_token_uses_the_default_chain_without_a_profile(aws_files):
    aws_files.setenv("AWS_SESSION_TOKEN", "session-token-of-a-role")
    token, expiry = msk_iam_callback({"PIPELINE_IAM_USER": ""})("")
    assert_connect_request(token, access_key=ENV_KEY, secret_key=ENV_SECRET)
    assert presigned_request(token)[1]["X-Amz-Security-Token"] == "session-token-of-a-role"
    assert expiry > time.time()


@pytest.fixture
def ecs_credentials_endpoint(aws_files) -> Iterator[dict[str, int]]:
    """A stand-in for the ECS agent's task-role credentials endpoint, on loopback."""
    served = {"requests": 0}
    expiration = (datetime.now(UTC) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = json.dumps(
        {"AccessKeyId": "ASIATASKROLEEXAMPLE1", "SecretAccessKey": "task/role/secret", "Token": "task-token"}
        | {"Expiration": expiration}
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served["requests"] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    aws_files.delenv("AWS_ACCESS_KEY_ID")
    aws_files.delenv("AWS_SECRET_ACCESS_KEY")
    aws_files.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{server.server_address[1]}/creds")
    yield served
    server.shutdown()
    server.server_close()


def test_token_uses_the_task_role_on_ecs_and_reuses_its_credentials(ecs_credentials_endpoint):
    callback = msk_iam_callback({})
    first, _ = callback("")
    second, _ = callback("")
    for token in (first, second):
        assert_connect_request(token, access_key="ASIATASKROLEEXAMPLE1", secret_key="task/role/secret")
        assert presigned_request(token)[1]["X-Amz-Security-Token"] == "task-token"
    assert ecs_credentials_endpoint["requests"] == 1  # botocore keeps them until they near expiry


def test_unknown_profile_is_refused_before_any_connection(aws_files):
    with pytest.raises(SettingsError, match=r"^PIPELINE_IAM_USER='nobody' is invalid: expected a profile"):
        msk_iam_callback({"PIPELINE_IAM_USER": "nobody"})


def test_missing_credentials_are_logged_naming_region_and_source_never_a_key(aws_files, caplog):
    aws_files.delenv("AWS_ACCESS_KEY_ID")
    aws_files.setenv("AWS_SECRET_ACCESS_KEY", "half-set-secret")  # partial: no usable credentials
    callback = msk_iam_callback({})
    with caplog.at_level(logging.ERROR, logger="crypto_live.msk_iam"), pytest.raises(NoCredentialsError):
        callback("")
    [record] = [r for r in caplog.records if r.name == "crypto_live.msk_iam"]
    assert record.getMessage().startswith(f"no MSK IAM token for region {REGION} from the default credential chain: ")
    assert "half-set-secret" not in caplog.text


# ---------------------------------------------------------------- librdkafka asks for it


def test_librdkafka_signs_in_with_the_callbacks_token(aws_files, tmp_path):
    with SaslListener(tmp_path) as listener:
        env = {"KAFKA_BOOTSTRAP_SERVERS": listener.bootstrap, "KAFKA_SSL_CA_LOCATION": str(listener.ca_path)}
        kafka = load(KafkaSettings, {**MSK_IAM_ENV, **env, "PIPELINE_IAM_USER": "pipeline"})
        producer = Producer(client_config(kafka))
        stop = threading.Event()

        def serve() -> None:  # as the Publisher does: poll() is where librdkafka calls oauth_cb
            while not stop.is_set():
                producer.poll(0.05)

        poller = threading.Thread(target=serve)
        poller.start()
        try:
            login = listener.wait_for_login()
        finally:
            stop.set()
            poller.join()
    assert login.mechanism == "OAUTHBEARER"
    assert login.bearer_token is not None
    assert_connect_request(login.bearer_token, access_key=PROFILE_KEY, secret_key=PROFILE_SECRET)


def test_topic_set_up_serves_the_callback_itself(aws_files, tmp_path):
    # ensure_topics' admin client polls nothing else: without its own poll it would never sign in.
    with SaslListener(tmp_path) as listener:
        env = {"KAFKA_BOOTSTRAP_SERVERS": listener.bootstrap, "KAFKA_SSL_CA_LOCATION": str(listener.ca_path)}
        kafka = load(KafkaSettings, {**MSK_IAM_ENV, **env})
        with pytest.raises(TopicSetupError):  # the listener serves no metadata
            ensure_topics(kafka, timeout=1.0)
        login = listener.wait_for_login(timeout=0)
    assert login.bearer_token is not None
    assert_connect_request(login.bearer_token, access_key=ENV_KEY, secret_key=ENV_SECRET)


def test_a_broker_certificate_from_another_ca_is_refused(aws_files, tmp_path):
    # The tests above mean something only if KAFKA_SSL_CA_LOCATION is what lets TLS through.
    (tmp_path / "other").mkdir()
    other_ca, _ = self_signed_certificate(tmp_path / "other")
    with SaslListener(tmp_path) as listener:
        env = {"KAFKA_BOOTSTRAP_SERVERS": listener.bootstrap, "KAFKA_SSL_CA_LOCATION": str(other_ca)}
        kafka = load(KafkaSettings, {**MSK_IAM_ENV, **env})
        with pytest.raises(TopicSetupError):
            ensure_topics(kafka, timeout=1.0)
    assert listener.refused_tls > 0 and listener.logins == []
