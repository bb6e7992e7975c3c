"""The dashboard page in a real browser: Debian's headless Chromium driven by Selenium
through Debian's chromedriver (nothing downloaded), against `python -m
pipeline.apps.dashboard` reading objects and a table in moto's real HTTP server.

Skips, saying what to install, when chromium or chromedriver is missing."""

import base64
import os
import shutil
import tempfile
import time

import pytest
from test_dashboard import (
    HOSTILE,
    LATEST_COUNTS,
    NEW_COUNTS,
    NEW_TRANSITIONS,
    TABLE_COUNTS,
    TRANSITIONS,
    WINDOWS,
    C,
    S3Fixture,
    get_json,
    iso_utc,
    publish,
    running_dashboard,
    window_counts,
    window_end_ms,
)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver (as root; or: bash .ci/install-browser)"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
WAIT_SECS = 20


def missing_browser() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (Debian package {package}); install the browser with: {INSTALL}"
    return None


def wait_for(condition, what: str, timeout: float = WAIT_SECS):
    """Polls `condition` until it returns something true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def browser(tmp_path):
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: .venv/bin/pip install -e '.[test]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="dashboard-chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.set_capability("unhandledPromptBehavior", "ignore")  # so a dialog stays, to be seen
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver, width: int, height: int, mobile: bool = False) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def screenshot(driver, path, full_page: bool = False) -> str:
    """The viewport (or the whole page) as a PNG."""
    params = {"format": "png"}
    if full_page:
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        params.update(
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
    data = driver.execute_cdp_cmd("Page.captureScreenshot", params)["data"]
    with open(path, "wb") as handle:
        handle.write(base64.b64decode(data))
    return str(path)


def rows(driver, table_id: str) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
        ".map(tr => Array.from(tr.cells).map(td => td.textContent));",
        f"#{table_id}",
    )


def level_table(driver) -> dict[str, int]:
    return {level: int(players) for level, players in rows(driver, "level-table") if players != "0"}


def svg_texts(driver, chart_id: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' text')).map(t => t.textContent);",
        f"#{chart_id}",
    )


def hover_text(driver, chart_id: str, selector: str, contains: str) -> str:
    """Moves the mouse onto the chart element (matching `selector`) whose data or label
    holds `contains`, and returns the chart's hover label text."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    for element in driver.find_elements(By.CSS_SELECTOR, f"#{chart_id} {selector}"):
        ActionChains(driver).move_to_element(element).perform()
        text = driver.execute_script(
            "const layer = document.querySelector(arguments[0] + ' .hoverlayer');"
            "return layer ? layer.textContent : '';",
            f"#{chart_id}",
        )
        if contains in text:
            return text
    return ""


