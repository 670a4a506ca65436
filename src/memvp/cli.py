"""Command line: ``memvp demo | train | predict | eval | flops | bench | explain | serve | instruct-demo |
video-demo | two-photos``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from .recipes import DEMO_VISION_ENCODER as DEMO_VISION


def _config(args):
    from .training import TrainConfig

    overrides = list(args.overrides)
    if getattr(args, "adapter", None):
        overrides.append(f"adapter={args.adapter}")
    if args.skip_bad:
        overrides.append("skip_bad=true")
    names = [n.strip() for given in getattr(args, "output_format", None) or [] for n in given.split(",") if n.strip()]
    if names:
        overrides.append(f"output_formats={json.dumps(names)}")
    resume = getattr(args, "resume", None)
    if resume is not None and "=" in resume and not os.path.exists(resume):
        overrides.append(resume)  # `--resume key=value`: argparse took an override for the path
        args.overrides, args.resume = [*args.overrides, resume], "latest"  # the resume hint repeats it
        resume = "latest"
    if resume is not None:
        overrides.append(f"resume={json.dumps(resume)}")  # quoted: a path stays a string
    return TrainConfig.from_yaml(args.config, overrides)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _flops(output: str) -> None:
    from .atomic import atomic_write_text
    from .flops import PAPER_SETTINGS, VIDEO_SETTINGS, format_table, instruction_table, paper_table

    rows = paper_table(PAPER_SETTINGS + VIDEO_SETTINGS)  # the image tasks of Tables 1-3, then Table 8's video QA
    print(format_table(rows))
    pair = instruction_table()
    print(
        f"\nTable 9 pair ({pair['model']}, L={pair['text_length']}, n={pair['n_visual']}, LoRA r=128 on every "
        f"linear layer): input space {pair['counted_total']['input_space'] / 1e9:.1f} G, MemVP + LoRA "
        f"{pair['counted_total']['memvp_lora'] / 1e9:.1f} G: {pair['input_space_over_memvp_lora']:.2f}x"
    )
    atomic_write_text(output, json.dumps({"paper_table": rows, "instruction_tuning": pair}, indent=2))
    print(f"\nwrote {output}")


def _bench(args) -> None:
    from .atomic import atomic_write_text
    from .bench import BenchConfig, format_bench, plot_sweep, run_bench

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    cfg = BenchConfig(
        model=args.model,
        batch_size=args.batch_size,
        text_length=args.text_length,
        n_visual=args.n_visual,
        visual_dim=args.visual_dim,
        decode_tokens=args.decode_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        methods=methods,
        dtype=args.dtype,
        device=args.device,
        sweep_lengths=_ints(args.sweep_lengths),
        sweep_n=_ints(args.sweep_n),
        sweep_repeats=args.sweep_repeats,
    )
    if args.plot and not (cfg.sweep_lengths or cfg.sweep_n):
        raise ValueError("--plot draws the sweep: give --sweep-lengths and/or --sweep-n")
    result = run_bench(cfg)
    print(format_bench(result))
    atomic_write_text(args.output, json.dumps(result, indent=2))
    print(f"\nwrote {args.output}")
    if args.plot:
        plot_sweep(result, args.plot)
        print(f"wrote {args.plot}")


def _add_explain_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("explain", help="which image regions each question word retrieves (paper Fig. 5/6)")
    p.add_argument("--image", required=True, help="the image")
    p.add_argument("--question", required=True, help="the question, as it would appear in a data set")
    p.add_argument("--tokens", nargs="+", metavar="WORD", help="words of the question to map (default: all)")
    p.add_argument(
        "--block-top",
        type=int,
        default=0,
        metavar="K",
        help="also answer with the K most responsive visual entries blocked in every layer",
    )
    p.add_argument("--output", help="PNG to write (default: explain_<image name>.png)")
    p.add_argument(
        "--absolute",
        action="store_true",
        help="map |phi| (how much of each entry is read, whatever the sign) instead of phi",
    )
    p.add_argument(
        "--asked-box",
        metavar="X0,Y0,X1,Y1",
        help="the asked object's box in fractions of the image's width and height: also print, per layer, "
        "the retrieval weight on its grid cells against a uniform reading (selectivity); without it, the "
        "part of the image the question names, if it names one ('what is in the top left?')",
    )
    _add_adapter_arguments(p)
    return p


def _parse_box(text: str, flag: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` as a normalised box, or ValueError naming ``flag``."""
    from .datasets import asked_box

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = text
    return asked_box(values, flag)


