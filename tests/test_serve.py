"""``memvp serve`` (memvp.serve): the answer logic on tiny models, then the real web page in headless
Chromium (selenium): upload a PNG, ask, read the streamed answer back; bad uploads get a message.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``); without them it fails, saying so: CI installs them (run.sh). Set
``MEMVP_SERVE_SCREENSHOT=path.png`` to also save a screenshot of the page with an answer.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_explain import saved  # noqa: F401  (a fixture, used by name below)

from memvp.cli import build_parser, main
from memvp.explain import encode_prompt, generate_answer, load_explainer
from memvp.generation import first_line
from memvp.serve import Answerer, BadInput, check_question, read_upload

QUESTION = "What shape is the red object?"
MAX_NEW_TOKENS = 10
MAX_PIXELS = 100_000  # the server's limit in the browser test: big.png (400 x 400) is over it
MAX_UPLOAD_MB = 0.03  # ... and heavy.png (150 x 150 noise, ~66 KB) over this one
STARTUP_S = 180  # importing torch + transformers + gradio on a busy 2-core machine


@pytest.fixture(scope="module")
def files(saved):  # noqa: F811
    """test_explain's tiny LM (character tokenizer), tiny CLIP (4 x 4 patches), MemVP adapter and
    scene, plus the uploads of the tests here."""
    root = saved
    Image.new("RGB", (400, 400), (200, 30, 30)).save(root / "big.png")
    noise = torch.randint(0, 256, (150, 150, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(noise.numpy()).save(root / "heavy.png")
    (root / "notes.txt").write_text("this is not an image\n")
    (root / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n but the rest is not")
    return root


@pytest.fixture(scope="module")
def loaded(files):
    return load_explainer(files / "adapter", str(files / "vit"), str(files / "lm"))


@pytest.fixture(scope="module")
def expected(files, loaded):
    """The answer ``explain.generate_answer`` (as ``predict``) gives: what the page must show."""
    model, tok, encoder = loaded
    with torch.no_grad():
        feats = encoder.encode([Image.open(files / "scene.png").convert("RGB")])
    ids = encode_prompt(tok, QUESTION, max_length=128 - MAX_NEW_TOKENS).input_ids
    answer = generate_answer(model, tok, ids, feats, max_new_tokens=MAX_NEW_TOKENS)
    assert answer, "the tiny model's answer is empty: pick another seed or question"
    return answer


# ----------------------------------------------------------------------------- no browser
def test_read_upload_messages(files):
    img = read_upload(files / "scene.png")
    assert img.mode == "RGB" and img.size == Image.open(files / "scene.png").size
    cases = [
        (None, {}, "Upload an image first"),
        (files / "notes.txt", {}, "notes.txt is not an image"),
        (files / "fake.png", {}, "fake.png is not an image"),
        (files / "big.png", {"max_pixels": MAX_PIXELS}, "400 x 400 pixels, the limit is 0.1 megapixels"),
        (files / "scene.png", {"max_bytes": 100}, "scene.png is too large"),
        (files / "gone.png", {}, "did not arrive"),
    ]
    for path, limits, message in cases:
        with pytest.raises(BadInput, match=message):
            read_upload(path, **limits)
    with pytest.raises(BadInput, match="Type a question"):
        check_question("  ")
    assert first_line("  a b\nc d ") == "a b"


def test_stream_yields_growing_prefixes_of_the_predict_answer(files, loaded, expected):
    model, tok, encoder = loaded
    answerer = Answerer(model, tok, encoder, max_new_tokens=MAX_NEW_TOKENS)
    feats = answerer.features(Image.open(files / "scene.png").convert("RGB"))
    parts = list(answerer.stream(QUESTION, feats))
    assert parts[-1] == expected
    assert len(parts) > 1, f"not streamed: {parts}"
    assert all(b.startswith(a.rstrip()) for a, b in zip(parts, parts[1:])), parts

    # Closing the stream early (the page went away) stops generation and frees the model.
    stream = answerer.stream(QUESTION, feats)
    next(stream)
    stream.close()
    assert answerer.lock.acquire(timeout=30)
    answerer.lock.release()

    with pytest.raises(BadInput, match="too long"):
        answerer.prompt_ids("What " * 40)
    picture = answerer.heatmap(Image.open(files / "scene.png").convert("RGB"), QUESTION, feats)
    assert picture.mode == "RGB" and min(picture.size) > 100


def test_a_map_that_can_not_be_drawn_keeps_the_answer_and_says_it_is_the_map(files, loaded):
    """Issue 24.10: a question with no words showed "No answer: ..." while its answer was on screen."""
    from memvp.serve import ask_steps

    model, tok, encoder = loaded
    answerer = Answerer(model, tok, encoder, max_new_tokens=MAX_NEW_TOKENS)
    question = "? !"  # no words to map, but a prompt the model answers
    answer = list(answerer.stream(question, answerer.features(read_upload(files / "scene.png"))))[-1]
    steps = list(ask_steps(answerer, read_upload, files / "scene.png", question, True))
    final_answer, status, picture = steps[-1]
    assert final_answer == answer and picture is None
    assert status.startswith("Answered in ") and "No answer" not in status
    assert "⚠️ The map could not be drawn: the question '? !' has no words to explain" in status
    # Without the map, and with a question that has words, nothing changes.
    assert list(ask_steps(answerer, read_upload, files / "scene.png", question, False))[-1][1].startswith("Answered")
    *_, (_, status, picture) = ask_steps(answerer, read_upload, files / "scene.png", QUESTION, True)
    assert "Map drawn" in status and picture is not None
    *_, (shown, status, _) = ask_steps(answerer, read_upload, files / "notes.txt", QUESTION, True)
    assert shown == "" and status.startswith("⚠️ No answer: notes.txt is not an image")


def test_binds_to_localhost_by_default():
    args = build_parser().parse_args(["serve", "--adapter", "a", "--vision-encoder", "v"])
    assert args.host == "127.0.0.1"


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--adapter", "nowhere"), "holds no adapter"),
        (("--port", "70000"), "--port must be"),
        (("--max-new-tokens", "200"), "must exceed --max-new-tokens"),
    ],
)
def test_serve_bad_options_exit_2_with_one_line(files, capsys, extra, message):
    flag, value = extra
    argv = [
        "serve",
        "--adapter",
        str(files / "adapter"),
        "--language-model",
        str(files / "lm"),
        "--vision-encoder",
        str(files / "vit"),
        flag,
        str(files / value) if flag == "--adapter" else value,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- the server and the browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


@pytest.fixture(scope="module")
def server(files):
    """``python -m memvp.cli serve`` (= ``memvp serve``) on a free port of 127.0.0.1; always stopped."""
    port = _free_port()
    log = open(files / "server.log", "w")  # noqa: SIM115 (the server writes it until the fixture ends)
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(files / "gradio-tmp"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        "-m",
        "memvp.cli",
        "serve",
        "--adapter",
        str(files / "adapter"),
        "--language-model",
        str(files / "lm"),
        "--vision-encoder",
        str(files / "vit"),
        "--port",
        str(port),
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--max-pixels",
        str(MAX_PIXELS),
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
    ]
    proc = subprocess.Popen(command, cwd=files, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"memvp serve exited with {proc.returncode}:\n{(files / 'server.log').read_text()[-3000:]}")
            try:
                with opener.open(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"memvp serve did not answer on {url} within {STARTUP_S} s:\n"
                    f"{(files / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser test needs selenium (pip install -r requirements.txt)")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None
    )
    if binary is None or driver_path is None:
        pytest.fail(
            "the browser test needs headless Chromium and its driver, not found on PATH: "
            "apt-get install -y chromium chromium-driver (Debian; run.sh does this when it can)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-proxy-server",
        "--window-size=1280,1000",
        "--disable-extensions",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The demo page in the browser, found by the element ids of ``memvp.serve.build_app``."""

    def __init__(self, driver, url: str, timeout: float = 90):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.By = driver, By
        self.wait = WebDriverWait(driver, timeout)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ask"))

    def find(self, css: str):
        return self.driver.find_element(self.By.CSS_SELECTOR, css)

    def status(self) -> str:
        return self.find("#status").text.strip()

    def wait_status(self, text: str) -> str:
        try:
            self.wait.until(lambda d: text in self.status())
        except Exception:
            raise AssertionError(f"status never showed {text!r}; it shows {self.status()!r}") from None
        return self.status()

    def upload(self, path: Path) -> None:
        self.find("#image input[type=file]").send_keys(str(path))

    def ask(self, question: str, show_map: bool = False) -> None:
        box = self.find("#question textarea, #question input")
        box.clear()
        box.send_keys(question)
        if show_map:
            self.find("#show-map input[type=checkbox]").click()
        self.find("#ask").click()

    def answer(self) -> str:
        return self.find("#answer textarea, #answer input").get_property("value")


