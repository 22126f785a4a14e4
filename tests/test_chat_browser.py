"""The chat UI in a real browser (Debian's headless Chromium driven by Selenium) and through
`gradio_client`, over a store holding the real SmolLM2 as base, merged export and GGUF files."""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from chat_fixtures import (
    LORE_QUESTIONS,
    SYSTEM,
    gguf_file,
    merged_folder,
    projector_folder,
    publish_base,
    publish_export,
    smollm2_folder,
    speak,
    word_error_rate,
)
from conftest import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver") and shutil.which("espeak-ng")),
                       reason="needs Debian's chromium, chromium-driver and espeak-ng (make test installs them)"),
]

PICTURE = Path(__file__).parents[1] / "loretune" / "samples" / "snapshot" / "fandom" / "images" / "Naruto Uzumaki.png"
SHOT_FOR_REVIEW = Path("/tmp/loretune-chat-screenshot.png")
CHROMIUM_FLAGS = ("--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
                  "--disable-component-update --disable-sync --window-size=1280,1300").split()
NEWEST_F16 = "checkpoint-30 · GGUF f16"
MERGED = "checkpoint-10 · merged"
BROKEN = "checkpoint-10 · GGUF q8_0"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """base; export v1: merged + projector + f16 + a corrupt q8_0; export v2 (newest): f16."""
    root = tmp_path_factory.mktemp("chat-store") / "store"
    publish_base(root, smollm2_folder())
    publish_export(root, "v1", merged=merged_folder(), projector=projector_folder(), checkpoint="checkpoint-10",
                   gguf={"f16": gguf_file(), "q8_0": b"GGUF but truncated"}, score=0.41)
    publish_export(root, "v2", gguf={"f16": gguf_file()}, checkpoint="checkpoint-30", score=0.52)
    return root


@pytest.fixture(scope="module")
def server(store) -> Any:
    from loretune.chat.app import build_app

    started = time.monotonic()
    app = build_app(store, hotwords="Naruto")
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    with urllib.request.urlopen(url, timeout=30) as page:
        assert page.status == 200
    app.startup_seconds = time.monotonic() - started
    app.url = url
    yield app
    app.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(server) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="loretune-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    driver.get(server.url)
    wait(driver, lambda d: d.find_elements("css selector", "#message textarea"), "the page to load")
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# --- helpers ------------------------------------------------------------------------------------


def wait(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = 90) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except Exception:
        raise AssertionError(f"timed out waiting for {what}; status: {status(driver)!r}; "
                             f"model: {driver.find_element('css selector', '#model-info').text!r}") from None


def status(driver: Any) -> str:
    return driver.find_element("css selector", "#status").text


def bubbles(driver: Any, role: str) -> list[Any]:
    return driver.find_elements("css selector", f"#chat [data-testid={'user' if role == 'user' else 'bot'}]")


def model_info(driver: Any) -> str:
    return driver.find_element("css selector", "#model-info").text


def choose(driver: Any, label_part: str, expect: str) -> str:
    """Pick the model whose label contains `label_part`; the line under the dropdown, once it says `expect`."""
    driver.find_element("css selector", "#model input").click()
    option = wait(driver, lambda d: [o for o in d.find_elements("css selector", "[role=option]")
                                     if label_part in (o.get_attribute("aria-label") or "")], f"option {label_part}")
    option[0].click()
    return wait(driver, lambda d: model_info(d) if label_part in model_info(d) and expect in model_info(d) else None,
                f"{expect!r} after choosing {label_part}")


