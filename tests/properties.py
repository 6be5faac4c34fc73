"""The hypothesis settings every property test uses (a module sets its own example count)."""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

#: Reproducible and quick: the same examples on every run, nothing stored between runs.
#: No shrinking: a failure is reported as found (shrinking nested JSON can take minutes).
PROPERTY = settings(
    derandomize=True,
    database=None,
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
