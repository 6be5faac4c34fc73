"""How every crypto-live process logs: one format, third-party noise kept down."""

from __future__ import annotations

import logging
import sys
import warnings


def configure(level: str) -> None:
    """Log to stderr at ``level``; boto's INFO lines ("Found credentials ...") are noise here."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    silence_authlib_httpx_warning()
    logging.getLogger("botocore").setLevel(max(logging.WARNING, logging.getLogger().level))


def silence_authlib_httpx_warning() -> None:
    """Hide authlib's import-time deprecation notice (pulled in by quixstreams).

    authlib.deprecate installs an "always" filter for its warning class when it is
    imported, which would override a filter set earlier; so import it first, then
    put ours in front.
    """
    try:
        import authlib.deprecate  # noqa: F401
    except ImportError:
        return
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
