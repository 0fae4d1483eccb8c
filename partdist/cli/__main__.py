"""``python -m partdist.cli``: the ``partdist`` command."""

import sys

from . import main

sys.exit(main())
