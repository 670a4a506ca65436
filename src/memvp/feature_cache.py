"""Run the frozen vision encoder once per image and keep the features on disk.

Layout: ``root/<encoder slug>-<fingerprint>/`` holds safetensors shards (tensor name = image
key; the pipeline uses the image's absolute path, since data sets reuse image ids) and
``index.json`` (key -> shard). The fingerprint hashes the encoder's ``name`` (model and
preprocessing) and its weights, so a changed encoder, preprocessing or checkpoint gets a new,
empty cache instead of stale features. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .atomic import atomic_write, atomic_write_text
from .vision import VisionEncoder


def encoder_fingerprint(encoder: VisionEncoder) -> str:
    """sha256 of the encoder's name and the exact bytes of its weights (a float sum, as before, changed
    with the number of threads and silently re-encoded every image into a new folder)."""
    digest = hashlib.sha256(encoder.name.encode())
    with torch.no_grad():
        for name, tensor in sorted(encoder.state_dict().items()):
            t = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{tuple(tensor.shape)}:{t.dtype}:".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


SHARD_BYTES = 64 * 2**20
"""Features written per shard file (at most one encode batch more)."""


class FeatureCache:
    """``cache.features(ids, sources)`` -> [B, n_visual, feature_dim], encoding only what is missing."""

    def __init__(self, root: str | Path, encoder: VisionEncoder, batch_size: int = 32):
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("FeatureCache needs a frozen vision encoder: trainable parts (e.g. ViT "
                             "adapters) change the features at every step, so they cannot be cached")
        self.encoder = encoder
        self.batch_size = batch_size
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.name)[:60]
        self.dir = Path(root) / f"{slug}-{encoder_fingerprint(encoder)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index_file = self.dir / "index.json"
        self.index: dict[str, str] = (json.loads(self._index_file.read_text())
                                      if self._index_file.is_file() else {})
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.index

    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._shards:
            self._shards[name] = load_file(str(self.dir / name))
        return self._shards[name]

    def get(self, image_id: str) -> torch.Tensor:
        return self._shard(self.index[image_id])[image_id]

    def add(self, image_ids: Sequence[str], sources: Sequence[Any], progress: bool = True,
            skip_bad: bool = False) -> dict[str, str]:
        """Encode the images not cached yet, in batches, into shards of about ``SHARD_BYTES``.

        A missing or unreadable image raises (the error names the file); with ``skip_bad`` it is
        left out instead and returned in ``{image_id: error message}``.
        """
        todo = list(dict.fromkeys(i for i in image_ids if i not in self.index))  # de-duplicated
        source_of = dict(zip(image_ids, sources))
        bad: dict[str, str] = {}
        pending: dict[str, torch.Tensor] = {}
        with tqdm(total=len(todo), desc=f"encoding images ({self.encoder.name})",
                  disable=not progress or not todo) as bar:  # closed on an error too: the message starts a line
            try:
                for start in range(0, len(todo), self.batch_size):
                    batch = todo[start : start + self.batch_size]
                    try:
                        feats = self._encode([source_of[i] for i in batch])
                    except (OSError, ValueError):
                        if not skip_bad:
                            raise
                        batch, feats = self._encode_one_by_one(batch, source_of, bad)
                    pending.update(zip(batch, feats))
                    # Shards of ~SHARD_BYTES, not one per batch: each shard rewrites the index, and a
                    # video run encodes a few clips per batch (TVQA: ~10^5 clips).
                    if sum(f.numel() * f.element_size() for f in pending.values()) >= SHARD_BYTES:
                        self._write_shard(pending)
                        pending = {}
                    bar.update(len(batch))
            finally:  # an error (or Ctrl-C) keeps what was encoded before it
                if pending:
                    self._write_shard(pending)
        return bad

    def _encode(self, sources: Sequence[Any]) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder.encode(sources).float().cpu()

    def _encode_one_by_one(self, batch, source_of, bad):
        good, feats = [], []
        for i in batch:
            try:
                feats.append(self._encode([source_of[i]])[0])
                good.append(i)
            except (OSError, ValueError) as e:
                bad[i] = str(e)
        return good, feats

    def _write_shard(self, tensors: dict[str, torch.Tensor]) -> None:
        shard = f"shard-{len(set(self.index.values())):06d}.safetensors"
        tensors = {i: f.contiguous() for i, f in tensors.items()}
        atomic_write(self.dir / shard, lambda tmp: save_file(tensors, tmp))
        self.index.update({i: shard for i in tensors})
        self._shards[shard] = tensors
        # The index is rewritten after its shard exists: a crash loses at most this batch.
        atomic_write_text(self._index_file, json.dumps(self.index))

    def features(self, image_ids: Sequence[str], sources: Sequence[Any] | None = None) -> torch.Tensor:
        if sources is not None:
            self.add(image_ids, sources, progress=False)
        missing = [i for i in image_ids if i not in self.index]
        if missing:
            raise KeyError(f"no cached features for image ids {missing[:5]}; pass their sources")
        return torch.stack([self.get(i) for i in image_ids])
