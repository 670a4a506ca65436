"""``memvp serve``: a web demo of an adapter (gradio): upload an image, ask a question, read the answer.

The answer streams in token by token (transformers' ``TextIteratorStreamer``, generation in a
thread); a checkbox adds the knowledge-locating map of ``memvp explain`` (paper Fig. 5) beside it.
A bad upload (not an image, too many bytes or pixels) or a bad question gets a one-line message
in the page, never a traceback. The server binds to 127.0.0.1 unless ``--host`` says otherwise.

gradio is imported inside the functions here, so ``import memvp`` does not need it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .explain import encode_prompt, explain
from .generation import first_line
from .inputs import DEFAULT_PROMPT_TEMPLATE
from .vision import grid_region, load_image

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD_MB = 20.0
MAX_PIXELS = 25_000_000  # PIL itself warns at ~89 M pixels (decompression bombs)

TITLE = "MemVP: ask a question about an image"
INTRO = (
    "Upload an image, type a question, press **Ask**. The answer streams in token by token. "
    "Tick the box to also see which image regions each word of the question reads from the "
    "visual memory (the knowledge-locating map of `memvp explain`, paper Fig. 5)."
)


class BadInput(ValueError):
    """A bad upload or question: its message is shown to the user as it is."""


# ----------------------------------------------------------------------------- checks
def read_upload(
    path: str | os.PathLike | None,
    max_bytes: int | None = int(MAX_UPLOAD_MB * 2**20),
    max_pixels: int | None = MAX_PIXELS,
) -> Image.Image:
    """The uploaded file as an RGB image, or ``BadInput`` with a message for a person.

    The size on disk and the pixel count (read from the header, before decoding) are checked
    first, so a huge or hostile file is refused without being decoded.
    """
    if path is None or str(path) == "":
        raise BadInput("Upload an image first.")
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise BadInput(f"The upload of {name} did not arrive; upload it again.")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise BadInput(f"{name} is too large: {size / 2**20:.1f} MB, the limit is {max_bytes / 2**20:.1f} MB.")
    if size == 0:
        raise BadInput(f"{name} is empty: upload an image (PNG, JPEG, WebP, ...).")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise BadInput(
                    f"{name} is too large: {width} x {height} pixels, the limit is "
                    f"{max_pixels / 1e6:g} megapixels. Downscale it and upload it again."
                )
            img.load()
            return load_image(img)  # RGB; 16-bit grayscale scaled as in training
    except BadInput:
        raise
    except Image.DecompressionBombError:
        raise BadInput(f"{name} is too large to decode safely. Downscale it and upload it again.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        detail = "" if isinstance(e, UnidentifiedImageError) else f" ({e})"
        raise BadInput(
            f"{name} is not an image this demo can read{detail}: upload a PNG, JPEG, WebP, GIF or BMP file."
        ) from None


def check_question(question: str | None) -> str:
    question = (question or "").strip()
    if not question:
        raise BadInput("Type a question about the image.")
    return question


# ----------------------------------------------------------------------------- answering
class Answerer:
    """The model, its tokenizer and vision encoder behind one lock (the visual memory is model
    state, so one request at a time touches it)."""

    def __init__(
        self,
        model,
        tokenizer,
        encoder,
        max_new_tokens: int = 10,
        max_length: int = 128,
        template: str = DEFAULT_PROMPT_TEMPLATE,
        stream_timeout: float = 300.0,
    ):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_length <= max_new_tokens:
            raise ValueError(f"max_length ({max_length}) must exceed max_new_tokens ({max_new_tokens})")
        self.model, self.tokenizer, self.encoder = model.eval(), tokenizer, encoder.eval()
        self.max_new_tokens, self.max_length, self.template = max_new_tokens, max_length, template
        self.stream_timeout = stream_timeout
        self.lock = threading.Lock()

    def features(self, image: Image.Image) -> torch.Tensor:
        with self.lock, torch.no_grad():
            return self.encoder.encode([image])

    def prompt_ids(self, question: str) -> list[int]:
        """The training prompt's tokens; a too-long question is a ``BadInput``."""
        try:  # the prompt gets what the answer leaves, as in predict()
            return encode_prompt(
                self.tokenizer, question, self.template, self.max_length - self.max_new_tokens
            ).input_ids
        except ValueError as e:
            raise BadInput(str(e)[:1].upper() + str(e)[1:] + ".") from None

    def stream(self, question: str, features: torch.Tensor) -> Iterator[str]:
        """Yield the answer so far (greedy, cut at the first line break) each time it grows; the
        last value equals ``explain.generate_answer``. Closing the iterator stops the generation."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ids = torch.tensor([self.prompt_ids(question)], device=next(self.model.parameters()).device)
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.stream_timeout
        )
        stop = threading.Event()
        failure: list[BaseException] = []

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        def generate() -> None:
            try:
                with self.lock, torch.no_grad():
                    self.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        visual_features=features,
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=self.tokenizer.pad_token_id,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([StopWhenAsked()]),
                    )
            except BaseException as e:  # reported by the consumer below
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=generate, name="memvp-serve-generate", daemon=True)
        thread.start()
        text, shown = "", None
        try:
            for chunk in streamer:
                text += chunk
                answer = first_line(text)
                if answer != shown:
                    shown = answer
                    yield answer
                if "\n" in text.strip():  # the answer is complete: predict() keeps the first line only
                    break
        finally:
            stop.set()  # also when the page went away mid-answer (the iterator is closed)
        thread.join(self.stream_timeout)
        if failure:
            raise failure[0]
        if shown is None:
            yield ""

    def heatmap(self, image: Image.Image, question: str, features: torch.Tensor) -> Image.Image:
        """The knowledge-locating map of every word of the question, as ``memvp explain`` draws it."""
        from .explain_plot import plot_explanation

        self.prompt_ids(question)  # a clear message for a too-long question
        with self.lock:
            try:
                result = explain(
                    self.model,
                    self.tokenizer,
                    features,
                    question,
                    None,
                    0,
                    self.max_new_tokens,
                    self.template,
                    self.max_length,
                )
            except ValueError as e:  # e.g. no words to map, a visual grid that is not square
                raise BadInput(str(e)) from None
        with tempfile.TemporaryDirectory(prefix="memvp-serve-") as tmp:
            out = plot_explanation(image, result, Path(tmp) / "map.png", region=grid_region(self.encoder, *image.size))
            with Image.open(out) as png:
                return png.convert("RGB")


# ----------------------------------------------------------------------------- the page
def ask_steps(
    answerer: Answerer, load: Callable[[Any], Image.Image], path, question, show_map
) -> Iterator[tuple[str, str, Any]]:
    """What the page shows after Ask, step by step: (answer, status line, map picture or None). A
    problem with the map comes after the answer and says that it is the map that could not be drawn;
    the answer stays on screen."""
    start = time.perf_counter()
    answer = ""
    try:
        image = load(path)
        question = check_question(question)
        answerer.prompt_ids(question)  # a too-long question fails before any work
        yield "", "Answering…", None
        features = answerer.features(image)
        for answer in answerer.stream(question, features):
            yield answer, "Answering…", None
    except BadInput as e:
        yield answer, f"⚠️ No answer: {e}", None
        return
    except Exception as e:  # a demo page shows one line; the server log keeps the traceback
        traceback.print_exc(file=sys.stderr)
        yield answer, f"⚠️ Something went wrong on the server: {type(e).__name__}: {e}", None
        return
    took = time.perf_counter() - start
    done = f"Answered in {took:.1f} s." if answer else f"Answered in {took:.1f} s: the answer is empty."
    if not show_map:
        yield answer, done, None
        return
    yield answer, done + " Drawing the map…", None
    start_map = time.perf_counter()
    try:
        picture = answerer.heatmap(image, question, features)
    except BadInput as e:
        yield answer, f"{done} ⚠️ The map could not be drawn: {e}", None
        return
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        yield (
            answer,
            f"{done} ⚠️ The map could not be drawn: something went wrong on the server ({type(e).__name__}: {e})",
            None,
        )
        return
    yield answer, f"{done} Map drawn in {time.perf_counter() - start_map:.1f} s.", picture


def build_app(
    model,
    tokenizer,
    encoder,
    *,
    max_new_tokens: int = 10,
    max_length: int = 128,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_pixels: int = MAX_PIXELS,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    title: str = TITLE,
):
    """The gradio Blocks of the demo for a loaded adapter (``memvp.load_pretrained``; maps for MemVP ones).

    Element ids (for tests and CSS): ``image`` (upload), ``preview``, ``question``, ``show-map``,
    ``ask``, ``answer``, ``status``, ``heatmap``. Launch it with ``launch`` (binds 127.0.0.1).
    """
    import gradio as gr

    answerer = Answerer(model, tokenizer, encoder, max_new_tokens, max_length, template)
    max_bytes = int(max_upload_mb * 2**20)

    def _load(path) -> Image.Image:
        return read_upload(path, max_bytes, max_pixels)

    def on_upload(path):
        if path is None:
            return None, ""
        try:
            _load(path)
        except BadInput as e:
            return None, f"⚠️ {e}"
        return path, "Image ready: type a question and press **Ask**."

    def ask(path, question, show_map) -> Iterator[tuple[Any, str, Any]]:
        yield from ask_steps(answerer, _load, path, question, show_map)

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# {title}\n{INTRO}")
        with gr.Row():
            with gr.Column():
                upload = gr.File(
                    label=f"Image (PNG, JPEG, WebP, ...; up to {max_upload_mb:g} MB)", type="filepath", elem_id="image"
                )
                preview = gr.Image(
                    label="Your image", type="filepath", interactive=False, elem_id="preview", height=260
                )
                question = gr.Textbox(
                    label="Question", placeholder="What shape is the red object?", lines=1, elem_id="question"
                )
                show_map = gr.Checkbox(
                    label="Also show where each word looks (knowledge-locating map)", value=False, elem_id="show-map"
                )
                button = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                answer = gr.Textbox(label="Answer", lines=2, interactive=False, elem_id="answer")
                status = gr.Markdown("", elem_id="status")
                heatmap = gr.Image(
                    label="Knowledge-locating map", type="pil", format="png", interactive=False, elem_id="heatmap"
                )
        upload.upload(on_upload, upload, [preview, status], concurrency_limit=4)
        upload.clear(lambda: (None, ""), None, [preview, status])
        for event in (button.click, question.submit):
            event(
                ask,
                [upload, question, show_map],
                [answer, status, heatmap],
                concurrency_limit=1,
                concurrency_id="memvp-model",
            )
    app.memvp_limits = {"max_file_size": max_bytes}
    return app


def launch(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True, quiet: bool = False):
    """Start the server (``block=False``: return once it is up; stop it with ``app.close()``).

    No telemetry, no share link, no web fonts from the internet: the page works offline.
    """
    import gradio as gr

    for key in ("NO_PROXY", "no_proxy"):  # gradio checks its own URL with httpx, which honours HTTP(S)_PROXY
        hosts = [h for h in os.environ.get(key, "").split(",") if h.strip()]
        os.environ[key] = ",".join(hosts + [h for h in ("127.0.0.1", "localhost", host) if h not in hosts])
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    limits = getattr(app, "memvp_limits", {})
    return app.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=quiet,
        ssr_mode=False,
        mcp_server=False,
        theme=theme,
        max_file_size=limits.get("max_file_size"),
    )


# ----------------------------------------------------------------------------- command line
def check_serve_args(args: argparse.Namespace) -> None:
    """The serving options, checked before any model loads."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise ValueError("--max-upload-mb and --max-pixels must be > 0")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError(
            "memvp serve needs gradio: pip install --no-deps gradio==6.31.0 (and the rest of requirements.txt)"
        ) from None


def serve(args: argparse.Namespace, loaded) -> int:
    """Serve a loaded adapter (``memvp.load_pretrained``) until Ctrl-C; its prompt settings are the
    adapter's (flags override them when loading)."""
    app = build_app(
        loaded.model,
        loaded.tokenizer,
        loaded.vision_encoder,
        max_new_tokens=loaded.max_new_tokens,
        max_length=loaded.max_length,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        template=loaded.prompt_template,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"memvp serve: binding to {args.host}: anyone who can reach this machine can use the model",
            file=sys.stderr,
        )
    launch(app, args.host, args.port, block=True)
    return 0


__all__ = [
    "BadInput",
    "read_upload",
    "check_question",
    "Answerer",
    "ask_steps",
    "build_app",
    "launch",
    "serve",
    "check_serve_args",
]
