"""ComfyUI's own web page, served by graphrt, in headless Chromium: the node library loads
from /object_info, a Wan workflow is opened and queued with the Run button, and its video
appears on the output node."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from tests.server.conftest import tiny_t2v

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
SCREENSHOT = os.environ.get("GRAPHRT_SCREENSHOT", "")


def _skip_reason():
    if not CHROMIUM or not DRIVER:
        return "no browser: install Debian's chromium and chromium-driver (.ci/run does)"
    try:
        import selenium  # noqa: F401  (only whether it is installed)
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    import importlib.util
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        return "the web page is not installed (pip install -e '.[ui]')"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_web_page_loads_nodes_and_runs_a_workflow(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900", "--no-first-run", "--disable-extensions",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):   # nothing leaves this machine
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        driver.get(server.url + "/")
        prompt = tiny_t2v(steps=2, seed=11)
        classes = sorted({n["class_type"] for n in prompt.values()})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if driver.execute_script(
                    "const t = window.LiteGraph && window.app && window.app.graph && "
                    "window.LiteGraph.registered_node_types; return !!t && arguments[0].every(c => c in t)",
                    classes):
                break
            time.sleep(0.3)
        else:
            pytest.fail("the node library did not load from /object_info")
        # open the workflow as a user opening the API-format file would
        driver.execute_script("return window.app.loadApiJson(arguments[0], 't2v_tiny.json')", prompt)
        time.sleep(1.5)
        run = [b for b in driver.find_elements(By.XPATH, "//button[normalize-space()='Run' or @aria-label='Run']")
               if b.is_displayed()]
        assert run, "no Run button"
        run[0].click()
        outputs, deadline = None, time.monotonic() + 90
        while time.monotonic() < deadline:
            outputs = json.loads(driver.execute_script("return JSON.stringify(window.app.nodeOutputs || {})"))
            if any(o.get("images") for o in outputs.values()):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no output reached the page; outputs={outputs}")
        ref = next(o["images"][0] for o in outputs.values() if o.get("images"))
        assert ref["type"] == "output" and ref["filename"].endswith(".mp4")
        assert (server.base / "output" / ref["subfolder"] / ref["filename"]).is_file()
        canvas = driver.find_element(By.ID, "graph-canvas")                 # fit the graph to the view
        ActionChains(driver).move_to_element_with_offset(canvas, -300, 200).click().send_keys(".").perform()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            shown = driver.execute_script(
                "return Array.from(document.querySelectorAll('video')).map(v => v.src).filter(s => "
                "s.includes('/view?') && s.includes(arguments[0]))", ref["filename"])
            if shown:
                break
            time.sleep(0.3)
        assert shown, "the video is not shown on the output node"
        if SCREENSHOT:
            time.sleep(1.0)
            driver.save_screenshot(SCREENSHOT)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
                  and not any(known in e["message"] for known in (
                      "user.css",                   # optional user stylesheet, 404 in ComfyUI too
                      "comfy.templates.json",       # no saved templates yet, 404 in ComfyUI too
                      "ERR_NAME_NOT_RESOLVED"))]    # outside addresses, blocked by the resolver rule
        assert not errors, errors
    finally:
        driver.quit()
