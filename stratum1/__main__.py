"""``python -m stratum1``: the same as the ``stratum1`` command."""

import sys

from .cli import main

sys.exit(main())
