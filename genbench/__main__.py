"""``python -m genbench ...`` is the ``bench`` command."""

import sys

from genbench.cli import main

sys.exit(main())
