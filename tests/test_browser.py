"""A real browser: headless Debian Chromium opens the app, runs the detection tab on an example and sees both
result images. Skipped only where Chromium is not installed (``.ci/run`` installs it and requires the test)."""

import os
import shutil
import socket
import time

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
available = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)
if not available and os.environ.get("DISTILL_LENS_REQUIRE_BROWSER"):
    raise RuntimeError("the browser test is required but chromium/chromedriver are not installed")
pytestmark = pytest.mark.skipif(not available, reason="Debian's chromium and chromium-driver are not installed")


@pytest.fixture(scope="module")
def app_url():
    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_app()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(app.EXAMPLES_DIR)])
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def click(driver, element, timeout: float = 30):
    """Click as a user would: scroll it into view and wait until no loading overlay covers it."""
    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)

    def try_click(_):
        try:
            element.click()
            return True
        except ElementClickInterceptedException:
            return False

    WebDriverWait(driver, timeout, poll_frequency=0.25).until(try_click)


def test_detection_tab_in_a_real_browser(app_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(app_url)
    example = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#detection-examples button, "
                                                                       "#detection-examples .gallery-item")))
    click(browser, example)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detection-image img"))
    time.sleep(0.5)
    click(browser, browser.find_element(By.ID, "detection-run"))
    for role in ("teacher", "student"):
        image = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#detection-{role} img")))
        wait.until(lambda d, img=image: d.execute_script("return arguments[0].complete && "
                                                         "arguments[0].naturalWidth > 0", img))
        assert image.get_attribute("src")
    browser.save_screenshot(str(tmp_path / "detection.png"))
