"""Run the frozen vision encoder once per image and keep the features on disk.

Layout: ``root/<encoder slug>-<fingerprint>/`` holds safetensors shards (tensor name = image
key; the pipeline uses the image's absolute path, since data sets reuse image ids) and
``index.json`` (key -> shard). The fingerprint hashes the encoder's ``name`` (model and
preprocessing) and its weights, so a changed encoder, preprocessing or checkpoint gets a new,
empty cache instead of stale features. Every file is written atomically.

Several runs may share one cache at once: each shard gets a unique name (never overwritten), and
the index is merged with the one on disk under a file lock (``filelock``). An index entry whose
shard is missing or does not hold it counts as not cached and is encoded again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError, safe_open
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
            raise ValueError(
                "FeatureCache needs a frozen vision encoder: trainable parts (e.g. ViT "
                "adapters) change the features at every step, so they cannot be cached"
            )
        self.encoder = encoder
        self.batch_size = batch_size
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.name)[:60]
        self.dir = Path(root) / f"{slug}-{encoder_fingerprint(encoder)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index_file = self.dir / "index.json"
        self._lock = FileLock(str(self.dir / "index.json.lock"))
        self.index: dict[str, str] = self._read_index()
        self._shards: dict[str, dict[str, torch.Tensor]] = {}
        self._shard_keys: dict[str, frozenset[str]] = {}  # shards are never rewritten: read once

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.index

    def _read_index(self) -> dict[str, str]:
        return json.loads(self._index_file.read_text()) if self._index_file.is_file() else {}

    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._shards:
            self._shards[name] = load_file(str(self.dir / name))
        return self._shards[name]

    def _holds(self, image_id: str) -> bool:
        """Whether the index names a shard for ``image_id`` and that shard holds it (its header says so).
        A stale entry is dropped, so that the image is encoded again."""
        shard = self.index.get(image_id)
        if shard is None:
            return False
        if shard not in self._shard_keys:
            try:
                with safe_open(str(self.dir / shard), framework="pt") as f:
                    self._shard_keys[shard] = frozenset(f.keys())
            except (OSError, SafetensorError):  # missing or damaged shard
                self._shard_keys[shard] = frozenset()
        if image_id in self._shard_keys[shard]:
            return True
        del self.index[image_id]
        return False

    def get(self, image_id: str) -> torch.Tensor:
        try:
            return self._shard(self.index[image_id])[image_id]
        except KeyError:
            raise KeyError(f"no cached features for {image_id} in {self.dir}; pass its source to encode it") from None

    def add(
        self, image_ids: Sequence[str], sources: Sequence[Any], progress: bool = True, skip_bad: bool = False
    ) -> dict[str, str]:
        """Encode the images not cached yet, in batches, into shards of about ``SHARD_BYTES``.

        A missing or unreadable image raises (the error names the file); with ``skip_bad`` it is
        left out instead and returned in ``{image_id: error message}``. A shard that can not be
        written (disk full) is a ValueError naming the cache folder; the shards written before it stay.
        """
        self.index.update(self._read_index())  # what other runs sharing the cache encoded meanwhile
        todo = [i for i in dict.fromkeys(image_ids) if not self._holds(i)]  # de-duplicated
        source_of = dict(zip(image_ids, sources))
        bad: dict[str, str] = {}
        pending: dict[str, torch.Tensor] = {}
        encoded = 0
        with tqdm(
            total=len(todo), desc=f"encoding images ({self.encoder.name})", disable=not progress or not todo
        ) as bar:  # closed on an error too: the message starts a line
            try:
                for start in range(0, len(todo), self.batch_size):
                    batch = todo[start : start + self.batch_size]
                    try:
                        feats = self._encode([source_of[i] for i in batch])
                    except (OSError, ValueError):
                        if not skip_bad:
                            raise
                        batch, feats = self._encode_one_by_one(batch, source_of, bad)
                    encoded = min(len(todo), start + self.batch_size)
                    pending.update(zip(batch, feats))
                    # Shards of ~SHARD_BYTES, not one per batch: each shard rewrites the index, and a
                    # video run encodes a few clips per batch (TVQA: ~10^5 clips).
                    if sum(f.numel() * f.element_size() for f in pending.values()) >= SHARD_BYTES:
                        full, pending = pending, {}  # not written again below when the write fails
                        self._write_shard(full, len(todo) - encoded)
                    bar.update(len(batch))
            finally:  # an error (or Ctrl-C) keeps what was encoded before it
                if pending:
                    self._write_shard(pending, len(todo) - encoded)
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

    def _write_shard(self, tensors: dict[str, torch.Tensor], still_to_encode: int = 0) -> None:
        shard = f"shard-{uuid.uuid4().hex}.safetensors"  # unique: concurrent runs never overwrite one another
        tensors = {i: f.contiguous() for i, f in tensors.items()}
        try:
            atomic_write(self.dir / shard, lambda tmp: save_file(tensors, tmp))
            # The index is rewritten after its shard exists (a crash loses at most this shard), merged
            # with the one on disk under the lock (another run may have added entries since we read it).
            with self._lock:
                index = {**self._read_index(), **{i: shard for i in tensors}}
                atomic_write_text(self._index_file, json.dumps(index))
        except (OSError, SafetensorError) as e:
            raise ValueError(self._write_failure(e, tensors, still_to_encode)) from None
        self.index.update(index)
        self._shards[shard] = tensors
        self._shard_keys[shard] = frozenset(tensors)

    def _write_failure(self, error: Exception, tensors: dict[str, torch.Tensor], still_to_encode: int) -> str:
        """One line for a shard that could not be written: the folder, and on a full disk how much room
        the features still to be written need."""
        kept = f"the {len(self.index)} features written before are kept"
        disk_full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
            s in str(error) for s in ("StorageFull", "No space left", "QuotaExceeded")
        )
        if not disk_full:
            detail = " ".join(str(error).split())
            return f"cannot write to the feature cache {self.dir} ({detail}); {kept}"
        per_feature = sum(f.numel() * f.element_size() for f in tensors.values()) / max(1, len(tensors))
        needed = per_feature * (len(tensors) + still_to_encode)
        free = shutil.disk_usage(self.dir).free
        return (
            f"the disk of the feature cache {self.dir} is full ({_mib(free)} free): the "
            f"{len(tensors) + still_to_encode} features still to write need about {_mib(needed)}; free that "
            f"much space there or set feature_cache to a folder with room and run again ({kept})"
        )

    def features(self, image_ids: Sequence[str], sources: Sequence[Any] | None = None) -> torch.Tensor:
        if sources is not None:
            self.add(image_ids, sources, progress=False)
        missing = [i for i in image_ids if not self._holds(i)]
        if missing:
            raise KeyError(f"no cached features for image ids {missing[:5]}; pass their sources")
        return torch.stack([self.get(i) for i in image_ids])


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