def ask(driver: Any, question: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("css selector", "#message textarea")
    box.clear()
    box.send_keys(question)
    box.send_keys(Keys.ENTER)


def answered(driver: Any, before: int) -> str:
    """Wait for the reply after `before` bot messages to finish; the final status line."""
    wait(driver, lambda d: len(bubbles(d, "bot")) > before, "a reply to start")
    return wait(driver, lambda d: status(d) if "tokens in" in status(d) else None, "the reply to finish")


def upload(driver: Any, block: str, path: Path) -> None:
    buttons = driver.find_elements("css selector", f"#{block} button[aria-label='Upload file']")
    if buttons:  # the voice block opens on the microphone: switch it to upload first
        buttons[0].click()
    field = wait(driver, lambda d: d.find_elements("css selector", f"#{block} input[type=file]"),
                 f"{block}'s file input")
    field[0].send_keys(str(path))


def screenshot(driver: Any, shots: Path, name: str) -> Path:
    """The page from its top, toasts closed (their messages are in the status lines too)."""
    driver.execute_script("document.querySelectorAll('.toast-close').forEach(b => b.click()); window.scrollTo(0, 0);")
    time.sleep(0.5)
    path = shots / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    return path


# --- tests --------------------------------------------------------------------------------------


def test_the_app_starts_offline_without_waiting_on_the_network(server):
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert server.startup_seconds < 30, f"startup took {server.startup_seconds:.1f} s: is it waiting on a network?"
    print(f"\ngradio app built and serving in {server.startup_seconds:.2f} s")


def test_a_typed_lore_question_gets_a_streamed_reply(browser, shots):
    choose(browser, NEWEST_F16, "text only")
    before = len(bubbles(browser, "bot"))
    ask(browser, "Answer in one short sentence: which village is Naruto Uzumaki from?")
    final = answered(browser, before)
    assert "stopped at end of turn" in final and "checkpoint-30" in final
    assert len(bubbles(browser, "bot")[-1].text.strip()) > 10
    assert browser.find_element("css selector", "#message textarea").get_attribute("value") == ""
    screenshot(browser, shots, "1-typed")


def test_a_spoken_question_is_transcribed_into_the_box_and_sent(browser, shots, tmp_path):
    spoken = LORE_QUESTIONS[1]  # "Which village is Naruto from?"
    users, bots = len(bubbles(browser, "user")), len(bubbles(browser, "bot"))
    upload(browser, "voice", speak(spoken, tmp_path / "question.wav"))
    final = answered(browser, bots)
    assert final.startswith("Heard “"), final
    asked = bubbles(browser, "user")[users:]
    assert len(asked) == 1
    print(f"\nbrowser voice: {spoken!r} -> {asked[0].text!r}")
    assert word_error_rate([spoken], [asked[0].text]) <= 0.4
    screenshot(browser, shots, "2-voice")


def test_switching_models_says_what_each_can_do_and_a_broken_export_is_a_message(browser, shots):
    assert "reads pictures" in choose(browser, MERGED, "Ready")
    broken = choose(browser, BROKEN, "Error")
    assert "llama.cpp cannot load" in broken and "re-run the export" in broken
    screenshot(browser, shots, "3-broken-export")
    assert "text only" in choose(browser, NEWEST_F16, "Ready")
    before = len(bubbles(browser, "bot"))
    ask(browser, "Say hello.")
    assert "tokens in" in answered(browser, before), "the app must keep answering after a broken export"


def test_a_picture_is_refused_by_a_gguf_and_read_by_a_merged_model(browser, shots):
    choose(browser, NEWEST_F16, "Ready")
    upload(browser, "picture", PICTURE)
    wait(browser, lambda d: "cannot look at pictures" in status(d), "the GGUF's refusal of the picture")
    before = len(bubbles(browser, "bot"))
    ask(browser, "Who is this?")
    refused = wait(browser, lambda d: status(d) if "Error" in status(d) else None, "the refusal on send")
    assert "picture was not sent" in refused and len(bubbles(browser, "bot")) == before
    assert browser.find_element("css selector", "#message textarea").get_attribute("value") == "Who is this?"

    choose(browser, MERGED, "reads pictures")
    browser.find_element("css selector", "#settings").click()  # open the decoding settings
    tokens = wait(browser, lambda d: d.find_elements("css selector", "#max_new_tokens input[type=number]"),
                  "the max new tokens field")[0]
    tokens.clear()
    tokens.send_keys("16\t")
    ask(browser, "Who is this?")
    final = answered(browser, before)
    assert "checkpoint-10 · merged" in final and ("16 tokens" in final or "stopped at end of turn" in final)
    assert browser.find_elements("css selector", "#chat [data-testid=user] img"), "the picture shows in the chat"
    print(f"\npicture question -> {bubbles(browser, 'bot')[-1].text!r} ({final})")
    path = screenshot(browser, shots, "4-picture")
    shutil.copy(path, SHOT_FOR_REVIEW)


def test_the_api_answers_as_the_backend_does(server, store):
    from gradio_client import Client

    from loretune.chat.backends import LlamaCppChat, reply
    from loretune.chat.models import Catalogue
    from loretune.model.generate import Decoding

    client = Client(server.url, verbose=False)
    labels = client.predict(api_name="/models")
    assert labels == [m.label for m in Catalogue(store).models()] and NEWEST_F16 in labels[0]
    question = LORE_QUESTIONS[0]
    answer = client.predict(question, labels[0], SYSTEM, 0.0, 0.9, 48, api_name="/ask")
    direct = LlamaCppChat(gguf_file(), format_dir=merged_folder())
    try:
        expected = reply(direct, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                         Decoding(max_new_tokens=48))
    finally:
        direct.close()
    assert answer == expected and len(answer) > 20
    with pytest.raises(Exception, match="llama.cpp cannot load"):
        client.predict(question, next(label for label in labels if BROKEN in label), api_name="/ask")
