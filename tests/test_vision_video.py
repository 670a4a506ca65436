"""Video: frame sampling from real video files (PyAV) and frame folders, per-frame global features,
pre-extracted per-video feature files, their cache, and the paper's Table 8 trainable count."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BartConfig, BartForConditionalGeneration, CLIPVisionConfig, CLIPVisionModelWithProjection

from memvp import HFVisionEncoder, MemVPConfig, get_memvp_model
from memvp.datasets import Sample
from memvp.inputs import VisualInputs
from memvp.vision import FrameEncoder, PrecomputedFeatures, VideoClip, frame_indices, load_frame_features, read_frames

FPS, FRAMES = 6, 12


def _grey(level: int, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), (level, level, level))


def _write_video(path, levels, fps=FPS, first_pts=0):
    """An MPEG-4 video whose frame k is a flat grey of ``levels[k]`` (decodes back within a few levels),
    its first frame at ``first_pts / fps`` seconds."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for k, level in enumerate(levels):
            frame = av.VideoFrame.from_image(_grey(level))
            frame.pts = first_pts + k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def _which(frames, levels) -> list[int]:
    """Index of the source frame each decoded frame shows (nearest grey level)."""
    return [int(np.argmin([abs(float(np.asarray(f).mean()) - lv) for lv in levels])) for f in frames]


LEVELS = [10 + 20 * k for k in range(FRAMES)]


def test_frame_indices_take_the_middle_of_equal_parts():
    assert frame_indices(12, 6) == [1, 3, 5, 7, 9, 11]
    assert frame_indices(12, 3, first=6, last=11) == [7, 9, 11]
    assert frame_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # fewer frames than tokens: repeated, still 6
    assert frame_indices(5, 2, first=10, last=20) == [4, 4]  # a span past the end: the last frame
    with pytest.raises(ValueError):
        frame_indices(0, 4)


def test_video_file_frames_are_sampled_uniformly_over_the_clip_or_its_span(tmp_path):
    video = _write_video(tmp_path / "clip.mp4", LEVELS)
    assert _which(read_frames(VideoClip(video), 6), LEVELS) == [1, 3, 5, 7, 9, 11]
    assert _which(read_frames(VideoClip(video), 12), LEVELS) == list(range(12))
    # TVQA's ts: only the second second (frames 6..11 at 6 fps).
    assert _which(read_frames(VideoClip(video, span=(1.0, 2.0)), 3), LEVELS) == [7, 9, 11]
    # A span outside the video falls back to all of it.
    assert _which(read_frames(VideoClip(video, span=(50.0, 60.0)), 2), LEVELS) == [3, 9]


def test_spans_count_from_the_video_start_and_a_point_span_reads_that_frame(tmp_path):
    # Streams that start later than 0 s (here 1.5 s; MPEG-TS often 1.4 s): TVQA's ts are seconds from the
    # clip's start, not timestamps. Matroska stores no stream duration: the frame times are read first.
    import av

    for name in ("clip.ts", "clip.mkv"):
        video = _write_video(tmp_path / name, LEVELS, first_pts=9)
        with av.open(video) as container:
            stream = container.streams.video[0]
            assert float(stream.start_time * stream.time_base) == 1.5
            assert (stream.duration is None) == name.endswith(".mkv")
        assert _which(read_frames(VideoClip(video, span=(1.0, 2.0)), 3), LEVELS) == [7, 9, 11], name
        assert _which(read_frames(VideoClip(video), 6), LEVELS) == [1, 3, 5, 7, 9, 11], name
    mp4 = _write_video(tmp_path / "clip.mp4", LEVELS)
    assert _which(read_frames(VideoClip(mp4, span=(1.25, 1.25)), 2), LEVELS) == [7, 7]  # How2QA's [t:t]


