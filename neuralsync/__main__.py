"""``python -m neuralsync``: the ``neuralsync`` command."""

import sys

from .cli import main

sys.exit(main())
