"""``python -m gatewayd`` is the ``gatewayd`` command."""

import sys

from gatewayd.cli import main

sys.exit(main())
