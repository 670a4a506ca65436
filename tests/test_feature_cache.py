"""The feature cache: encode once, reuse across runs, invalidate when the encoder changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from memvp import HFVisionEncoder, load_image
from memvp.feature_cache import FeatureCache
from memvp.vision import PrecomputedFeatures


class CountingEncoder(HFVisionEncoder):
    calls = 0

    def preprocess(self, images):
        type(self).calls += len(images)
        arrays = [np.asarray(load_image(p).resize((8, 8)), dtype=np.float32) / 255 for p in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _encoder(seed=0):
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=12, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=8, patch_size=4
    )
    return CountingEncoder(CLIPVisionModel(cfg).eval())


def _images(tmp_path, n):
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_each_image_is_encoded_once_and_reused_across_runs(tmp_path):
    paths = _images(tmp_path, 5)
    ids = [f"img{i}" for i in range(5)]
    CountingEncoder.calls = 0
    cache = FeatureCache(tmp_path / "cache", _encoder(), batch_size=2)
    feats = cache.features(ids + ids[:2], paths + paths[:2])
    assert feats.shape == (7, 4, 12) and CountingEncoder.calls == 5
    torch.testing.assert_close(feats[:5], cache.encoder.encode(paths))
    CountingEncoder.calls = 0
    again = FeatureCache(tmp_path / "cache", _encoder())  # a new run, same encoder
    assert torch.equal(again.features(ids, paths), feats[:5]) and CountingEncoder.calls == 0


def test_changed_encoder_gets_a_new_cache(tmp_path):
    paths = _images(tmp_path, 2)
    a = FeatureCache(tmp_path / "cache", _encoder(seed=0))
    a.features(["x", "y"], paths)
    b = FeatureCache(tmp_path / "cache", _encoder(seed=1))
    assert b.dir != a.dir and "x" not in b
    with pytest.raises(KeyError, match="no cached features"):
        b.features(["x"])


def test_trainable_encoder_is_refused(tmp_path):
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=12, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=8, patch_size=4
    )
    with pytest.raises(ValueError, match="frozen"):
        FeatureCache(tmp_path, HFVisionEncoder(CLIPVisionModel(cfg), adapter_hidden=4))


def test_bad_images_raise_or_are_skipped_and_reported(tmp_path):
    paths = _images(tmp_path, 3)
    paths[1].write_bytes(b"not a png")
    missing = tmp_path / "gone.png"
    cache = FeatureCache(tmp_path / "cache", _encoder())
    with pytest.raises(ValueError, match="img1.png"):
        cache.add(["a", "b", "c"], paths)
    bad = cache.add(["a", "b", "c", "d"], paths + [missing], skip_bad=True, progress=False)
    assert set(bad) == {"b", "d"} and "img1.png" in bad["b"] and "gone.png" in bad["d"]
    assert "a" in cache and "c" in cache and "b" not in cache


def test_cache_key_is_exact_and_independent_of_the_thread_count(tmp_path):
    """Issue 12.6: the key was a float sum of the weights, which changed with torch's thread count."""
    from memvp.feature_cache import encoder_fingerprint

    encoder = _encoder()
    threads = torch.get_num_threads()
    try:
        keys = set()
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            keys.add(encoder_fingerprint(encoder))
            keys.add(FeatureCache(tmp_path, encoder).dir.name)
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 2  # one fingerprint, one folder name, whatever the threads
    with torch.no_grad():  # the smallest change of one weight gives another key
        p = next(encoder.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(float("inf")))
    assert encoder_fingerprint(encoder) not in keys


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    """Issue 12.10: convert('RGB') clipped 16-bit values at 255, so the image came out white."""
    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024  # 0 .. 64512
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_allclose(rgb[..., 0], np.rint(ramp / 65535 * 255), atol=1)
    assert rgb.min() == 0 and 200 < rgb.max() < 255


