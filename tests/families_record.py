"""A pytest plugin (loaded by tests/conftest.py) recording which family passed which feature test, for docs/families.md.

Tests carry ``@pytest.mark.feature(name)``; their family row is the ``variant`` parameter of the test (when the
module runs several configurations of a family) or the ``row`` attribute of the test class. With the environment
variable ``VLM_LENS_FAMILIES_JSON`` set to a path, the outcomes of the session are written there as JSON::

    VLM_LENS_FAMILIES_JSON=docs/families.json python -m pytest tests/models
    python docs/families_table.py            # docs/families.json -> docs/families.md

Nothing is written without the variable, so ordinary test runs leave the docs alone.
"""

from __future__ import annotations

import json
import os
import platform
from collections import defaultdict
from pathlib import Path

import pytest

_OUTCOMES: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "feature(name): the docs/families.md column this test proves")


def _row(item) -> str | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "variant" in params:
        return str(params["variant"])
    return getattr(item.cls, "row", None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("feature")
    row = _row(item)
    if marker is None or row is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _OUTCOMES[row][marker.args[0]].append(report.outcome)


def pytest_sessionfinish(session, exitstatus) -> None:
    target = os.environ.get("VLM_LENS_FAMILIES_JSON")
    if not target or not _OUTCOMES:
        return
    import torch
    import transformers

    results = {row: {name: ("passed" if all(o == "passed" for o in outcomes) else
                            "failed" if "failed" in outcomes else "skipped")
                     for name, outcomes in sorted(features.items())}
               for row, features in sorted(_OUTCOMES.items())}
    counts = {row: {name: len(outcomes) for name, outcomes in features.items()} for row, features in _OUTCOMES.items()}
    Path(target).write_text(json.dumps({
        "transformers": transformers.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "results": results, "tests": counts}, indent=2) + "\n")
