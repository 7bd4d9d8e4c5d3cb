"""The report of dataset runs: one self-contained page with a table and a figure per question of the paper, the
comparison's Holm-corrected significant differences, a note (not a failure) for an analysis a run lacks, and a
layout that fits a 1400 px window with figures that enlarge on click."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from test_report import _browser

import vlm_lens as vl
from vlm_lens.biqa.analyses import Attention, Quality
from vlm_lens.core.errors import VlmLensError
from vlm_lens.report import write_run_report


def figures_of(page: str) -> list[str]:
    return re.findall(r'data-figure="([^"]+)"', page)


@pytest.fixture(scope="module")
def compared(zoo_runs, tmp_path_factory):
    c = vl.compare(zoo_runs, n_boot=20, alpha=0.5)
    path = write_run_report(zoo_runs, tmp_path_factory.mktemp("runs") / "runs.html", comparison=c)
    return c, path


def test_one_page_with_a_table_and_a_figure_per_question(zoo_runs, compared):
    c, path = compared
    page = path.read_text()
    assert "default-src 'none'" in page and not re.search(r"https?://", page)
    assert figures_of(page) == ["score_scatter", "first_top1", "lens_agreement", "segment_lines",
                                "head_mass:one-stage", "head_mass:two-stage", "instability"]
    assert page.count('src="data:image/png;base64,') == 7
    srcc = zoo_runs["two-stage"]["quality.correlations"].query("score == 'qalign' and metric == 'srcc'").value.iloc[0]
    assert f"{srcc:.4f}" in page
    for row in c["significant"].itertuples():
        assert row.what in page
    assert "Significant differences (Holm-corrected within each table)" in page


def test_one_run_and_a_run_without_an_analysis(models, zoo_runs, tmp_path):
    single = write_run_report(zoo_runs["one-stage"], tmp_path / "one.html").read_text()
    assert "Significant differences" not in single and "instability" in figures_of(single)
    ds = vl.datasets.from_images([random_picture(k) for k in range(3)], [1.0, 2.0, 3.0])
    bare = vl.run(models["mha"], ds, [Quality(n_boot=10), Attention()], progress=False)
    page = write_run_report(bare, tmp_path / "bare.html").read_text()
    assert "instability" not in figures_of(page)
    assert "this section needs the instability.summary table" in page and "Instability(k=5)" in page
    with pytest.raises(VlmLensError, match="html"):
        write_run_report(bare, tmp_path / "bare.txt")


def random_picture(seed: int):
    from conftest import random_image

    return random_image(seed)


def page_tables(page: str) -> list[list[list[str]]]:
    """Every ``<table>`` of the page as rows of cell texts (header row first)."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr" and self.tables:
                self.tables[-1].append([])
            elif tag in ("td", "th") and self.tables:
                self.cell = ""

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.tables[-1][-1].append(self.cell.strip())
                self.cell = None

    parser = Tables()
    parser.feed(page)
    return parser.tables


def test_tables_on_the_page_are_the_runs_tables(zoo_runs, compared):
    _, path = compared
    header, *rows = page_tables(path.read_text())[0]
    expected = pd.concat([r["quality.correlations"].assign(run=n) for n, r in zoo_runs.items()], ignore_index=True)
    values = [float(row[header.index("value")]) for row in rows]
    assert values == pytest.approx(expected["value"].round(4).tolist())
    assert [row[header.index("run")] for row in rows] == expected["run"].tolist()


def test_run_report_layout_in_headless_chromium(compared):
    from selenium.webdriver.common.by import By

    _, path = compared
    browser = _browser()
    try:
        browser.get(path.resolve().as_uri())
        width = browser.execute_script("return document.documentElement.clientWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width
        for img in browser.find_elements(By.CSS_SELECTOR, "figure img"):
            assert img.rect["x"] + img.rect["width"] <= width
        browser.find_element(By.CSS_SELECTOR, "#figure-segment_lines img").click()
        assert browser.find_element(By.ID, "lightbox").is_displayed()
        errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert errors == []
    finally:
        browser.quit()
