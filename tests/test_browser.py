"""A real browser: headless Debian Chromium opens the app, runs the detection tab on an example and sees both
result images. Skipped only where Chromium is not installed (``.ci/run`` installs it and requires the test)."""

import os
import shutil
import socket
import time
from pathlib import Path

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
                allowed_paths=[str(app.EXAMPLES_DIR)], css=app.CSS)
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


# (tab, its id prefix, whether it has examples, what its visible summary must say after a run)
TABS = (("Detection", "detection", True, "F1"), ("Segmentation", "segmentation", True, "mIoU"),
        ("Classification", "image-classification", True, "Grad-CAM"), ("CLIP", "classification", True, "KL"),
        ("Diffusion", "generation", False, "seconds"), ("Analysis", "analysis", True, "consensus"),
        ("Dataset", "dataset", False, None), ("Training", "training", False, None), ("Pairs", "pairs", False, None))


def open_tab(driver, label: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "button[role='tab']")))
    shown = driver.find_elements(By.XPATH, f"//button[@role='tab' and normalize-space()='{label}']")
    if not shown:  # a narrow window folds the last tabs into Gradio's "More tabs" menu
        click(driver, driver.find_element(By.CSS_SELECTOR, "button[aria-label='More tabs']"))
        shown = driver.find_elements(By.XPATH, f"//div[contains(@class, 'overflow-dropdown')]"
                                               f"/button[normalize-space()='{label}']")
    click(driver, shown[0])
    time.sleep(0.5)


