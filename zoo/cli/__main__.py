"""``python -m zoo.cli`` (how torchrun starts zoo: docs/distributed.md)."""

import sys

from zoo.cli import main

sys.exit(main())
