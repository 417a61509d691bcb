"""The autocomplete page in a real browser: headless Chromium types into the page and sees completions.

The service runs under uvicorn on a free loopback port; Selenium drives the system's Chromium through
its ChromeDriver. Without a browser the test is skipped, unless RNNKIT_REQUIRE_BROWSER is set (CI
installs Chromium and sets it, so a missing browser fails there instead of passing silently).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time

import pytest

from rnnkit.config import ModelConfig, RunConfig, TrainConfig
from rnnkit.tasks import lm

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _need_browser() -> None:
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
    try:
        import selenium  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        missing.append(str(e))
    if missing:
        if os.environ.get("RNNKIT_REQUIRE_BROWSER"):
            pytest.fail(f"browser test required but missing: {', '.join(missing)}")
        pytest.skip(f"no browser here: {', '.join(missing)}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    import uvicorn

    from rnnkit.serve import create_app

    root = tmp_path_factory.mktemp("page")
    rng = random.Random(1)
    words = ["the quick brown fox", "a quiet queen", "quilts and quills", "the lazy dog"]
    (root / "train.txt").write_text("\n".join(rng.choice(words) for _ in range(200)) + "\n", encoding="utf-8")
    cfg = RunConfig(task="lm", model=ModelConfig(embedding_size=8, hidden_size=16, num_layers=1),
                    train=TrainConfig(epochs=1, batch_size=8, bptt=24, lr=1e-2, log_every=10_000))
    lm.train(cfg, root / "train.txt", root / "run", log=lambda line: None)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(root / "run"), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline:
            pytest.fail("the server did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_typing_shows_completions_and_tab_accepts_one(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(EC.text_to_be_present_in_element((By.ID, "about"), "lm run"))
    box = browser.find_element(By.ID, "text")
    box.send_keys("the q")
    # Completions are for the text as typed so far: wait for those of the whole "the q".
    wait.until(lambda d: d.find_element(By.ID, "completions").get_attribute("data-prefix") == "the q")
    items = browser.execute_script(
        "return [...document.querySelectorAll('#completions li')].map("
        "li => [li.querySelector('.c').textContent, li.querySelector('.p').textContent])")
    assert items, "no completion shown"
    first, probability = items[0]
    assert first.startswith("q")
    assert probability.endswith("%") and 0 < float(probability[:-1]) <= 100
    box.send_keys(Keys.TAB)
    wait.until(lambda d: d.find_element(By.ID, "text").get_attribute("value").startswith("the " + first))


def test_generate_button_streams_text(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "lm").is_displayed())
    browser.find_element(By.ID, "max_tokens").clear()
    browser.find_element(By.ID, "max_tokens").send_keys("40")
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 30).until(lambda d: len(d.find_element(By.ID, "generated").text) >= 10)