def test_frame_folders_use_their_fps_for_the_span(tmp_path):
    folder = tmp_path / "s01e02_seg02_clip_03"
    folder.mkdir()
    for k, level in enumerate(LEVELS):
        _grey(level).save(folder / f"{k + 1:05d}.jpg", quality=95)
    (folder / "notes.txt").write_text("not a frame")
    assert _which(read_frames(VideoClip(str(folder)), 4), LEVELS) == frame_indices(12, 4)
    # 3 fps (TVQA's frames): seconds 2..4 are frames 6..11.
    assert _which(read_frames(VideoClip(str(folder), span=(2.0, 4.0), fps=3.0), 3), LEVELS) == [7, 9, 11]
    unpadded = tmp_path / "unpadded"  # ffmpeg's %d.jpg: 1, 2, ..., 10, 11, 12 in time order
    unpadded.mkdir()
    for k, level in enumerate(LEVELS):
        _grey(level).save(unpadded / f"{k + 1}.jpg", quality=95)
    assert _which(read_frames(VideoClip(str(unpadded)), 12), LEVELS) == list(range(12))


def test_bad_videos_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="video not found: .*missing.mp4"):
        read_frames(VideoClip(str(tmp_path / "missing.mp4")), 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="cannot decode video .*bad.mp4"):
        read_frames(VideoClip(str(bad)), 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        read_frames(VideoClip(str(empty)), 4)


def _tiny_clip_with_projection():
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
            projection_dim=8,
        )
    ).eval()
    from transformers import CLIPImageProcessor

    return HFVisionEncoder(model, CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}))


def test_frame_encoder_gives_each_frame_its_projected_cls_in_time_order(tmp_path):
    image_encoder = _tiny_clip_with_projection()
    assert image_encoder.global_dim == 8  # CLIP's image embedding (512 for ViT-B/32), not the 16-d hidden size
    encoder = FrameEncoder(image_encoder, num_frames=3)
    assert (encoder.feature_dim, encoder.num_tokens) == (8, 3)
    video = _write_video(tmp_path / "v.mp4", LEVELS)
    with torch.no_grad():
        feats = encoder.encode([VideoClip(video), VideoClip(video, span=(1.0, 2.0))])
        frames = read_frames(VideoClip(video), 3)
        pixels = image_encoder.preprocess(frames)
        one_by_one = torch.cat([image_encoder.model(pixel_values=p[None]).image_embeds for p in pixels])
    assert feats.shape == (2, 3, 8)
    torch.testing.assert_close(feats[0], one_by_one, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(feats[0], feats[1])  # the span's frames differ
    with pytest.raises(ValueError, match="reads videos"):
        encoder.encode(["image.png"])


def test_pre_extracted_video_features_npy_and_hdf5(tmp_path):
    rows = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)  # row k starts with 4k
    np.save(tmp_path / "vid.npy", rows)
    first_column = lambda t: (t[:, 0] / 4).int().tolist()  # noqa: E731
    assert first_column(load_frame_features(tmp_path / "vid.npy", 4, 5)) == [1, 3, 5, 7, 9]
    # 3 rows per second (TVQA's feature rate): seconds 1..2 are rows 3..5.
    assert first_column(load_frame_features(tmp_path / "vid.npy", 4, 3, span=(1.0, 2.0), fps=3.0)) == [3, 4, 5]
    with h5py.File(tmp_path / "all.h5", "w") as f:  # one file for every video, TVQA-style
        f["s01e02_clip_03"] = rows
        f["s01e02_clip_04"] = rows[::-1].copy()
        f.create_group("grouped")["features"] = rows
    assert first_column(load_frame_features(f"{tmp_path / 'all.h5'}#s01e02_clip_04", 4, 2)) == [7, 2]
    assert first_column(load_frame_features(f"{tmp_path / 'all.h5'}#grouped", 4, 2)) == [2, 7]
    with pytest.raises(ValueError, match="all.h5.*3 datasets"):
        load_frame_features(tmp_path / "all.h5", 4, 2)
    with pytest.raises(ValueError, match="all.h5#nope"):
        load_frame_features(f"{tmp_path / 'all.h5'}#nope", 4, 2)
    with pytest.raises(ValueError, match=r"expected \[n_visual, 5\]"):
        load_frame_features(tmp_path / "vid.npy", 5, 2)
    # A span past the rows reads them all (as a video file does); an empty file is named.
    assert first_column(load_frame_features(tmp_path / "vid.npy", 4, 2, span=(50.0, 60.0), fps=3.0)) == [2, 7]
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="empty.npy have no rows"):
        load_frame_features(tmp_path / "empty.npy", 4, 2)


