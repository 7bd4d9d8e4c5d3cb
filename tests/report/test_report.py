"""The HTML report: one self-contained file whose embedded data is the Trace's own, and, opened in headless
Chromium, a page that renders the tokens, reveals a token's per-layer top-k on click, loads nothing from anywhere
and logs no errors. The screenshot is kept as ``tests/artifacts/report.png``."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import PROMPT, random_image

import vlm_lens as vl
from vlm_lens.report.html import write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def t(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "noise.png"
    random_image(5).save(path)
    return vl.trace(models["mha"], str(path), PROMPT, generate=4)


@pytest.fixture(scope="module")
def report(t, tmp_path_factory):
    return write_report(t, tmp_path_factory.mktemp("report") / "report.html", topk=3, targets=["good", "poor"])


def embedded(path: Path) -> dict:
    match = re.search(r'<script type="application/json" id="vlm-lens-data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(match.group(1))


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    outside = re.findall(r'(?:src|href)\s*=\s*"(?!data:)([^"]*)"', text) + re.findall(r"url\((?!data:)", text)
    assert outside == []
    assert not re.search(r"https?://", text)
    figures = re.findall(r'data-figure="([a-z_]+)"', text)
    assert figures == ["latent_output", "topk", "target_words", "attention", "attention_mass", "patch_overlay"]
    assert text.count('src="data:image/png;base64,') == len(figures) + 1  # and the input image


def test_report_data_is_the_trace(t, report):
    data = embedded(report)
    assert data["tokens"] == [[int(p), int(i), str(x), str(s)] for p, i, x, s in t.tokens.itertuples(index=False)]
    assert data["layers"] == t.layers and data["k"] == 3
    assert sorted(int(p) for p in data["topk"]) == list(range(len(t.tokens)))  # 16 image tokens: all included
    lens = t.lens(topk=3, positions=[t.prompt_length])
    for layer_index, layer in enumerate(t.layers):
        rows = lens[lens.layer == layer]
        stored = data["topk"][str(t.prompt_length)][layer_index]
        assert [tok for tok, _ in stored] == rows.token.tolist()
        assert [p for _, p in stored] == pytest.approx(rows.prob.tolist(), abs=1e-5)
    span = t.spans["image"]
    assert data["images"] == [{"index": 0, "span": [span.start, span.stop], "grid": list(span.grid),
                               "row": span.grid[1]}]


def test_report_options_and_errors(t, tmp_path):
    small = write_report(t, tmp_path / "small.html", figures=False, max_image_positions=4)
    data = embedded(small)
    assert not any(t.tokens.segment[int(p)] == "image" for p in data["topk"])
    assert "image tokens left out" in small.read_text() and "data-figure" not in small.read_text()
    back = vl.Trace.load(t.save(tmp_path / "trace"))
    bare = write_report(back, tmp_path / "bare.html")
    assert embedded(bare)["topk"] == {} and "no model attached" in bare.read_text()
    assert re.findall(r'data-figure="([a-z_]+)"', bare.read_text()) == ["attention", "attention_mass",
                                                                         "patch_overlay"]
    from vlm_lens.plot import topk

    given = write_report(t, tmp_path / "given.html", figures={"topk": topk(t, k=2)})
    assert re.findall(r'data-figure="([a-z_]+)"', given.read_text()) == ["topk"]
    with pytest.raises(vl.VlmLensError, match="html"):
        write_report(t, tmp_path / "report.txt")
    with pytest.raises(vl.VlmLensError, match="topk"):
        write_report(t, tmp_path / "r.html", topk=0)


def _browser():
    """Headless Chromium through chromedriver; skipped where it is not installed, unless the environment sets
    VLM_LENS_REQUIRE_BROWSER=1 (CI does: there a missing browser is a failure, not a skip)."""
    missing = pytest.fail if os.environ.get("VLM_LENS_REQUIRE_BROWSER") == "1" else pytest.skip
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")
    if not chromium or not driver:
        missing("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='vlm_lens_chromium_')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def test_report_in_headless_chromium(t, report):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser = _browser()
    try:
        browser.get(report.resolve().as_uri())
        chips = browser.find_elements(By.CSS_SELECTOR, "#tokens .tok")
        n_image = len(t.spans["image"])
        assert len(chips) == len(t.tokens) - n_image + 1  # each image folds into one chip
        segments = {chip.get_attribute("data-segment") for chip in chips if chip.get_attribute("data-segment")}
        assert segments == set(t.tokens.segment) - {"image"}
        colours = {chip.value_of_css_property("background-color") for chip in chips}
        assert len(colours) == 4  # system, image, instruction, response each in their own colour

        selected = browser.find_element(By.CSS_SELECTOR, ".tok.selected")  # the page opens on the answer's start
        assert int(selected.get_attribute("data-pos")) == t.prompt_length - 1

        response = [c for c in chips if c.get_attribute("data-segment") == "response"][0]
        response.click()
        table = browser.find_element(By.ID, "topk-table")
        assert table.is_displayed()
        position = int(response.get_attribute("data-pos"))
        assert f"position {position}" in browser.find_element(By.ID, "lens-title").text
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert [int(r.get_attribute("data-layer")) for r in rows] == t.layers[::-1]
        top = t.lens(topk=3, positions=[position])
        first = rows[0].find_elements(By.CSS_SELECTOR, "td")[0].text
        best = top[(top.layer == t.layers[-1]) & (top["rank"] == 1)].iloc[0]
        assert first == f"{best.token} {best.prob:.3f}"

        title = browser.find_element(By.ID, "lens-title")
        word = [c for c in chips if c.get_attribute("data-segment") == "instruction"][0]
        ActionChains(browser).move_to_element(word).perform()  # hovering previews another token ...
        assert f"position {word.get_attribute('data-pos')} " in title.text
        ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
        assert f"position {position} " in title.text  # ... and leaving returns to the pinned one

        image_chip = browser.find_element(By.CSS_SELECTOR, ".image-group")
        cells = browser.find_elements(By.CSS_SELECTOR, "#image-tokens-0 .cell")
        assert len(cells) == n_image and not cells[0].is_displayed()
        image_chip.click()
        cells[5].click()
        assert f"position {t.spans['image'].start + 5}" in browser.find_element(By.ID, "lens-title").text

        figures = browser.find_elements(By.CSS_SELECTOR, "#figures img")
        assert len(figures) == 6 and all(browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 100", img) for img in figures)
        fetched = browser.execute_script("return performance.getEntriesByType('resource')"
                                         ".map(e => e.name).filter(n => !n.startsWith('data:'))")
        assert fetched == []
        errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def zoo_report(tmp_path_factory):
    """A real BIQA answer (description, then level) of the zoo's one-stage checkpoint, as a report."""
    from vlm_lens import zoo

    folder = tmp_path_factory.mktemp("zoo_report")
    images, _ = zoo.synthetic(3, seed=1)
    images[2].save(folder / "img.png")
    t = vl.trace(vl.load("zoo:tiny-biqa-one-stage"), str(folder / "img.png"), PROMPT, generate=48)
    return t, write_report(t, folder / "report.html", targets=list(vl.biqa.LEVELS))


