"""``python -m neuralsync.cli``: the ``neuralsync`` command."""

import sys

from .app import main

sys.exit(main())
