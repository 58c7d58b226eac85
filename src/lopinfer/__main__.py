"""``python -m lopinfer``: the ``lopinfer`` command."""

import sys

from .cli import main

sys.exit(main())
