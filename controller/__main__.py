"""``python -m controller`` is the same as the ``v2g-controller`` command."""

import sys

from controller.cli import main

sys.exit(main())
