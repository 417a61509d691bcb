"""The web page in a real browser: headless Chromium types into the autocomplete page and sees
completions, the tag and forecast pages show their predictions (coloured tags, a plot), and the music page
composes, draws the piano roll and plays it.

The service runs under uvicorn on a free loopback port; Selenium drives the system's Chromium through
its ChromeDriver. Without a browser the tests are skipped, unless RNNKIT_REQUIRE_BROWSER is set (CI
installs Chromium and sets it, so a missing browser fails there instead of passing silently).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from rnnkit.config import ModelConfig, RunConfig, TrainConfig
from rnnkit.tasks.training import train

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


@contextmanager
def _serving(run_dir):
    """The service for a run under uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    from rnnkit.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(run_dir), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline:
            pytest.fail("the server did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    root = tmp_path_factory.mktemp("page")
    rng = random.Random(1)
    words = ["the quick brown fox", "a quiet queen", "quilts and quills", "the lazy dog"]
    (root / "train.txt").write_text("\n".join(rng.choice(words) for _ in range(200)) + "\n", encoding="utf-8")
    cfg = RunConfig(task="lm", model=ModelConfig(embedding_size=8, hidden_size=16, num_layers=1),
                    train=TrainConfig(epochs=1, batch_size=8, bptt=24, lr=1e-2, log_every=10_000))
    train(cfg, root / "train.txt", root / "run", log=lambda line: None)
    with _serving(root / "run") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    _need_browser()
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


def _predict_on_page(browser, url, task, text):
    """Open the page of a run, put `text` in its input box, press Predict and wait for the result."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(EC.text_to_be_present_in_element((By.ID, "about"), f"{task} run"))
    assert browser.find_element(By.ID, "other").is_displayed()
    assert not browser.find_element(By.ID, "lm").is_displayed()
    # A long CSV typed key by key is slow: set the box's value as a paste would.
    browser.execute_script("document.getElementById('input').value = arguments[0]", text)
    browser.find_element(By.ID, "predict").click()
    wait.until(lambda d: d.find_element(By.ID, "result").find_elements(By.XPATH, "./*"))
    assert browser.find_element(By.ID, "status").text == ""


def test_tag_page_shows_each_token_with_its_tag_coloured_by_type(task_runs, browser):
    import httpx

    lines = ["Anna met Paul in Paris", "Marie saw the cat"]
    with _serving(task_runs["tag"]) as url:
        expected = httpx.post(url + "/predict", json={"inputs": lines}).json()["predictions"]
        _predict_on_page(browser, url, "tag", "\n".join(lines))
        shown = browser.execute_script(
            "return [...document.querySelectorAll('#result > div')].map(box => [...box.querySelectorAll('.tok')]"
            ".map(s => [s.firstChild.textContent, s.querySelector('small').textContent, "
            "getComputedStyle(s).backgroundColor]))")
    assert [[(t, g) for t, g, _ in sentence] for sentence in shown] == \
        [list(zip(p["tokens"], p["tags"], strict=True)) for p in expected]
    colours = {}
    for t, tag, colour in (x for sentence in shown for x in sentence):
        if tag == "O":
            assert colour == "rgba(0, 0, 0, 0)", (t, colour)  # untagged tokens stay plain
        else:
            assert colour != "rgba(0, 0, 0, 0)", (t, colour)
            assert colours.setdefault(tag.split("-")[-1], colour) == colour  # one colour per entity type
    assert colours, "the run tagged no entity in these sentences; nothing coloured to check"


def test_forecast_page_plots_history_and_forecast(task_runs, browser):
    import httpx

    with _serving(task_runs["forecast"]) as url:
        expected = httpx.post(url + "/predict", json={"inputs": [task_runs["series"]]}).json()["predictions"][0]
        _predict_on_page(browser, url, "forecast", task_runs["series"])
        lines = browser.execute_script(
            "return [...document.querySelectorAll('#result svg polyline')].map(l => "
            "[l.getAttribute('stroke'), l.getAttribute('points').trim().split(' ').length])")
    # The history in grey, then the forecast in blue, one point per value.
    assert lines == [["#66707a", len(expected["history"])], ["#2463b5", len(expected["forecast"])]]


def test_music_page_composes_draws_the_roll_and_plays_it(tmp_path, browser):
    import json

    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from rnnkit.config import MusicConfig

    pieces = [[[48 + s, 52 + s, 55 + s] if t % 2 == 0 else [60 + s] for t in range(12)] for s in range(0, 12, 2)]
    (tmp_path / "m.json").write_text(json.dumps(pieces))
    cfg = RunConfig(task="music", model=ModelConfig(hidden_size=12, num_layers=1),
                    train=TrainConfig(epochs=1, batch_size=4, bptt=0, log_every=10_000),
                    options=MusicConfig(pitch_hidden=6, pitch_window=3, frames_per_beat=2))
    train(cfg, tmp_path / "m.json", tmp_path / "run", log=lambda line: None)
    with _serving(tmp_path / "run") as url:
        expected = httpx.post(url + "/predict", json={"inputs": [{"steps": 20, "temperature": 1.0, "seed": 4}]}
                              ).json()["predictions"][0]
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(EC.text_to_be_present_in_element((By.ID, "about"), "music run"))
        for name, value in (("steps", "20"), ("temperature", "1"), ("seed", "4")):
            box = browser.find_element(By.ID, name)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "compose").click()
        wait.until(lambda d: d.find_element(By.ID, "roll").get_attribute("data-frames") == "20")
        drawn = int(browser.find_element(By.ID, "roll").get_attribute("data-notes"))
        # the canvas holds blue note boxes: some pixel of the composed notes' colour
        blue = browser.execute_script(
            "const c = document.getElementById('roll'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
            ".data; let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 36 && d[i + 1] === 99 && "
            "d[i + 2] === 181) n++; return n;")
        browser.find_element(By.ID, "play").click()
        wait.until(lambda d: d.find_element(By.ID, "play").get_attribute("data-scheduled") is not None)
        scheduled = int(browser.find_element(By.ID, "play").get_attribute("data-scheduled"))
        state = browser.execute_script("return audio && audio.state")
        assert browser.find_element(By.ID, "download").get_attribute("href").startswith("data:audio/midi;base64,")
    runs = sum(1 for t, frame in enumerate(expected["frames"]) for p in frame
               if t == 0 or p not in expected["frames"][t - 1])  # a note starts where its pitch was silent
    assert drawn == scheduled == runs > 0
    assert blue > 0
    assert state in ("running", "suspended")