def _add_adapter_arguments(p: argparse.ArgumentParser) -> None:
    """What ``load_pretrained`` takes from the adapter unless a flag overrides it."""
    p.add_argument("--adapter", required=True, help="adapter directory or Hub id (any method's save_pretrained)")
    p.add_argument(
        "--language-model",
        help="the adapter's base model (default: the one it records; smollm2 for adapters that record none)",
    )
    p.add_argument(
        "--vision-encoder",
        help=f"the encoder it was trained with (default: the one it records; {DEMO_VISION} for adapters that "
        "record none)",
    )
    p.add_argument("--max-new-tokens", type=int, help="answer tokens (default: as in training, else 10)")
    p.add_argument("--max-length", type=int, help="prompt + answer tokens (default: as in training, else 128)")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default="float32",
        help="the language model's weights (bfloat16 halves a 7B model's memory on a GPU)",
    )
    p.add_argument("--device", help="where the models run, e.g. cuda:1 (default: cuda when there is one, else cpu)")


def _load_adapter(args: argparse.Namespace):
    """``load_pretrained`` of ``--adapter``, flags overriding what it records; adapters that record nothing
    (saved before adapter format 2) get the demo's models unless flags name others. Lengths are checked
    before any model loads (by load_pretrained)."""
    import torch

    from .loading import load_pretrained, prompt_lengths, recorded_pipeline

    recorded = recorded_pipeline(args.adapter)
    max_new_tokens, max_length = prompt_lengths(
        recorded, args.max_new_tokens, args.max_length, ("--max-new-tokens", "--max-length")
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    return load_pretrained(
        args.adapter,
        args.language_model or (None if recorded.get("language_model") else "smollm2"),
        args.vision_encoder or (None if recorded.get("vision_encoder") else DEMO_VISION),
        dtype=getattr(torch, args.dtype),
        device=device,
        max_new_tokens=max_new_tokens,
        max_length=max_length,
    )


def _explain(args: argparse.Namespace) -> int:
    """Run ``memvp explain``; bad input raises ValueError / FileNotFoundError (the CLI exits 2)."""
    import torch

    from .datasets import place_box
    from .explain import explain, require_maps
    from .explain_plot import plot_explanation
    from .instruments import format_report
    from .methods import adapter_method
    from .vision import box_coverage, grid_region, load_image

    if args.block_top < 0:
        raise ValueError(f"--block-top must be >= 0, got {args.block_top}")
    image = load_image(args.image)  # a missing / corrupt image fails before the models load
    if not args.question.strip():
        raise ValueError("--question is empty")
    box = None if args.asked_box is None else _parse_box(args.asked_box, "--asked-box")
    named = None if box is not None else place_box(args.question)  # "what is in the top left?": that quarter
    box = box or named
    output = Path(args.output or f"explain_{Path(args.image).stem}.png")
    method = adapter_method(args.adapter)
    require_maps(method.model_class, method.name)  # before any model loads
    loaded = _load_adapter(args)
    model, tokenizer, encoder = loaded.model, loaded.tokenizer, loaded.vision_encoder
    asked = None
    if box is not None:
        asked = box_coverage(encoder, box, *image.size)
        if asked is None and not named:
            raise ValueError(f"--asked-box: the vision encoder {encoder.name} has no image grid to place the box on")
    with torch.no_grad():
        features = encoder.encode([image])
    result = explain(
        model,
        tokenizer,
        features,
        args.question,
        args.tokens,
        args.block_top,
        loaded.max_new_tokens,
        loaded.prompt_template,
        max_length=loaded.max_length,
        absolute=args.absolute,
        asked_entries=asked,
    )
    plot_explanation(image, result, output, region=grid_region(encoder, *image.size))
    summary = result.summary()
    side = result.maps.grid_side
    print(f"answer: {result.answer!r}")
    if result.blocked:
        print(
            f"answer with the top {len(result.blocked)} entries blocked "
            f"{[tuple(c) for c in summary['blocked_entries']]}: {result.answer_blocked!r}"
        )
    cells = ", ".join(f"{w['word']} {tuple(w['hottest_cell'])}" for w in summary["words"])
    print(f"hottest cell (row, col) of the {side}x{side} grid per word: {cells}")
    if named and asked is not None:
        print(f"selectivity: on the part of the image the question names, (x0, y0, x1, y1) = {box}")
    print(format_report(result.scale))
    print(f"wrote {output}")
    return 0


def _add_serve_parser(subparsers) -> argparse.ArgumentParser:
    from .serve import DEFAULT_HOST, DEFAULT_PORT, MAX_PIXELS, MAX_UPLOAD_MB  # constants only: gradio loads on serving

    p = subparsers.add_parser(
        "serve",
        help="web demo of an adapter: upload an image, ask, read the streamed answer "
        "(gradio; binds 127.0.0.1 by default)",
    )
    _add_adapter_arguments(p)
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest upload accepted")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest image accepted (width x height)")
    return p


