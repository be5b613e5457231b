"""The chat page (GET /, herd/serve/web/index.html) in a real headless Chromium: Debian's `chromium`
driven by Selenium through Debian's `chromedriver` (`make test` installs both when missing).

The engine's decode steps are slowed (STEP_S each) so a reply visibly streams in, and its submits
are recorded so the tests see exactly what the page asked for (prompt tokens and sampling).
"""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from tests.serve.conftest import KEY, Running

STEP_S = 0.03
SYSTEM = "Be brief."
WAIT_S = 20


@pytest.fixture(scope="module")
def srv(loaded):
    s = Running(loaded, max_batch=2)
    engine, decode, submit = s.engine, s.engine._decode_step, s.engine.submit
    s.submitted = []

    def slow_decode(seqs):
        time.sleep(STEP_S)
        decode(seqs)

    def recording_submit(prompt, params, sink, images=None):
        s.submitted.append((list(prompt), params))
        return submit(prompt, params, sink, images=images)

    engine._decode_step, engine.submit = slow_decode, recording_submit
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(
            "the chat page's test needs Debian's chromium and chromedriver on PATH "
            "(apt-get install -y chromium chromium-driver; `make test` installs them)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_window_size(1000, 800)
    yield driver
    driver.quit()


def wait_for(condition, what: str, timeout: float = WAIT_S, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def element(browser, id_: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, id_)


def texts(browser, role: str) -> list[str]:
    # textContent, not Selenium's .text, which folds the whitespace the model's replies are full of
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
    return browser.execute_script(script, f".message.{role} .text")


def busy(browser) -> bool:
    return not element(browser, "send").is_enabled()


def open_page(browser, srv, system="", temperature="0", max_tokens="40"):
    """Load the page; it asks for the key (the server has one); fill in the settings."""
    browser.get(srv.url + "/")
    wait_for(lambda: "API key" in element(browser, "error").text, "the 401 shown")
    assert element(browser, "model").text == "unavailable"
    browser.find_element("css selector", "summary").click()  # open the settings
    element(browser, "api-key").send_keys(KEY)
    for id_, value in (
        ("system", system),
        ("temperature", temperature),
        ("max-tokens", max_tokens),
    ):
        element(browser, id_).clear()
        element(browser, id_).send_keys(value)
    wait_for(lambda: element(browser, "model").text == "tiny", "the model name")
    assert element(browser, "error").text == ""


def say(browser, text: str) -> list[str]:
    """Type a message, press Enter, and sample the reply until it has finished: every distinct
    text seen while streaming, the final one last."""
    from selenium.webdriver.common.keys import Keys

    n = len(texts(browser, "assistant"))
    element(browser, "message").send_keys(text + Keys.ENTER)
    wait_for(lambda: len(texts(browser, "assistant")) == n + 1, "the reply's box")
    seen = []
    while True:
        done = not busy(browser)
        reply = texts(browser, "assistant")[n]
        if not seen or reply != seen[-1]:
            seen.append(reply)
        if done:
            return seen
        time.sleep(0.01)


def test_page_is_served_with_its_content_type(srv):
    r = httpx.get(srv.url + "/")  # no key needed for the page itself
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "https://" not in r.text and "http://" not in r.text  # nothing fetched from elsewhere


def test_reply_streams_in_and_history_is_sent(srv, loaded, browser, tmp_path):
    _, tok = loaded
    open_page(browser, srv, system=SYSTEM)
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "The quick"}]
    seen = say(browser, "The quick")
    assert texts(browser, "user") == ["The quick"]
    prompt, params = srv.submitted[-1]
    assert prompt == tok.encode_dialog(first, add_generation_prompt=True).ids  # system prompt in
    assert params.temperature == 0 and params.max_tokens == 40
    final = seen[-1]
    growing = [t for t in seen if t]
    assert len(growing) >= 3, seen  # the reply was seen at least twice before its end
    assert all(final.startswith(t) for t in growing) and len(set(map(len, growing))) == len(growing)
    api = srv.client.chat.completions.create(
        model="tiny", messages=first, max_tokens=40, temperature=0
    )
    assert final == api.choices[0].message.content

    # the second turn carries the first, as the page keeps it
    second = [*first, {"role": "assistant", "content": final}, {"role": "user", "content": "fox"}]
    reply = say(browser, "fox")[-1]
    assert srv.submitted[-1][0] == tok.encode_dialog(second, add_generation_prompt=True).ids
    api = srv.client.chat.completions.create(
        model="tiny", messages=second, max_tokens=40, temperature=0
    )
    assert reply == api.choices[0].message.content
    assert texts(browser, "user") == ["The quick", "fox"]

    png = browser.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    (tmp_path / "chat.png").write_bytes(png)
    if os.environ.get("HERD_SCREENSHOT_DIR"):
        out = os.path.join(os.environ["HERD_SCREENSHOT_DIR"], "herd-chat-page.png")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as f:
            f.write(png)


def test_stop_ends_the_generation_on_the_server(srv, browser):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, srv, max_tokens="200")
    element(browser, "message").send_keys("Hello there" + Keys.ENTER)
    wait_for(lambda: texts(browser, "assistant") and texts(browser, "assistant")[0], "a token")
    first = texts(browser, "assistant")[0]
    wait_for(lambda: len(texts(browser, "assistant")[0]) > len(first), "a second token")
    assert srv.engine.counts() == (1, 0) and srv.submitted[-1][1].max_tokens == 200
    element(browser, "stop").click()
    stopped = time.monotonic()
    wait_for(lambda: not busy(browser), "the page to stop")
    # the slot is freed long before the 200 tokens (6 s at STEP_S) would have run
    wait_for(lambda: srv.engine.counts() == (0, 0), "the server to cancel", timeout=2)
    assert time.monotonic() - stopped < 2
    reply = texts(browser, "assistant")[0]
    time.sleep(0.3)
    assert texts(browser, "assistant")[0] == reply  # it stopped growing
    assert "(stopped)" in browser.find_element("css selector", ".message.assistant").text
    metrics = httpx.get(srv.url + "/metrics").text
    assert "herd_num_requests_running 0.0" in metrics
    assert element(browser, "stop").is_enabled() is False


def test_api_errors_are_shown_and_the_message_kept(srv, browser):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, srv, temperature="5")  # the API allows 0..2
    element(browser, "message").send_keys("The quick" + Keys.ENTER)
    wait_for(lambda: "temperature" in element(browser, "error").text, "the API's error")
    assert texts(browser, "user") == [] and texts(browser, "assistant") == []
    assert element(browser, "message").get_attribute("value") == "The quick"  # back to retry
