"""The family-independent invariants (invariants.py) on every row of the table of families (families.py).

Each invariant runs once per row, against the row's own tiny checkpoint; what is specific to a family (its spans,
its masks, several images) is in its ``test_<family>.py``.
"""

from __future__ import annotations

from families import FAMILIES, family_fixtures
from invariants import FamilyInvariants

checkpoint, m, eager, single, batch = family_fixtures()


def pytest_generate_tests(metafunc) -> None:
    """One run per row, module-scoped so that a row's models are built once; a row whose family file replaces
    this invariant with its own version (``Family.replaces``) runs that version instead."""
    names = [row for row, family in FAMILIES.items() if metafunc.function.__name__ not in family.replaces]
    metafunc.parametrize("variant", names, scope="module")


class TestInvariants(FamilyInvariants):
    """Every test of :class:`FamilyInvariants`, parametrized over the rows by ``variant``."""
