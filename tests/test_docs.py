"""Every code block of the docs runs: ``python`` blocks are executed in order, one namespace per page (a page reads
like a notebook), and ``console`` blocks' ``$ vlm-lens ...`` lines are run through the CLI and must exit 0, or the
code written after them as ``# exits N``. Each page runs in a fresh temporary folder.

A block that needs what a test machine lacks (a real checkpoint, a GPU) is skipped when the line before its fence
is ``<!-- skip-test -->``; keep those rare. Blocks of other languages (``text`` output, ``json``) are not code.
The docstring examples of the figure and report modules run as doctests.
"""

from __future__ import annotations

import doctest
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
SKIP = "<!-- skip-test -->"
DOCTESTED = ["vlm_lens.plot", "vlm_lens.plot.style", "vlm_lens.report.html"]


def blocks(page: Path) -> list[tuple[int, str, str, bool]]:
    """``(line, language, code, skipped)`` for each fenced block of ``page``."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        indent = len(match.group("indent"))
        code = "\n".join(line[indent:] for line in match.group("body").splitlines())
        found.append((text.count("\n", 0, match.start()) + 1, match.group("lang"), code, before == SKIP))
    return found


def run_console(code: str, where: str) -> None:
    from vlm_lens.cli import main

    for line in code.splitlines():
        if not line.startswith("$ "):
            continue  # output shown after a command
        command = line[2:]
        expected = re.search(r"#\s*exits\s+(\d+)\s*$", command)
        argv = shlex.split(command, comments=True)
        assert argv and argv[0] == "vlm-lens", f"{where}: console blocks run vlm-lens commands only: {line!r}"
        code_ = main(argv[1:])
        assert code_ == (int(expected.group(1)) if expected else 0), f"{where}: {line!r} exited {code_}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, lang, code, skipped in blocks(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        if skipped or lang not in ("python", "py", "console"):
            continue
        if lang == "console":
            run_console(code, where)
        else:
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - running the docs is the test


def test_skipped_blocks_stay_rare():
    every = [b for page in PAGES for b in blocks(page) if b[1] in ("python", "py", "console")]
    skipped = [b for b in every if b[3]]
    assert len(skipped) <= max(3, len(every) // 10), f"{len(skipped)} of {len(every)} doc blocks are skipped"


def test_the_block_parser():
    page = "text\n<!-- skip-test -->\n```python\nx = 1\n```\n\n  ```console\n  $ vlm-lens demo\n  ```\n"
    path = Path(__import__("tempfile").mkdtemp()) / "p.md"
    path.write_text(page)
    assert blocks(path) == [(3, "python", "x = 1", True), (7, "console", "$ vlm-lens demo", False)]


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
