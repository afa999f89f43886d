"""``python -m eslcdr`` is the ``eslcdr`` command."""

import sys

from .cli import main

sys.exit(main())