def test_every_tab_runs_its_default_example_in_a_real_browser(app_url, browser, tmp_path):
    """Every tab with its defaults: run, the visible summary holds the key figure, both result images load; a
    screenshot of each tab at 1400 px and at 400 px goes to ``$DISTILL_LENS_SCREENSHOTS`` (default: a temporary
    folder, printed)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    folder = Path(os.environ.get("DISTILL_LENS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    wait = WebDriverWait(browser, 120)
    browser.set_window_size(1400, 1000)
    browser.get(app_url)
    for label, key, has_examples, figure in TABS:
        open_tab(browser, label)
        if has_examples:
            example = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"#{key}-examples button, "
                                                                               f"#{key}-examples .gallery-item")))
            click(browser, example)
            wait.until(lambda d, k=key: d.find_elements(By.CSS_SELECTOR, f"#{k}-image img"))
            time.sleep(0.5)
        if figure is not None:
            click(browser, browser.find_element(By.ID, f"{key}-run"))
            wait.until(lambda d, k=key, f=figure: f in d.find_element(By.ID, f"{k}-summary").text)
        if key in ("detection", "segmentation"):
            for role in ("teacher", "student"):
                image = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#{key}-{role}-view img")))
                wait.until(lambda d, img=image: d.execute_script("return arguments[0].complete && "
                                                                 "arguments[0].naturalWidth > 0", img))
        if key in ("detection", "segmentation"):  # the legend: one entry per box or class, as the panels draw
            legend = wait.until(lambda d, k=key: d.find_elements(By.CSS_SELECTOR, f"#{k}-teacher-view .legend-item"))
            assert legend and all(item.text.strip() for item in legend)
        if key == "image-classification":  # the real pair on a photo: both Grad-CAM overlays load
            for role in ("teacher", "student", "difference"):
                image = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#{key}-{role} img")))
                wait.until(lambda d, img=image: d.execute_script("return arguments[0].complete && "
                                                                 "arguments[0].naturalWidth > 0", img))
            summary = browser.find_element(By.ID, f"{key}-summary").text
            assert "Teacher:" in summary and "lite0:" in summary  # the real EfficientNet-Lite pair by default
        if key == "training":  # the four methods' curves from the shipped logs, before any click
            legend = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#training-curves .legendtext"))
            assert [item.text for item in legend] == ["output-kd", "feature-kd", "adm-consensus", "online-adm"]
            assert wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#training-maps .heatmaplayer, "
                                                                         "#training-maps .hm"))
        if key == "pairs":
            assert "adm-consensus" in browser.find_element(By.TAG_NAME, "body").text
        if key == "analysis":  # gallery captions (stage, teacher and student layer) are shown in full
            captions = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".caption-label"))
            clipped = browser.execute_script("return arguments[0].filter(c => c.scrollWidth > c.clientWidth + 1)"
                                             ".map(c => c.textContent)", captions)
            assert not clipped, clipped
        browser.execute_script("window.scrollTo(0, 0);")
        browser.save_screenshot(str(folder / f"{key}_1400.png"))
    browser.set_window_size(400, 900)
    for label, key, _, _ in TABS:
        open_tab(browser, label)
        if key == "dataset":  # the report's files are listed without Gradio's per-file remove button (×)
            listed = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dataset-files tr"))
            names = "".join(browser.find_element(By.ID, "dataset-files").text.split())
            assert len(listed) >= 4 and "summary.json" in names and "report.html" in names
            assert not [b for b in browser.find_elements(By.CSS_SELECTOR, "#dataset-files button") if b.is_displayed()
                        and b.text.strip() == "×"]
        if key == "dataset":  # at phone width the gallery's long captions get the whole width: one column
            grid = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dataset-gallery .grid-container"))[0]
            columns = browser.execute_script("return getComputedStyle(arguments[0]).gridTemplateColumns", grid)
            assert len(columns.split()) == 1, columns
            # the per-class chart's toolbar stays clear of the component's label
            plot = browser.find_element(By.CSS_SELECTOR, "#dataset-results .js-plotly-plot")
            overlap = browser.execute_script(
                "const p = arguments[0], bar = p.querySelector('.modebar').getBoundingClientRect(); "
                "const label = p.closest('.block').querySelector('[data-testid=block-label]').getBoundingClientRect();"
                " return bar.left < label.right && label.left < bar.right && bar.top < label.bottom "
                "&& label.top < bar.bottom", plot)
            assert not overlap
        browser.execute_script("window.scrollTo(0, 0);")
        browser.save_screenshot(str(folder / f"{key}_400.png"))
    assert len(list(folder.glob("*.png"))) >= 2 * len(TABS)


def test_an_own_pair_from_local_folders_in_a_real_browser(app_url, browser, tmp_path, monkeypatch):
    """"Your own models…" in the Detection tab: two tiny RT-DETRs saved to a local folder, checked, then run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.tiny_hub import save_tiny_rtdetr

    teacher, student = save_tiny_rtdetr(tmp_path / "teacher", 0), save_tiny_rtdetr(tmp_path / "my_student", 1, 16)
    monkeypatch.setenv("DISTILL_LENS_ALLOW_LOCAL", str(tmp_path))
    wait = WebDriverWait(browser, 120)
    browser.set_window_size(1400, 1000)
    browser.get(app_url)
    open_tab(browser, "Detection")
    example = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#detection-examples button, "
                                                                       "#detection-examples .gallery-item")))
    click(browser, example)
    click(browser, browser.find_element(By.CSS_SELECTOR, "#detection-pair input"))
    option = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "li[role='option'][aria-label^='Your own']")))
    click(browser, option)
    field = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#detection-own-teacher textarea, "
                                                                         "#detection-own-teacher input")))
    field.send_keys(str(teacher))
    browser.find_element(By.CSS_SELECTOR, "#detection-own-students textarea").send_keys(str(student))
    click(browser, browser.find_element(By.ID, "detection-own-check"))
    wait.until(lambda d: "RTDetrForObjectDetection" in d.find_element(By.ID, "detection-own-found").text)
    found = browser.find_element(By.ID, "detection-own-found")
    assert "my_student" in found.text
    folder = Path(os.environ.get("DISTILL_LENS_SCREENSHOTS", tmp_path))
    browser.execute_script("arguments[0].scrollIntoView({block: 'end'});", found)
    browser.save_screenshot(str(folder / "own_models_check_1400.png"))
    click(browser, browser.find_element(By.ID, "detection-run"))
    wait.until(lambda d: "F1" in d.find_element(By.ID, "detection-summary").text)
    assert "my_student" in browser.find_element(By.ID, "detection-summary").text
    browser.execute_script("window.scrollTo(0, 0);")
    browser.save_screenshot(str(folder / "own_models_run_1400.png"))
    # a failed run after a successful one leaves no stale result: "Your own models…" chosen but not filled in
    click(browser, browser.find_element(By.CSS_SELECTOR, "#detection-pair input"))
    click(browser, wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR,
                                                          "li[role='option'][aria-label^='Your own']"))))
    click(browser, browser.find_element(By.ID, "detection-run"))
    wait.until(lambda d: any("models\" first" in t.text for t in d.find_elements(
        By.CSS_SELECTOR, ".toast-body, [data-testid='toast-body']")))  # the error says what to do
    wait.until(lambda d: d.find_element(By.ID, "detection-summary").text.strip() == "")
    assert not browser.find_elements(By.CSS_SELECTOR, "#detection-teacher-view img")