def test_report_opens_and_captions_at_the_decision_position(zoo_report):
    from vlm_lens.biqa.answer import locate, segment_labels

    t, path = zoo_report
    layout = locate(t)
    data = embedded(path)
    assert data["start"] == data["decision"] == layout.decision_pos != t.prompt_length - 1
    assert data["segments"] == segment_labels(t, layout)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", path.read_text())
    where = f"decision position {layout.decision_pos} (before &#x27;{layout.level}&#x27;)"
    assert sum(where in c for c in captions) == 4  # latent output, top-k, target words, attention
    assert not any("last prompt position" in c for c in captions)


def test_custom_figures_are_captioned_by_what_they_show(zoo_report, tmp_path):
    from vlm_lens.plot import topk

    t, _ = zoo_report
    page = write_report(t, tmp_path / "custom.html", figures={"topk": topk(t, t.prompt_length - 1, k=3)}).read_text()
    caption = re.findall(r"<figcaption>(.*?)</figcaption>", page)[0]
    assert f"last prompt position {t.prompt_length - 1}" in caption and "decision" not in caption


def test_an_image_given_in_memory_is_said(models, tmp_path):
    t = vl.trace(models["mha"], random_image(3), PROMPT)
    page = write_report(t, tmp_path / "memory.html", figures=False).read_text()
    assert "input image 0 is not shown" in page and "given in memory" in page
    shown = write_report(t, tmp_path / "shown.html", figures=False, image=random_image(3)).read_text()
    assert "is not shown" not in shown and 'alt="input image 0"' in shown


def test_report_layout_in_headless_chromium(zoo_report):
    """At a 1400 px window: nothing overflows sideways, the top-k table fits its panel (every rank visible), text
    is not cut, figures enlarge on click and close with Escape."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    t, path = zoo_report
    browser = _browser()
    try:
        browser.get(path.resolve().as_uri())
        width = browser.execute_script("return document.documentElement.clientWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width
        selected = browser.find_element(By.CSS_SELECTOR, ".tok.selected")
        assert "decision" in selected.get_attribute("class")
        table = browser.find_element(By.ID, "topk-table")
        lens = browser.find_element(By.ID, "lens")
        assert table.rect["x"] + table.rect["width"] <= lens.rect["x"] + lens.rect["width"] + 1
        heads = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
        assert heads == ["layer"] + [f"rank {r}" for r in range(1, 6)]
        cut = browser.execute_script(
            "return [...document.querySelectorAll('#topk-table td, #topk-table th, figcaption, h1, h2, dd')]"
            ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
        assert cut == []
        for img in browser.find_elements(By.CSS_SELECTOR, "#figures img"):
            assert img.rect["x"] + img.rect["width"] <= width
        figure = browser.find_element(By.CSS_SELECTOR, "#figure-latent_output img")
        natural = browser.execute_script("return arguments[0].naturalWidth", figure)
        figure.click()
        box = browser.find_element(By.ID, "lightbox")
        assert box.is_displayed()
        big = box.find_element(By.TAG_NAME, "img")
        assert browser.execute_script("return arguments[0].getBoundingClientRect().width", big) == \
            pytest.approx(natural, abs=1)
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        assert not box.is_displayed()
        errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "report_zoo.png"))
    finally:
        browser.quit()