def test_visual_inputs_encode_each_clip_once_and_read_feature_files_as_frames(tmp_path, monkeypatch):
    video = _write_video(tmp_path / "v.mp4", LEVELS)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 20)
    samples = [
        Sample(id="a", prompt="q", answers=["A"], video=video),
        Sample(id="b", prompt="q", answers=["A"], video=video, span=(1.0, 2.0)),
        Sample(id="c", prompt="q", answers=["A"], video=video),  # same clip as "a": cached once
        Sample(id="d", prompt="q", answers=["A"], video=str(bad)),
    ]
    visual = VisualInputs(FrameEncoder(_tiny_clip_with_projection(), 3), str(tmp_path / "cache"))
    calls = []
    real = FrameEncoder.preprocess
    monkeypatch.setattr(FrameEncoder, "preprocess", lambda self, clips: calls.append(len(clips)) or real(self, clips))
    kept, bad_files = visual.prepare(samples, skip_bad=True)
    assert [s.id for s in kept] == ["a", "b", "c"] and list(bad_files) == [str(bad)]
    feats, has_image = visual.batch(kept)
    assert feats.shape == (3, 3, 8) and has_image.all()
    torch.testing.assert_close(feats[0], feats[2])
    encoded = sum(calls)
    visual.prepare(kept)  # everything cached: nothing decoded again
    assert sum(calls) == encoded
    with pytest.raises(ValueError, match="need a video encoder"):
        VisualInputs(_tiny_clip_with_projection(), str(tmp_path / "cache2")).prepare(samples[:1])
    # Pre-extracted per-video files of any length, read as num_frames rows.
    np.save(tmp_path / "long.npy", np.ones((40, 8), dtype=np.float32))
    files = VisualInputs(PrecomputedFeatures(8, 40, num_frames=3), str(tmp_path / "cache3"))
    feats, _ = files.batch([Sample(id="e", prompt="q", answers=["A"], features=str(tmp_path / "long.npy"))])
    assert feats.shape == (1, 3, 8)


def test_table8_trainable_count_on_a_meta_bart_base():
    """Appendix B.1: BART-base, 512-d CLIP-ViT-B/32 frame features, one linear projector, per-layer position
    embeddings of 240 entries in the 6 encoder layers: 2.60M trainable parameters per task."""

    def bart_base():
        with torch.device("meta"):
            return BartForConditionalGeneration(
                BartConfig(
                    vocab_size=50265,
                    d_model=768,
                    encoder_layers=6,
                    decoder_layers=6,
                    encoder_attention_heads=12,
                    decoder_attention_heads=12,
                    encoder_ffn_dim=3072,
                    decoder_ffn_dim=3072,
                )
            )

    model = get_memvp_model(
        bart_base(), MemVPConfig(visual_dim=512, num_entries=240, projector="linear", memory_scale="paper")
    )
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == 2 * 240 * 768 * 6 + (512 * 768 + 768) == 2_605_824
    assert abs(count / 2.60e6 - 1) < 0.01
    # configs/tvqa_bart.yaml also trains BART's 32 LayerNorms (weight + bias), as the paper on BART.
    with_norms = get_memvp_model(
        bart_base(),
        MemVPConfig(visual_dim=512, num_entries=240, projector="linear", memory_scale="paper", train_layernorms=True),
    )
    assert sum(p.numel() for p in with_norms.parameters() if p.requires_grad) == 2_605_824 + 32 * 2 * 768