# (tab, id prefix, what its visible summary says once its first-sight example is computed, its default pair)
FIRST_SIGHT = (("Detection", "detection", "F1", "shapes-detection"),
               ("Segmentation", "segmentation", "mIoU", "shapes-segmentation"),
               ("Classification", "image-classification", "KL", "efficientnet-lite"),
               ("CLIP", "classification", "KL", "shapes-clip"),
               ("Diffusion", "generation", "student", "shapes-diffusion"),
               ("Analysis", "analysis", "consensus", "shapes-segmentation"),
               ("Dataset", "dataset", "images", "shapes-detection"))

RESULTS_STATE = """
const r = document.getElementById(arguments[0]);
return {images: [...r.querySelectorAll('img')].filter(i => i.getAttribute('src')).length,
        plots: r.querySelectorAll('.js-plotly-plot').length,
        thumbnails: r.querySelectorAll("button[aria-label^='Thumbnail']").length,
        files: r.querySelectorAll("[data-testid='download-link']").length,
        text: r.textContent};
"""


def summary_text(driver, key: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, f"{key}-summary").text


def error_toasts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [t.text for t in driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-body']") if "Error" in t.text]


def close_toasts(driver) -> None:
    driver.execute_script("document.querySelectorAll(\"[data-testid='toast-close']\").forEach(b => b.click())")
    time.sleep(0.3)


@pytest.mark.parametrize("width", [1400, 400])
def test_every_tab_opens_with_a_computed_result_and_every_name_in_sight(app_url, browser, width):
    """Before any click, each tab shows its default example computed (the summary's key figure, its pictures); at
    phone width every tab's name is on screen (no menu folds them), and the Pairs table's name column too."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    browser.set_window_size(width, 1000)
    browser.get(app_url)
    tabs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role='tab']"))
    assert not browser.find_elements(By.CSS_SELECTOR, "button[aria-label='More tabs']")
    for tab in tabs:
        box = tab.rect
        assert tab.is_displayed() and box["x"] >= 0 and box["x"] + box["width"] <= width, tab.text
    for label, key, figure, _ in FIRST_SIGHT:
        open_tab(browser, label)
        wait.until(lambda d, k=key, f=figure: f in summary_text(d, k))
        if key in ("detection", "segmentation"):
            image = wait.until(lambda d, k=key: d.find_element(By.CSS_SELECTOR, f"#{k}-teacher-view img"))
            wait.until(lambda d, img=image: d.execute_script("return arguments[0].complete && "
                                                             "arguments[0].naturalWidth > 0", img))
    open_tab(browser, "Pairs")
    name = wait.until(lambda d: [c for c in d.find_elements(
        By.XPATH, "//*[@role='gridcell' and normalize-space()='shapes-detection']") if c.is_displayed()])[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", name)
    box = name.rect
    assert box["x"] >= 0 and box["x"] + box["width"] <= width  # in sight without scrolling sideways


def fail(driver, key: str) -> None:
    """Make the tab's next run fail as a user would: its image (archive, prompt) removed, then run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    if key == "generation":
        prompt = driver.find_element(By.CSS_SELECTOR, "#generation-prompt textarea")
        prompt.send_keys(Keys.CONTROL, "a")
        prompt.send_keys(Keys.BACKSPACE)
    else:  # the Dataset tab's example runs from the server's own files: its archive field starts empty
        field = "dataset-archive" if key == "dataset" else f"{key}-image"
        for button in driver.find_elements(By.CSS_SELECTOR, f"#{field} button[aria-label='Remove Image'], "
                                                            f"#{field} button[aria-label='Clear']"):
            click(driver, button)
    time.sleep(0.5)
    click(driver, driver.find_element(By.ID, f"{key}-run"))


@pytest.mark.parametrize("width", [1400, 400])
def test_a_failure_after_a_success_clears_every_output(app_url, browser, width):
    """Each tab with a run: after its first-sight success, a run that fails (no image, no prompt, no archive)
    leaves no picture, plot, gallery, file, summary or report of the earlier run, and one error message."""
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    browser.set_window_size(width, 1000)
    browser.get(app_url)
    for label, key, figure, pair in FIRST_SIGHT:
        if key == "image-classification":  # the same wiring as Detection's; its real model is the slowest to run
            continue
        open_tab(browser, label)
        wait.until(lambda d, k=key, f=figure: f in summary_text(d, k), message=f"{label}: no first sight")
        fail(browser, key)
        wait.until(lambda d: error_toasts(d), message=f"{label}: no error message")
        time.sleep(1.5)  # any late output would land now
        state = browser.execute_script(RESULTS_STATE, f"{key}-results")
        assert (state["images"], state["plots"], state["thumbnails"], state["files"]) == (0, 0, 0, 0), (label, state)
        assert summary_text(browser, key) == "" and pair not in state["text"], (label, state["text"][:300])
        assert len(error_toasts(browser)) == 1, (label, error_toasts(browser))
        close_toasts(browser)


def set_number(driver, elem_id: str, value: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type='number']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)
    time.sleep(0.3)


