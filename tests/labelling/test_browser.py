"""A real browser (headless Chromium, Debian's binary and driver) labels pairs on the page by
clicking and by keyboard; the reward model's dataset grows by exactly those answers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tdimitation.algorithms import PreferenceComparisons
from tests.labelling.helpers import CARTPOLE_FIXED, cartpole_random, gatherer, live_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
# Where the page's screenshot is kept (git-ignored).
ARTEFACTS = Path(
    os.environ.get("TDIMITATION_TEST_ARTEFACTS", Path(__file__).parents[2] / "test-artefacts")
)


def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1000,700",
    ):
        options.add_argument(flag)
    # The installed driver: nothing is downloaded at run time.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_browser_labels_by_click_and_keyboard(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    module = PreferenceComparisons(
        CARTPOLE_FIXED,
        agent=None,
        trajectories=cartpole_random(),
        num_iterations=1,
        total_comparisons=12,
        initial_comparison_frac=0.5,
        fragment_length=10,
        reward_epochs=1,
        initial_epoch_multiplier=1,
        fragment_warning_threshold=0.0,
    )
    g = gatherer(tmp_path)
    module.set_gatherer(g)
    module.set_trajectories(module._trajectory_source)
    module.preference_query(module.trajectories)  # publishes 6 pairs, none answered yet
    assert len(module.dataset) == 0 and len(g.open_ids) == 6
    token = g.store.add_labeller("tester")
    driver = browser()
    try:
        with live_server(g.store, tmp_path / "clips") as port:
            driver.get(f"http://127.0.0.1:{port}/?token={token}")
            wait = WebDriverWait(driver, 20)
            body = driver.find_element(By.TAG_NAME, "body")
            shown = []

            def next_shown():
                # Wait for a query the page has not shown yet (its id is on the body).
                wait.until(
                    lambda d: body.get_attribute("data-query-id") not in (None, "", *shown[-1:])
                )
                shown.append(body.get_attribute("data-query-id"))

            def message(text):
                wait.until(lambda d: text in d.find_element(By.ID, "message").text)

            next_shown()
            # Both clips loaded as images.
            for side in ("left", "right"):
                script = f"const i = document.getElementById('{side}'); return i.naturalWidth"
                wait.until(lambda d, script=script: d.execute_script(script) > 0)
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTEFACTS / "labelling_page.png"))
            driver.find_element(By.ID, "btn-left").click()  # pair 1: left
            message("Saved: left")
            next_shown()
            body.send_keys(Keys.ARROW_RIGHT)  # pair 2: right
            message("Saved: right")
            next_shown()
            driver.find_element(By.ID, "btn-equal").click()  # pair 3: equal
            message("Saved: equal")
            next_shown()
            body.send_keys(Keys.ARROW_DOWN)  # pair 4: can't tell ...
            next_shown()
            body.send_keys("u")  # ... undone: pair 4 comes back
            message("Undone: cant tell")
            assert body.get_attribute("data-query-id") == shown[-2]
            body.send_keys(Keys.ARROW_UP)  # pair 4: equal
            message("Saved: equal")
            assert body.get_attribute("data-query-id") == shown[-1]
            driver.find_element(By.ID, "btn-cant_tell").click()  # pair 5: can't tell
            message("Saved: cant tell")
            wait.until(lambda d: "5 answered, 1 open" in d.find_element(By.ID, "progress").text)
    finally:
        driver.quit()
    assert (ARTEFACTS / "labelling_page.png").stat().st_size > 1000
    module._receive_answers()
    # Four preferences reach the dataset; "can't tell" leaves its pair out; one pair waits.
    assert len(module.dataset) == module.comparisons == 4
    assert module.dataset.labels().tolist() == [1.0, 0.0, 0.5, 0.5]
    assert len(g.open_ids) == 1 and module.pending.ids.numel() == 1