class _StderrHandler(logging.StreamHandler):
    """Logs to the ``sys.stderr`` of the moment (a test's capture replaces it between commands)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; the property decides
        pass


def configure_logging(verbosity: int) -> None:
    """The library's messages (logger ``memvp``) on stderr: warnings only with -q, debug details with -v."""
    logger = logging.getLogger("memvp")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand's parser."""
    parser = argparse.ArgumentParser(prog="memvp", description="Memory-space visual prompting (MemVP)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the embedded demo: synthetic VQA, MemVP vs w/o visual prompts")
    demo.add_argument("--output-dir", help="default runs/demo (runs/demo-where with --task where)")
    demo.add_argument("--quick", action="store_true", help="a tiny run (seconds) to check the wiring")
    demo.add_argument(
        "--task",
        default="one-object",
        help="one-object (default: one square or circle per scene) or where (six objects, the asked "
        "one named by its colour; MemVP trains with the grounding loss, next to MemVP without it)",
    )
    demo.add_argument(
        "--compare",
        action="store_true",
        help="also train input-space LoRA (LLaVA-LoRA) and text-only LoRA with the same budget",
    )
    demo.add_argument(
        "--arms",
        help="comma-separated arms to train (no_visual_prompts, text_only, input_space, memvp, "
        "memvp_answer_loss, adem and Table 4's keys_only, values_only, global_token, positions_concat; "
        "memvp required), or 'table4' (Table 4's ablations and MemVP); default: the task's (w/o visual "
        "prompts and MemVP; --task where adds memvp_answer_loss), --compare adds text_only and input_space",
    )

    for name, help_text in (
        ("train", "fine-tune MemVP from a YAML config"),
        ("predict", "write predictions of an adapter on eval_data"),
        ("eval", "predictions + metrics of an adapter on eval_data"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", help="YAML file (keys of memvp.training.TrainConfig)")
        p.add_argument("overrides", nargs="*", help="key=value, dotted for nested keys (memvp.num_entries=64)")
        p.add_argument(
            "--skip-bad",
            action="store_true",
            help="skip samples whose image is missing or unreadable (counted and reported)",
        )
        if name != "train":
            p.add_argument("--adapter", help="adapter directory (else the config's adapter key)")
            p.add_argument(
                "--output-format",
                action="append",
                metavar="NAME[,NAME]",
                help="also write the predictions for the field's tools, next to predictions.json: llava_jsonl "
                "(any data set), vqav2_eval_ai, gqa_eval, coco_results, mmbench_submission, pope, mme, or all "
                "(every one of the eval_data format's); repeat it or separate names with commas",
            )
        else:
            p.add_argument(
                "--resume",
                nargs="?",
                const="latest",
                default=None,
                metavar="CHECKPOINT",
                help="continue an interrupted run: the newest checkpoint of output_dir, or this one",
            )

    flops = sub.add_parser(
        "flops",
        help="FLOPs per sample of each method on the paper's models (eq. 13-15 and torch's flop counter, meta device)",
    )
    flops.add_argument("--output", default="runs/flops.json", help="JSON file for the numbers")

    bench = sub.add_parser("bench", help="speed and memory of memvp / input_space / text_only side by side")
    bench.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (real weights), llama-1024 (random init, hidden 1024) or a model path",
    )
    bench.add_argument("--batch-size", type=int, default=4)
    bench.add_argument("--text-length", type=int, default=64)
    bench.add_argument("--n-visual", type=int, default=256)
    bench.add_argument("--visual-dim", type=int, default=1024)
    bench.add_argument("--decode-tokens", type=int, default=16)
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--methods", default="text_only,input_space,memvp")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    bench.add_argument("--device", default="auto")
    bench.add_argument("--sweep-lengths", default="", help="comma-separated text lengths, e.g. 16,64,256,512")
    bench.add_argument("--sweep-n", default="", help="comma-separated visual-token counts, e.g. 16,64,256")
    bench.add_argument("--sweep-repeats", type=int, default=3)
    bench.add_argument("--output", default="runs/bench.json")
    bench.add_argument(
        "--plot",
        nargs="?",
        const="runs/bench.png",
        default=None,
        help="also draw the sweep (PNG, like the paper's Fig. 2)",
    )

    _add_explain_parser(sub)
    _add_serve_parser(sub)
    instruct = sub.add_parser(
        "instruct-demo",
        help="visual instruction tuning in miniature: stage 1 (captions, "
        "MemVP) then stage 2 (conversations, MemVP + LoRA) on the real models",
    )
    instruct.add_argument("--output-dir", default="runs/instruct")
    instruct.add_argument("--quick", action="store_true", help="a tiny run (seconds) to check the wiring")
    video = sub.add_parser(
        "video-demo",
        help="video QA in miniature: synthetic clips (real .mp4 files) as LLaVA "
        "video conversations, MemVP on frame features vs w/o visual prompts",
    )
    video.add_argument("--output-dir", default="runs/video")
    video.add_argument("--quick", action="store_true", help="a tiny run (seconds) to check the wiring")
    gpu = sub.add_parser(
        "gpu-check",
        help="a few minutes on a GPU: bf16 / fp16 steps and generation of MemVP, "
        "MemVP + ViT adapters and input-space LoRA on a random 1B LLaMA, and the "
        "training loop's loss going down (scripts/gpu_check.sh)",
    )
    gpu.add_argument("--output-dir", default="runs/gpu-check")
    gpu.add_argument("--device", default="cuda")
    gpu.add_argument("--size", default="1b", choices=["1b", "tiny"], help="tiny: CPU-sized models (the tests)")
    gpu.add_argument("--steps", type=int, default=100, help="optimizer steps of each training run")
    photos = sub.add_parser("two-photos", help="one minute on the real models: two photos, two answers")
    photos.add_argument("--output-dir", default="runs/two-photos")
    photos.add_argument("--steps", type=int, default=30)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after --adapter too: leftovers that look like key=value are overrides.
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    configure_logging(-1 if args.quiet else 1 if args.verbose else 0)

    try:
        if args.command == "demo":
            from .recipes.demo import run_demo

            run_demo(
                args.output_dir,
                quick=args.quick,
                compare=args.compare,
                arms=args.arms.split(",") if args.arms else None,
                task=args.task,
            )
        elif args.command == "train":
            from accelerate import PartialState

            from .training import train

            result = train(_config(args))
            if PartialState().is_main_process:  # under accelerate launch / torchrun: print once
                print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
        elif args.command in ("predict", "eval"):
            from .training import run_eval

            print(json.dumps(run_eval(_config(args), with_metrics=args.command == "eval"), indent=2))
        elif args.command == "flops":
            _flops(args.output)
        elif args.command == "bench":
            _bench(args)
        elif args.command == "explain":
            return _explain(args)
        elif args.command == "serve":
            from .serve import check_serve_args, serve

            check_serve_args(args)  # before the models load
            return serve(args, _load_adapter(args))
        elif args.command == "instruct-demo":
            from .recipes.instruct import run_instruct_demo

            run_instruct_demo(args.output_dir, quick=args.quick)
        elif args.command == "video-demo":
            from .recipes.videos import run_video_demo

            run_video_demo(args.output_dir, quick=args.quick)
        elif args.command == "gpu-check":
            from .recipes.gpu_check import format_report, run_gpu_check

            print(format_report(run_gpu_check(args.output_dir, size=args.size, device=args.device, steps=args.steps)))
        elif args.command == "two-photos":
            from .recipes.two_photos import run_demo as run_two_photos

            result = run_two_photos(args.output_dir, steps=args.steps)
            return 0 if result["after_reload"] == result["after"] else 1
    except (ValueError, FileNotFoundError, KeyError, FloatingPointError) as e:
        print(f"memvp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM: one line, the shell's code for SIGINT
        print(f"memvp {args.command}: {_interrupted(args, e)}", file=sys.stderr)
        return 130
    return 0


def _interrupted(args, e: KeyboardInterrupt) -> str:
    from .training import TrainingInterrupted

    if not isinstance(e, TrainingInterrupted):
        return "interrupted; files written so far are complete (every write is atomic)"
    stopped = f"stopped by {e.signal_name} after step {e.step} of {e.total_steps}, saved {e.checkpoint}"
    if args.command != "train":  # a recipe's run: its own command starts it again
        return stopped
    command = ["memvp", "train", args.config, *args.overrides, *(["--skip-bad"] if args.skip_bad else []), "--resume"]
    return f"{stopped}; resume with: {shlex.join(command)}"


if __name__ == "__main__":
    sys.exit(main())
