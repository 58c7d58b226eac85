"""Assertions shared by the tests: always against the unsplit model (invariant 1).

The public :mod:`lopinfer.testing` is the one implementation; these names are kept so
every test folder imports them as before.
"""

from lopinfer.testing import assert_exact, reference

__all__ = ["assert_exact", "reference"]
