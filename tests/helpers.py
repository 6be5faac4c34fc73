"""Helpers for tests that talk to the broker or run crypto-live as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, TypeVar

from confluent_kafka import Consumer, KafkaError, TopicPartition

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def read_topic(
    bootstrap: str, topic: str, *, expected: int | None = None, timeout: float = 30.0, idle: float = 1.0
) -> list:
    """Every message of ``topic`` from the beginning, across partitions.

    Stops when ``expected`` messages were read, or when nothing new arrived for ``idle``
    seconds after the end of every partition was reached (when ``expected`` is None).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = list(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        at_eof: set[int] = set()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if expected is None and len(at_eof) == len(partitions) and time.monotonic() - last_new > idle:
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                continue
            at_eof.discard(msg.partition())
            messages.append(msg)
            last_new = time.monotonic()
            if expected is not None and len(messages) >= expected:
                break
        return messages
    finally:
        consumer.close()


def cli_env(*overrides: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for mapping in overrides:
        env.update(mapping)
    return env


def start_cli(args: list[str], env: Mapping[str, str], **kwargs) -> subprocess.Popen:
    """Start ``crypto-live ARGS`` as a child process (stdout and stderr captured as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_live", *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crypto_live", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class CliProcess:
    """A `crypto-live ARGS` child whose stdout and stderr lines are collected as they come
    (a reader thread per stream, so a full pipe never blocks the child)."""

    def __init__(self, args: list[str], env: Mapping[str, str]):
        self.process = start_cli(args, env)
        self.lines: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, signal_number: int, timeout: float = 40) -> int:
        """Send ``signal_number`` and wait for the exit status (killed if it does not come)."""
        try:
            self.process.send_signal(signal_number)
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for reader in self._readers:
                reader.join(5)

    def kill(self) -> None:
        """kill -9: no flush, no commit."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