def test_shards_gather_batches_and_an_error_keeps_what_was_encoded(tmp_path, monkeypatch):
    """One shard per ~SHARD_BYTES, not per encode batch (each shard rewrites the index); a bad image
    stops the run but the batches before it are kept."""
    import memvp.feature_cache as feature_cache

    paths = _images(tmp_path, 7)
    per_image = 4 * 12 * 4  # [4 tokens, 12 dims] float32
    monkeypatch.setattr(feature_cache, "SHARD_BYTES", 3 * per_image)
    cache = FeatureCache(tmp_path / "cache", _encoder(), batch_size=2)
    cache.add([f"i{k}" for k in range(6)], paths[:6], progress=False)
    shards = sorted(p.name for p in cache.dir.glob("shard-*.safetensors"))
    assert len(shards) == 2 and len(set(cache.index.values())) == 2  # batches of 2: 4 images, then 2
    paths[6].write_bytes(b"not a png")
    with pytest.raises(ValueError, match="img6.png"):
        cache.add(["j0", "j1", "j6"], [paths[0], paths[1], paths[6]], progress=False)
    assert "j0" in cache and "j1" in cache and "j6" not in cache
    assert FeatureCache(tmp_path / "cache", _encoder()).index == cache.index  # written to disk


def test_a_file_rewritten_in_place_is_encoded_again(tmp_path):
    """VisualInputs keys the cache by path, modification time and size: a regenerated data set with the
    same file names gets its own features, an untouched file keeps its cached ones; skip lists and
    errors still name the plain path."""
    import os

    from memvp.datasets import Sample
    from memvp.inputs import VisualInputs

    paths = _images(tmp_path, 2)
    samples = [Sample(id=str(i), prompt="q", answers=["a"], image=str(p)) for i, p in enumerate(paths)]
    first = VisualInputs(_encoder(), str(tmp_path / "cache"))
    first.prepare(samples)
    before, _ = first.batch(samples)
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(paths[0])  # new content, same name
    os.utime(paths[0], ns=(os.stat(paths[1]).st_mtime_ns + 10**9,) * 2)  # a later time, whatever the clock
    CountingEncoder.calls = 0
    again = VisualInputs(_encoder(), str(tmp_path / "cache"))  # the next run
    again.prepare(samples)
    after, _ = again.batch(samples)
    assert CountingEncoder.calls == 1  # only the rewritten file
    torch.testing.assert_close(after[0], again.encoder.encode([paths[0]])[0])
    assert not torch.allclose(after[0], before[0]) and torch.equal(after[1], before[1])
    paths[1].write_bytes(b"not a png")
    kept, bad = VisualInputs(_encoder(), str(tmp_path / "cache")).prepare(samples, skip_bad=True)
    assert [s.id for s in kept] == ["0"] and list(bad) == [str(paths[1])]


# ------------------------------------------------------------------------------ faults (issue 24)
class NumberEncoder(PrecomputedFeatures):
    """Encodes the number k to a [2, 3] tensor of its own: cheap, deterministic, the same in any process."""

    def __init__(self):
        super().__init__(feature_dim=3, num_tokens=2, source_name="numbers")

    def encode(self, sources):
        return torch.stack([torch.arange(6, dtype=torch.float32).view(2, 3) + 10 * int(s) for s in sources])


def _write_in_lockstep(root, ids, barrier, shard_bytes):
    """One of two runs sharing a cache: every shard write waits until the other run reaches its own
    write of the same rank, so that the two always write at the same moment."""
    import memvp.feature_cache as feature_cache

    feature_cache.SHARD_BYTES = shard_bytes
    write = feature_cache.FeatureCache._write_shard

    def in_lockstep(self, *args, **kwargs):
        barrier.wait(timeout=120)
        write(self, *args, **kwargs)

    feature_cache.FeatureCache._write_shard = in_lockstep
    feature_cache.FeatureCache(root, NumberEncoder(), batch_size=1).add(ids, [int(i) for i in ids], progress=False)