def assert_no_dialog(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    raise AssertionError(f"a dialog opened: {text!r}")


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.browser
def test_the_page_shows_the_published_numbers_updates_live_and_renders_slugs_as_text(
    browser,
    moto_endpoint,
    tmp_path,
):
    driver = browser
    fixture = S3Fixture(moto_endpoint)
    errors = []
    with running_dashboard(*fixture.flags()) as url:
        set_viewport(driver, 1280, 800)
        driver.get(url + "/")

        # The level map: now, from the level table (fresher than the latest window).
        shown = {level: n for level, n in TABLE_COUNTS.items() if n}
        wait_for(lambda: level_table(driver) == shown, "the level table's numbers")
        assert rows(driver, "level-table")[-1] == [HOSTILE, "3"]  # not in the catalogue: last
        wait_for(lambda: HOSTILE in svg_texts(driver, "level-chart"), "the level chart's labels")
        assert "50" in svg_texts(driver, "level-chart")  # the number next to shadow-guard's bar

        # The flows: the latest window's top transitions and its Sankey diagram.
        top = wait_for(lambda: rows(driver, "flow-table"), "the flows table")
        assert top[0] == ["(outside)", "dungeons-of-kithgard", "6"]
        assert [HOSTILE, "(outside)", "1"] in top
        labels = wait_for(lambda: svg_texts(driver, "flow-chart"), "the Sankey diagram")
        assert HOSTILE in labels and "(outside)" in labels
        assert driver.find_element("id", "as-of").text == f"as of {iso_utc(window_end_ms(WINDOWS - 1))}"

        # History: the stuck table (the hostile level: every move out of it is an exit).
        stuck = wait_for(lambda: rows(driver, "stuck-table"), "the stuck table")
        assert stuck[0] == [HOSTILE, "20", "20", "0", "0", "100%", "0%"]
        assert stuck[1] == [C, "200", "120", "40", "40", "60%", "20%"]
        options = driver.execute_script(
            "return Array.from(document.querySelectorAll('#series-level option')).map(o => o.textContent);"
        )
        assert HOSTILE in options
        wait_for(lambda: len(rows(driver, "series-table")) == WINDOWS, "the series table")

        # Hover shows the exact number, and the hostile slug as text.
        assert "players: 3" in hover_text(driver, "level-chart", "g.point path", HOSTILE)
        assert hover_text(driver, "flow-chart", ".sankey-node", HOSTILE)
        assert_no_dialog(driver)
        assert driver.execute_script("return document.querySelectorAll('img, [onerror]').length;") == 0

        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).move_to_element(driver.find_element("tag name", "h1")).perform()
        driver.execute_script("window.scrollTo(0, 0);")
        screenshot(driver, tmp_path / "dashboard-1280x800.png")
        screenshot(driver, tmp_path / "dashboard-1280-full.png", full_page=True)
        errors += console_errors(driver)

        # A new window: pushed into the open page, no reload (the marker survives).
        driver.execute_script("window.__beforeUpdate = 'still here';")
        new_end = iso_utc(window_end_ms(WINDOWS))
        publish(fixture.put, window_end_ms(WINDOWS), NEW_COUNTS, NEW_TRANSITIONS)
        published = time.monotonic()
        wait_for(
            lambda: driver.execute_script("return document.body.dataset.window;") == new_end, "the new window"
        )
        print(f"the page showed the new window {time.monotonic() - published:.3f} s after it was published")
        wait_for(lambda: level_table(driver) == NEW_COUNTS, "the new window's numbers")
        assert driver.execute_script("return window.__beforeUpdate;") == "still here"
        assert rows(driver, "flow-table")[0] == ["gems-in-the-deep", "kounter-kithwise", "11"]
        wait_for(lambda: len(rows(driver, "series-table")) == WINDOWS + 1, "the series with the new window")

        # The scrubber replays a past window; Live returns.
        past = 3
        windows = get_json(url + "/api/history?span=1h")["windows"]  # the page's default span
        driver.execute_script(
            "const s = document.getElementById('scrubber');"
            "s.value = String(arguments[0]); s.dispatchEvent(new Event('input'));",
            windows.index(iso_utc(window_end_ms(past))),
        )
        wait_for(lambda: level_table(driver) == window_counts(past), "the replayed window's numbers")
        assert driver.find_element("id", "replay-banner").is_displayed()
        assert rows(driver, "flow-table")[0] == ["(outside)", "dungeons-of-kithgard", "6"]
        driver.find_element("id", "live-button").click()
        wait_for(lambda: level_table(driver) == NEW_COUNTS, "the live numbers again")
        assert not driver.find_element("id", "replay-banner").is_displayed()

        # Phone width: no horizontal scroll.
        set_viewport(driver, 390, 844, mobile=True)
        wait_for(
            lambda: driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth && window.innerWidth === 390;"
            ),
            "no horizontal scroll at 390 px",
        )
        driver.execute_script("window.dispatchEvent(new Event('resize'));")  # plotly's responsive resize
        wait_for(  # plotly redraws on resize; the Sankey diagram moves its nodes in an animation
            lambda: driver.execute_script(
                "const inside = (chart, selector) => Array.from(document.querySelectorAll(chart + ' ' + selector))"
                "  .every(e => e.getBoundingClientRect().right <= 390);"
                "return inside('#level-chart', '.main-svg') && inside('#flow-chart', '.main-svg')"
                "  && inside('#flow-chart', '.sankey-node') && inside('#series-chart', '.main-svg');"
            ),
            "the charts to fit the phone width",
        )
        for chart, table in (
            ("level-chart", "level-table"),
            ("flow-chart", "flow-table"),
            ("series-chart", "series-table"),
        ):
            assert driver.execute_script(
                "return document.getElementById(arguments[0]).getBoundingClientRect().bottom"
                " <= document.getElementById(arguments[1]).getBoundingClientRect().top + 1;",
                chart,
                table,
            ), f"{chart} overlaps {table} at phone width"
        driver.execute_script("window.scrollTo(0, 0);")
        screenshot(driver, tmp_path / "dashboard-390x844.png")
        screenshot(driver, tmp_path / "dashboard-390-full.png", full_page=True)

        # Nothing new for longer than two windows: a clear stalled banner.
        publish(fixture.put, window_end_ms(WINDOWS + 1), LATEST_COUNTS, TRANSITIONS, interval_secs=1)
        banner = wait_for(
            lambda: (
                driver.find_element("id", "banner").is_displayed()
                and driver.find_element("id", "banner").text
            ),
            "the stalled banner",
        )
        assert banner.startswith("Stalled: no new window for")
        assert driver.find_element("id", "connection").text == "stalled"

        # Everything came from the dashboard itself.
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(r => r.name);")
        assert resources and all(name.startswith(url + "/") for name in resources), resources
        assert_no_dialog(driver)
        errors += console_errors(driver)
    # The dashboard server is gone: the page says so (and keeps the last numbers).
    wait_for(lambda: driver.find_element("id", "connection").text == "disconnected", "the disconnected state")
    assert driver.find_element("id", "banner").text.startswith("Lost the connection to the dashboard server")
    assert level_table(driver) == LATEST_COUNTS
    assert errors == []
    for name in ("dashboard-1280x800.png", "dashboard-390x844.png"):
        print("screenshot:", tmp_path / name)
