"""The playground page at `/`, driven in Debian's headless Chromium by Playwright (no browser
download): a wrong key's 401, streamed tokens arriving, classify, explain and embedding similarity.
Screenshots go to $BIGMODEL_SCREENSHOTS (default: the test's tmp folder), recorded as test properties."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright import sync_api

from .test_explain import word_classifier  # noqa: F401  (a fixture)
from .test_serve import start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (the README's test command does)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def shoot(tmp_path, record_property):
    folder = Path(os.environ.get("BIGMODEL_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)

    def save(page, name: str) -> None:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        record_property(f"screenshot_{name}", str(path))

    return save


def open_page(browser, ckpt):
    proc, base = start_server(ckpt, "--api-key-env", "BIGMODEL_TEST_KEY")
    page = browser.new_page()
    page.goto(f"{base}/")
    return proc, page


def test_a_wrong_key_shows_401_and_a_prompt_streams_tokens(browser, trained_run, shoot):
    proc, page = open_page(browser, trained_run)
    try:
        status = page.locator("#status")
        sync_api.expect(status).to_contain_text("Wrong or missing API key (401)")  # the page connects on load
        page.fill("#key", "not-the-key")
        page.click("#connect")
        sync_api.expect(status).to_contain_text("(401): invalid or missing API key")
        shoot(page, "wrong_key")

        page.fill("#key", "s3cret")
        page.click("#connect")
        sync_api.expect(status).to_contain_text("Connected to")
        assert page.locator("#tabs button").all_inner_texts() == ["Generate", "Embeddings"]
        page.evaluate("""() => {  // when each piece of text arrives
            window.arrivals = [];
            new MutationObserver(() => window.arrivals.push(performance.now()))
                .observe(document.getElementById('output'), {childList: true, characterData: true, subtree: true});
        }""")
        page.fill("#prompt", "ROMEO:")
        page.fill("#max_tokens", "400")  # long enough to span many network reads
        page.fill("#seed", "7")
        page.click("#generate")
        sync_api.expect(status).to_have_text("Done", timeout=60000)
        shoot(page, "streamed")
        text = page.inner_text("#output")
        chunks = int(page.get_attribute("#output", "data-chunks"))
        arrivals = page.evaluate("window.arrivals")
        assert text.strip() and chunks > 1
        assert len(set(arrivals)) > 1  # pieces were shown at different times, not all at the end
        assert "400 generated tokens" in page.inner_text("#usage")

        page.click("#tabs button:has-text('Embeddings')")
        page.fill("#embed-input", "to be or not to be\nto be, or not to be\nxyz 123")
        page.click("#embed")
        sync_api.expect(status).to_have_text("Compared")
        rows = page.locator("#embed-result tr")
        assert rows.count() == 4 and rows.nth(1).locator("td").nth(1).inner_text() == "1.000"
        similar = float(rows.nth(1).locator("td").nth(2).inner_text())
        unrelated = float(rows.nth(1).locator("td").nth(3).inner_text())
        assert similar > unrelated
        shoot(page, "embeddings")
    finally:
        page.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_classify_and_explain_in_the_page(browser, word_classifier, shoot):  # noqa: F811
    proc, page = open_page(browser, word_classifier)
    try:
        page.fill("#key", "s3cret")
        page.click("#connect")
        sync_api.expect(page.locator("#status")).to_contain_text("Connected to")
        assert page.locator("#tabs button").all_inner_texts() == ["Generate", "Classify", "Explain", "Embeddings"]
        page.click("#tabs button:has-text('Classify')")
        page.fill("#classify-input", "xy goodzz\nzxevil yx")
        page.click("#classify")
        sync_api.expect(page.locator("#status")).to_have_text("Classified 2")
        labels = page.locator("#classify-result tr td:nth-child(2)").all_inner_texts()
        assert labels == ["good", "evil"]
        shoot(page, "classify")

        page.click("#tabs button:has-text('Explain')")
        page.fill("#explain-input", "xy goodzz")
        page.click("#explain")
        sync_api.expect(page.locator("#status")).to_have_text("Explained", timeout=60000)
        assert page.locator("#explain-result p").inner_text().startswith("good (p = ")
        assert page.locator("#explain-result .token").count() >= len("xy goodzz")  # a token per character
        shoot(page, "explain")
    finally:
        page.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_a_recording_is_transcribed_in_the_page(browser, shoot):
    """Whisper served: the page offers only Transcribe, uploads a FLAC and shows its timed segments."""
    from .test_whisper import SPEECH

    proc, page = open_page(browser, "whisper-tiny.en")
    try:
        page.fill("#key", "s3cret")
        page.click("#connect")
        sync_api.expect(page.locator("#status")).to_contain_text("Connected to whisper-tiny.en")
        assert page.locator("#tabs button").all_inner_texts() == ["Transcribe"]
        page.set_input_files("#audio-file", str(SPEECH / "61-70968-0000.flac"))
        page.click("#transcribe")
        sync_api.expect(page.locator("#status")).to_contain_text("Transcribed 4.9 s (en)", timeout=60000)
        cells = page.locator("#transcribe-result tr td").all_inner_texts()
        assert cells[0].startswith("00:00:00.00 → ") and cells[1].startswith("He began a confused complaint")
        shoot(page, "transcribe")
    finally:
        page.close()
        proc.terminate()
        proc.wait(timeout=30)
