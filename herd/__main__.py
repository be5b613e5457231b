"""`python -m herd` runs the `herd` command (also how torchrun launches it)."""

import sys

from herd.cli import main

sys.exit(main())
