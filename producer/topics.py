"""Keeps the event and dead-letter topics in place without ever holding up reading.

:class:`TopicKeeper` runs ``crypto_live.kafka.ensure_topics`` in a worker thread: at
start-up until the broker answers (events read meanwhile wait in the producer's
queue), and again whenever the producer reports the brokers unreachable and every
:data:`RECHECK_INTERVAL` seconds. Topics that have to be created again after they were
seen once mean the broker lost its state (a memory-only broker restarted, or someone
deleted them): ``on_recreated`` is awaited then, so the producer can be rebuilt.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import KafkaException

from crypto_live.errors import TopicSetupError
from crypto_live.kafka import ensure_topics
from crypto_live.settings import KafkaSettings

log = logging.getLogger(__name__)

RECHECK_INTERVAL = 30.0
ATTEMPT_TIMEOUT = 3.0  # per ensure_topics call; short, so a shutdown never waits long
RETRY_DELAY = 0.5
WARN_EVERY = 30.0  # seconds between "still waiting for the broker" warnings


class TopicKeeper:
    def __init__(self, kafka: KafkaSettings, on_recreated: Callable[[list[str]], Awaitable[None]]):
        self.kafka = kafka
        self.ready = asyncio.Event()  # set once both topics were seen or created
        self._on_recreated = on_recreated
        self._wake = asyncio.Event()

    def check_soon(self) -> None:
        """Check the topics again now (call on the event loop's thread)."""
        self._wake.set()

    async def run(self) -> None:
        """Check forever; cancel to stop."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix="topic-keeper")
        ensure = functools.partial(ensure_topics, self.kafka, timeout=ATTEMPT_TIMEOUT)
        last_warning = float("-inf")
        try:
            while True:
                self._wake.clear()
                try:
                    created = await loop.run_in_executor(executor, ensure)
                except (TopicSetupError, KafkaException) as exc:
                    if time.monotonic() - last_warning >= WARN_EVERY:
                        last_warning = time.monotonic()
                        log.warning("topics not confirmed yet (%s); still reading and buffering", exc)
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                if created and self.ready.is_set():
                    log.warning("topics %s were missing and have been created again", ", ".join(created))
                    await self._on_recreated(created)
                elif not self.ready.is_set():
                    log.info("topics ready: %s and %s", self.kafka.topic, self.kafka.dlq_topic)
                self.ready.set()
                last_warning = float("-inf")
                try:
                    async with asyncio.timeout(RECHECK_INTERVAL):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
