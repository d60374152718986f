"""``python -m riprap.cli``: the ``riprap`` command."""

from __future__ import annotations

import sys

from riprap.cli import main

sys.exit(main())