def test_browser_upload_ask_and_read_the_answer(server, browser, files, expected):
    url, port = server
    assert _listening(port) == {"0100007F"}, "memvp serve must bind to 127.0.0.1 only by default"

    # Not an image: a message in the page (at upload, and again on Ask), no answer.
    page = Page(browser, url)
    page.upload(files / "notes.txt")
    assert "notes.txt is not an image" in page.wait_status("not an image")
    page.ask(QUESTION)
    assert "notes.txt is not an image" in page.wait_status("No answer:") and page.answer() == ""

    # Too many pixels for this server (--max-pixels).
    page = Page(browser, url)
    page.upload(files / "big.png")
    assert "400 x 400 pixels" in page.wait_status("too large")

    # Too many bytes (--max-upload-mb): gradio refuses the upload itself and says why.
    assert (files / "heavy.png").stat().st_size > MAX_UPLOAD_MB * 2**20 > (files / "scene.png").stat().st_size
    page = Page(browser, url)
    page.upload(files / "heavy.png")
    page.wait.until(lambda d: "exceed the maximum allowed size" in page.find("body").text)
    assert "heavy.png" in page.find("body").text

    # A PNG: the streamed answer, as predict() gives it.
    page = Page(browser, url)
    page.upload(files / "scene.png")
    page.wait_status("Image ready")
    page.ask(QUESTION)
    page.wait_status("Answered in")
    assert page.answer() == expected

    # With the knowledge-locating map.
    page.ask(QUESTION, show_map=True)
    page.wait_status("Map drawn")
    assert page.answer() == expected
    page.wait.until(
        lambda d: d.execute_script(
            "const i = document.querySelector('#heatmap img'); return i && i.complete && i.naturalWidth > 100;"
        )
    )
    shot = os.environ.get("MEMVP_SERVE_SCREENSHOT")
    if shot:
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(shot)