def test_video_qa_trains_end_to_end_from_video_files_and_from_feature_files(tiny, tmp_path):
    """TVQA-layout questions about real .mp4 clips: train MemVP on 4 frames per clip with the tiny LM
    and CLIP tower, evaluate (multiple-choice accuracy per story); then the same questions from
    pre-extracted per-video .npy files with vision_encoder=precomputed."""
    from memvp.cli import main
    from memvp.recipes.videos import generate_videos

    data = tmp_path / "data"
    prior = generate_videos(data, n_train=6, n_test=3, seed=0, progress=False)["answer_prior_accuracy"]
    assert set(prior) == {"grow", "last", "count", "overall"}
    spec = lambda split, **extra: {
        "format": "tvqa",
        "questions_file": str(data / f"tvqa_{split}.jsonl"),  # noqa: E731
        "video_dir": str(data / "videos"),
        **extra,
    }
    base = {
        "language_model": str(tiny / "lm"),
        "vision_encoder": str(tiny / "vit"),
        "num_frames": 4,
        "memvp": {"num_entries": 4, "dropout": 0.0},
        "max_steps": 2,
        "batch_size": 3,
        "max_length": 96,
        "max_new_tokens": 2,
        "progress": False,
        "feature_cache": str(tmp_path / "cache"),
    }
    config = tmp_path / "video.yaml"
    config.write_text(
        json.dumps({**base, "train_data": spec("train"), "eval_data": spec("val"), "output_dir": str(tmp_path / "run")})
    )
    assert main(["train", str(config)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval"]["count"] == 3 and set(metrics["eval"]["per_type"]) == {"grow", "last", "count"}
    (cache_dir,) = (tmp_path / "cache").iterdir()  # one folder: the frame encoder's, 9 clips in it
    assert len(json.loads((cache_dir / "index.json").read_text())) == 9
    for method in ("input_space", "text_only", "adem"):  # the paper's baselines and the successor, same harness
        assert main(["train", str(config), f"method={method}", f"output_dir={tmp_path / method}", "max_steps=1"]) == 0
        assert json.loads((tmp_path / method / "metrics.json").read_text())["eval"]["count"] == 3
    # The same clips as LLaVA video conversations (one-word answers), MemVP centred on the frames' mean.
    llava = lambda split: {
        "format": "llava",
        "json_file": str(data / f"llava_{split}.json"),  # noqa: E731
        "image_dir": str(data / "videos"),
    }
    config.write_text(
        json.dumps(
            {**base, "train_data": llava("train"), "eval_data": llava("val"), "output_dir": str(tmp_path / "run-llava")}
        )
    )
    assert main(["train", str(config), "memvp.center_features=true", "max_steps=1"]) == 0
    llava_run = json.loads((tmp_path / "run-llava" / "metrics.json").read_text())
    assert llava_run["eval"]["count"] == 3 and 0 < llava_run["visual_feature_common_share"] < 1
    assert (
        len(
            json.loads((tmp_path / "run-llava" / "adapter" / "memvp_config.json").read_text())["config"]["feature_mean"]
        )
        == 16
    )
    # The same clips as pre-extracted [frames, 16] files (12 rows each) named by vid_name.
    feats = tmp_path / "feats"
    feats.mkdir()
    for line in (data / "tvqa_train.jsonl").read_text().splitlines() + (
        data / "tvqa_val.jsonl"
    ).read_text().splitlines():
        np.save(
            feats / f"{json.loads(line)['vid_name']}.npy", np.random.default_rng(0).random((12, 16), dtype=np.float32)
        )
    files = {"features_dir": str(feats), "features_pattern": "{image_id}.npy"}
    config.write_text(
        json.dumps(
            {
                **base,
                "vision_encoder": "precomputed",
                "train_data": spec("train", **files),
                "eval_data": spec("val", **files),
                "output_dir": str(tmp_path / "run-files"),
            }
        )
    )
    assert main(["train", str(config)]) == 0
    assert json.loads((tmp_path / "run-files" / "metrics.json").read_text())["eval"]["count"] == 3


def test_the_documented_tvqa_commands_parse():
    """docs/video.md: the shipped config with features, and the same from TVQA's frame folders."""
    from pathlib import Path

    from memvp.training import TrainConfig

    config = Path(__file__).parent.parent / "configs" / "tvqa_bart.yaml"
    features = TrainConfig.from_yaml(config, ["language_model=/m/bart-base", "train_data.features_dir=/d/clip_b32"])
    assert features.train_data["features_dir"] == "/d/clip_b32" and features.num_frames == 64
    frames = TrainConfig.from_yaml(
        config,
        [
            "vision_encoder=/m/clip-vit-base-patch32",
            "train_data.features_dir=null",
            "train_data.video_dir=/d/frames_hq",
            'train_data.video_pattern="{show}_frames/{vid_name}"',
        ],
    )
    assert (
        frames.train_data["video_pattern"] == "{show}_frames/{vid_name}" and frames.train_data["features_dir"] is None
    )
