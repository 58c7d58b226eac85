"""``python -m lopinfer.cli``: the ``lopinfer`` command."""

import sys

from .main import main

sys.exit(main())
