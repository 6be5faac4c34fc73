"""The producer on a background thread, for tests and local tools that need its counters.

    with ProducerThread(settings) as producer:      # resolves the URL, starts reading
        wait_for(lambda: producer.stats.published > 100)
    producer.exit_code                               # 0 once stopped cleanly

``stop()`` does what SIGTERM does (stop reading, flush, exit) and returns the exit code;
whatever the service raised is raised again from ``stop()``: a failed flush's
:class:`~crypto_live.errors.DeliveryError`, a crashed task's
:class:`~crypto_live.errors.ServiceError`.
"""

from __future__ import annotations

import asyncio
import threading

from crypto_live.settings import ProducerSettings

from .service import ProducerService
from .source import ConnectionPlan, plan_connections, resolve_url
from .stats import Stats


class ProducerThread:
    def __init__(self, settings: ProducerSettings, plans: list[ConnectionPlan] | None = None):
        self.service = ProducerService(
            settings, plans if plans is not None else plan_connections(resolve_url(settings), settings.symbols)
        )
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    @property
    def stats(self) -> Stats:
        return self.service.stats

    def start(self) -> ProducerThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> int | None:
        self.service.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"producer did not stop within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.exit_code

    def _run(self) -> None:
        try:
            self.exit_code = asyncio.run(self.service.main(install_signal_handlers=False))
        except BaseException as exc:  # noqa: BLE001 - surfaced by stop()
            self.error = exc

    def __enter__(self) -> ProducerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self.stop()
