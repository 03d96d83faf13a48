"""The HTML report in a real headless browser (Debian's chromium and chromium-driver, driven by
Selenium): it loads with no console errors, its plots load, clicking a header sorts the table,
a seed links to its cell's page of predictions, the reproduction table follows the overall one,
and a screenshot is saved. Skipped, with the reason, when chromium, chromedriver or selenium is
missing."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import write_report
from tests.benchmarks.test_report import _cell, _store

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

_missing = [
    what
    for what, present in (
        (
            "selenium (pip install selenium; it is in the dev extra)",
            importlib.util.find_spec("selenium"),
        ),
        (f"{CHROMIUM} (apt-get install chromium)", CHROMIUM.is_file()),
        (f"{CHROMEDRIVER} (apt-get install chromium-driver)", CHROMEDRIVER.is_file()),
    )
    if not present
]
pytestmark = pytest.mark.skipif(bool(_missing), reason="needs " + ", ".join(_missing))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never goes looking for (or downloading) one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _report(tmp_path: Path) -> Path:
    """A two-task report whose methods sort differently by name and by accuracy."""
    cells = []
    for seed in (0, 1):
        cells += [
            _cell("zero-shot", "t1", seed, [1.0, 0.0, 0.0, 0.0], eval_=400),
            _cell("few-shot", "t1", seed, [1.0, 1.0, 1.0, 0.0], eval_=1600),
            _cell("bbox", "t1", seed, [1.0, 1.0, 0.0, 0.0], tune=900, eval_=800, compute=1.5),
            _cell("aligner", "t1", seed, None, status="refused", reason="needs logprobs"),
            _cell("zero-shot", "t2", seed, [0.0, 1.0], eval_=200),
            _cell("bbox", "t2", seed, [1.0, 1.0], tune=700, eval_=500, compute=1.0),
        ]
    store = _store(tmp_path / "results" / "run", cells)
    out = tmp_path / "reports"
    write_report([store], out)
    return out


def _severe(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _methods(driver: Any, table_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    return [row.get_attribute("data-method") for row in rows]


def test_report_page_in_a_browser(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    out = _report(tmp_path)
    browser.get((out / "index.html").as_uri())
    assert browser.title.startswith("Leaderboard: run")
    assert _severe(browser) == []
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 4 + 4 + 4  # overall, t1, t2: three cost plots and a gain plot each
    for img in images:
        loaded = browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img
        )
        assert loaded, f"{img.get_attribute('src')} did not load"

    table = "leaderboard-task-t1"
    assert _methods(browser, table) == ["aligner", "bbox", "few-shot", "zero-shot"]  # by name
    header = browser.find_elements(By.CSS_SELECTOR, f"#{table} thead th")[2]
    assert header.text.startswith("accuracy")
    header.click()
    # Ascending by accuracy (0.25, 0.5, 0.75); the refused method (n/a) goes last.
    assert _methods(browser, table) == ["zero-shot", "bbox", "few-shot", "aligner"]
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert _methods(browser, table) == ["few-shot", "bbox", "zero-shot", "aligner"]
    assert header.get_attribute("aria-sort") == "descending"
    name = browser.find_elements(By.CSS_SELECTOR, f"#{table} thead th")[0]
    name.click()
    assert _methods(browser, table) == ["aligner", "bbox", "few-shot", "zero-shot"]
    # Sorting one table leaves the others alone.
    assert _methods(browser, "leaderboard-task-t2") == ["bbox", "zero-shot"]
    # The reproduction table, after the overall one: bbox's two claims (neither testable on
    # t1/t2: its gain claim is about gsm8k, its cost claim against SFT) and aligner's (refused).
    claims = "reproduction-claims"
    assert _methods(browser, claims) == ["bbox", "bbox", "aligner"]
    verdicts = browser.find_elements(By.CSS_SELECTOR, f"#{claims} tbody tr td:nth-child(6)")
    assert [v.text for v in verdicts] == ["not measurable here"] * 3
    section = browser.find_element(By.ID, "reproduction")
    overall = browser.find_element(By.ID, "overall")
    assert overall.location["y"] < section.location["y"]
    browser.find_elements(By.CSS_SELECTOR, f"#{claims} thead th")[0].click()
    assert _methods(browser, claims) == ["aligner", "bbox", "bbox"]
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert _severe(browser) == []

    # A seed links to its cell's page, which lists the stored predictions.
    link = browser.find_element(By.CSS_SELECTOR, f"#{table} tr[data-method=few-shot] a")
    assert link.text == "s0"
    link.click()
    assert browser.current_url.endswith("/cells/few-shot__t1__b__m__s0.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["e0", "e1", "e2", "e3"]
    score = browser.find_elements(By.CSS_SELECTOR, "#predictions thead th")[2]
    score.click()
    first = browser.find_element(By.CSS_SELECTOR, "#predictions tbody tr td:nth-child(2)")
    assert first.text == "e3"  # the one example scored 0
    browser.save_screenshot(str(tmp_path / "cell.png"))
    assert _severe(browser) == []
    print(f"\nscreenshots: {tmp_path / 'report.png'}, {tmp_path / 'cell.png'}")