def test_two_runs_writing_one_cache_at_once_keep_every_entry(tmp_path):
    """Issue 24.1: each run named its shards from its own index (shard-000000, ...), so two runs overwrote
    each other's shards and the last index.json lost the other run's entries or pointed at the wrong shard."""
    import multiprocessing

    n = 12  # per run, one entry per shard: 12 rounds of simultaneous writes
    runs = [[str(k) for k in range(0, 2 * n, 2)], [str(k) for k in range(1, 2 * n, 2)]]  # interleaved ids
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_write_in_lockstep, args=(tmp_path / "shared", ids, barrier, 1)) for ids in runs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert [w.exitcode for w in workers] == [0, 0]

    everything = [str(k) for k in range(2 * n)]
    reference = FeatureCache(tmp_path / "single", NumberEncoder()).features(everything, list(range(2 * n)))
    shared = FeatureCache(tmp_path / "shared", NumberEncoder())
    assert sorted(shared.index, key=int) == everything
    assert len(list(shared.dir.glob("shard-*.safetensors"))) == 2 * n  # no shard overwritten
    calls = []
    shared.encoder.encode = lambda sources: calls.append(sources)  # nothing may need encoding again
    assert torch.equal(shared.features(everything, list(range(2 * n))), reference) and calls == []


def test_an_index_entry_its_shard_lacks_is_encoded_again(tmp_path):
    """Issue 24.1: an entry pointing at a shard that does not hold it (or at a missing shard) was a bare
    KeyError in every later run; now it counts as missing."""
    import json

    import memvp.feature_cache as feature_cache

    cache = FeatureCache(tmp_path, NumberEncoder(), batch_size=1)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(feature_cache, "SHARD_BYTES", 1)
        cache.add(["1", "2", "3"], [1, 2, 3], progress=False)
    index = json.loads(cache._index_file.read_text())
    index["1"] = index["2"]  # a shard that holds "2" only
    index["3"] = "shard-gone.safetensors"
    cache._index_file.write_text(json.dumps(index))
    again = FeatureCache(tmp_path, NumberEncoder())
    with pytest.raises(KeyError, match="no cached features for image ids \\['1', '3'\\]"):
        again.features(["1", "2", "3"])
    encode, calls = again.encoder.encode, []
    again.encoder.encode = lambda sources: calls.append(list(sources)) or encode(sources)
    feats = again.features(["1", "2", "3"], [1, 2, 3])
    assert calls == [[1, 3]] and torch.equal(feats, NumberEncoder().encode([1, 2, 3]))
    assert FeatureCache(tmp_path, NumberEncoder()).features(["1", "3"]).shape == (2, 2, 3)


@pytest.mark.parametrize("failure", ["oserror", "safetensors"])
def test_disk_full_names_the_folder_and_the_room_needed_and_keeps_earlier_shards(tmp_path, monkeypatch, failure):
    """Issue 24.2: a full disk was a SafetensorError traceback and lost every feature encoded by the run."""
    import errno

    from safetensors import SafetensorError

    import memvp.feature_cache as feature_cache

    real_save, calls = feature_cache.save_file, [0]

    def fills_the_disk_on_the_third_shard(tensors, path):
        calls[0] += 1
        if calls[0] == 3:
            with open(path, "wb") as f:
                f.write(b"half a shard")
            if failure == "oserror":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
        real_save(tensors, path)

    monkeypatch.setattr(feature_cache, "save_file", fills_the_disk_on_the_third_shard)
    monkeypatch.setattr(feature_cache, "SHARD_BYTES", 2 * 24)  # two [2, 3] float32 features per shard
    cache = FeatureCache(tmp_path, NumberEncoder(), batch_size=2)
    ids = [str(k) for k in range(10)]
    with pytest.raises(ValueError) as raised:
        cache.add(ids, list(range(10)), progress=False)
    message = str(raised.value)
    assert "\n" not in message and str(cache.dir) in message and "is full" in message and "MiB free" in message
    assert "the 6 features still to write need about" in message  # 2 in the failed shard + 4 not encoded
    assert sorted(p.name for p in cache.dir.iterdir() if p.name.startswith(".")) == []  # no half-written file
    monkeypatch.setattr(feature_cache, "save_file", real_save)
    kept = FeatureCache(tmp_path, NumberEncoder())
    assert sorted(kept.index, key=int) == ids[:4]
    assert torch.equal(kept.features(ids[:4]), NumberEncoder().encode(range(4)))
