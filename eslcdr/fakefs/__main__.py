"""``python -m eslcdr.fakefs``: the stand-in alone, as ``eslcdr fakefs``."""

import sys

from .cli import main

sys.exit(main())
