"""JupyterLab in a real browser: notebook 01 opened in headless Chromium, its first cells run in the smoke profile.

Run with ``make test-browser`` (installs Debian's chromium and chromium-driver when apt is available).
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/01_data_preparation.ipynb"
N_CELLS = 6  # title, parameters, the stage itself, a markdown cell, the manifest check, a markdown cell


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url, seconds=90):
    end = time.time() + seconds
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url}")


@pytest.fixture
def lab(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    root = tmp_path / "served"  # a copy: JupyterLab may save metadata into the notebooks it opens
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    settings = tmp_path / "lab-settings/@jupyterlab/notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')  # render every cell
    news = tmp_path / "lab-settings/@jupyterlab/apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {**os.environ, "NEURORECON_HOME": str(tmp_path / "home"), "NEURORECON_PROFILE": "smoke",
           "NEURORECON_FIGURES": str(tmp_path / "figures"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
           f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    server = subprocess.Popen(cmd, env=env, stdout=open(tmp_path / "lab.log", "w"), stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}")
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.terminate()
        server.wait(timeout=30)


def _driver(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("Debian chromium and chromium-driver are not installed (make test-browser installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


def test_notebook01_first_cells_run_in_jupyterlab(lab, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, token = lab
    driver = _driver(tmp_path)
    shot = tmp_path / "figures" / "jupyterlab_01.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
        wait = WebDriverWait(driver, 120)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator[data-status='idle']"))
        n_cells = len(json.loads((ROOT / NOTEBOOK).read_text())["cells"])  # the served copy is identical
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")) == n_cells)
        cells = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")
        cells[0].click()
        for _ in range(N_CELLS):  # Shift+Enter: run the cell and move to the next one
            ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
            time.sleep(0.3)

        def code_prompts():
            prompts = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell .jp-InputPrompt")
            return [p.text for p in prompts[:3]]

        WebDriverWait(driver, 180).until(lambda d: all(re.fullmatch(r"\[\d+\]:", t) for t in code_prompts()))
        driver.save_screenshot(str(shot))
        errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output") if
                  re.search(r"Traceback|Error\b", e.text)]
        assert errors == [], errors
        outputs = " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))
        assert "all files present and well formed" in outputs
        assert "DataConfig(profile='smoke'" in outputs
    finally:
        if not shot.exists():
            driver.save_screenshot(str(shot.with_name("jupyterlab_01_failure.png")))
            print(f"failure screenshot: {shot.with_name('jupyterlab_01_failure.png')}")
        driver.quit()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
