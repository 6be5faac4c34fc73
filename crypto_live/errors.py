"""Every failure crypto-live reports, as one tree rooted in :class:`CryptoLiveError`.

::

    CryptoLiveError                  exit status 1 unless a subclass says otherwise
    ├── SettingsError                exit 2: a variable or option is missing or malformed
    ├── SetupError                   something needed at start-up is not usable
    │   ├── TopicSetupError          the Kafka topics could not be checked or created
    │   ├── BucketSetupError         the S3 bucket is missing, denied, or in another region
    │   ├── TableSetupError          the DynamoDB table is missing, mis-keyed or unreadable
    │   ├── SecretError              the websocket secret is missing or holds no usable URL
    │   └── EmbeddedStackError       the embedded broker or AWS emulator did not start
    ├── DestinationError             a bucket or table refuses writes for good: gone, access revoked, request refused
    ├── DeliveryError                the producer stopped with messages Kafka never acknowledged
    ├── ServiceError                 a service stopped by itself (an internal error, a child process died)
    ├── UnhealthyError               `crypto-live healthcheck`: a service's heartbeat is missing or too old
    └── HandshakeError               the simulator refuses a websocket upgrade with an HTTP status

Contract: ``str(error)`` is one line a user can act on, naming the variable, resource or
process at fault and never a secret. Only :func:`crypto_live.cli.main` turns an error into
that line and ``error.exit_status``; services and the shared package raise and never exit.

Transient trouble (an outage, throttling, a broker restart) is not an error: services wait
and retry it (backpressure, reconnects) and never raise for it.
"""

from __future__ import annotations

#: The exit status of a bad setting, as argparse uses for bad options.
EXIT_SETTINGS = 2


class CryptoLiveError(Exception):
    """The root of every error crypto-live raises on purpose."""

    exit_status: int = 1


class SettingsError(CryptoLiveError):
    """A configuration value is missing or malformed; ``str()`` is the one-line reason.

    ``variable`` is the environment variable (or command-line option) at fault, ``value``
    what it held (secrets already redacted by the caller), ``expected`` what would do.
    """

    exit_status = EXIT_SETTINGS

    def __init__(self, variable: str, value: str, expected: str):
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__(f"{variable}={value!r} is invalid: expected {expected}")


class SetupError(CryptoLiveError):
    """Something a service needs at start-up is missing or unusable; nothing was consumed."""


class TopicSetupError(SetupError):
    """The event or dead-letter topic could not be checked or created; names the topic or broker."""


class BucketSetupError(SetupError):
    """The S3 bucket cannot be used; names the bucket and the region."""


class TableSetupError(SetupError):
    """The DynamoDB table is missing, mis-keyed or unreadable; names the table."""


class SecretError(SetupError):
    """The Secrets Manager secret is missing, unreadable or holds no websocket URL; never shows its value."""


class EmbeddedStackError(SetupError):
    """A local service (Tansu, moto) could not be started; says which and why."""


class DestinationError(CryptoLiveError):
    """A sink's bucket or table refused a write in a way waiting will not fix: it was
    deleted, access to it was revoked, or it rejects the request itself.

    The rule for both sinks: this stops the process with one line naming the bucket or
    table, and nothing is committed past what was stored. Outages, throttling and 5xx
    answers are not this: they are waited out (backpressure), however long they last. A
    restart after the fix resumes from the last committed offset.
    """


class DeliveryError(CryptoLiveError):
    """The producer stopped with messages that Kafka never acknowledged; says how many."""


class ServiceError(CryptoLiveError):
    """A service stopped by itself: an internal error, or a child process that died."""


class UnhealthyError(CryptoLiveError):
    """A service's heartbeat file is missing or older than HEALTHCHECK_MAX_AGE: its processing
    loop is stuck, or it is not running. Names the file and its age."""


class HandshakeError(CryptoLiveError):
    """A websocket upgrade request the simulator refuses with HTTP ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
