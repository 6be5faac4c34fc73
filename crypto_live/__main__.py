"""``python -m crypto_live``: the same as the ``crypto-live`` command."""

import sys

from crypto_live.cli import main

sys.exit(main())