@pytest.mark.parametrize("width", [1400, 400])
def test_stop_is_an_outcome_not_an_error(app_url, browser, tmp_path, width, slow_steps):
    """Stop in Diffusion, CLIP prompt tuning and Dataset: the tab says where it stopped, in words, and no error
    message or error badge appears."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from weights.shapes.world import write_labelled_scenes

    wait = WebDriverWait(browser, 180)
    browser.set_window_size(width, 1000)
    browser.get(app_url)
    archive = tmp_path / "scenes.zip"
    if not archive.exists():
        import zipfile

        images, _ = write_labelled_scenes(tmp_path, range(10_000_000 + 7000, 10_000_000 + 7400))
        with zipfile.ZipFile(archive, "w") as zipped:
            for image in sorted(images.iterdir()):
                zipped.write(image, image.name)
    long_runs = {  # tab: (how to make its run long, its run and stop buttons, where the stopped message shows)
        "Diffusion": (lambda: [set_number(browser, f"generation-{n}", 256) for n in ("width", "height")],
                      "generation-run", "generation-stop", "generation-summary"),
        "CLIP": (lambda: (click(browser, browser.find_element(By.XPATH, "//button[contains(., 'Tune a prompt')]")),
                          wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#classification-tune-steps "
                                                                                 "input[type='number']")),
                          set_number(browser, "classification-tune-steps", 500)),
                 "classification-tune", "classification-tune-stop", "classification-saved"),
        "Dataset": (lambda: (
            browser.find_element(By.CSS_SELECTOR, "#dataset-archive input[type='file']").send_keys(str(archive)),
            wait.until(lambda d: "scenes.zip" in "".join(d.find_element(By.ID, "dataset-archive").text.split()),
                       message="the archive did not upload")),
            "dataset-run", "dataset-stop", "dataset-summary"),
    }
    for label, (make_long, run, stop, message) in long_runs.items():
        open_tab(browser, label)
        key = {"Diffusion": "generation", "CLIP": "classification", "Dataset": "dataset"}[label]
        wait.until(lambda d, k=key: summary_text(d, k), message=f"{label}: no first sight")
        make_long()
        click(browser, browser.find_element(By.ID, run))
        wait.until(lambda d: d.execute_script("return [...document.querySelectorAll('.progress-text')]"
                                              ".some(e => e.offsetParent !== null)"), message=f"{label}: no progress")
        click(browser, browser.find_element(By.ID, stop))  # while it runs

        def stopped(d, m=message):
            element = d.find_element(By.ID, m)
            return "Stopped" in (element.text or "") + (d.execute_script(
                "const t = arguments[0].querySelector('textarea'); return t ? t.value : ''", element) or "")

        wait.until(stopped, message=f"{label}: no stopped message")
        time.sleep(1)
        assert not error_toasts(browser), (label, error_toasts(browser))
        badges = browser.execute_script("return [...document.querySelectorAll('.error')].filter(e => "
                                        "e.offsetParent !== null).map(e => e.textContent)")
        assert not badges, (label, badges)
        close_toasts(browser)
