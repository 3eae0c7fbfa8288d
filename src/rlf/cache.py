"""Frozen-base encodings on disk, memory-mapped, keyed by everything that produced them.

Layout of one entry, ``<cache_dir>/<key>/``:
  hidden.bin   every prompt's hidden states packed back to back at its own length: [total_tokens, d]
  index.json   n, d, storage dtype, offsets and lengths, what produced it (base, layers, template) and the
               seconds building it took (summed over resumed builds), so a run reusing it can say what it costs
The key hashes the base fingerprint, ``encoder_layers``, the template, the storage dtype and the exact
prompt texts, so any change makes a new entry. An entry is built in ``<key>.partial/`` and renamed into
place when complete; an interrupted build resumes from its last finished batch.

Under torchrun the ranks encode disjoint batches and rank 0 alone takes the lock and writes: each round, every rank
encodes one batch of the single-process order and rank 0 writes them all, so the entry is the single-process one
byte for byte, and an interrupted build resumes at any number of ranks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlf import distributed
from rlf.base import Base

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{prompt}\nAnswer:"
STORAGE = {"float16": (np.float16, torch.float16), "bfloat16": (np.uint16, torch.bfloat16)}  # bf16 as raw bits


def apply_template(template: str, prompt: str) -> str:
    """The text the base encodes for a prompt."""
    return template.replace("{prompt}", prompt)


def tokenize_prompts(base: Base, template: str, prompts: list[str]) -> list[list[int]]:
    """Each prompt's token ids as the base encodes it: the template applied, then the base's tokenizer."""
    return base.tokenize([apply_template(template, p) for p in prompts])


def cache_key(base: Base, template: str, prompts: list[str], storage: str, bf16: bool = False) -> str:
    """A hash of everything an encoding depends on."""
    h = hashlib.sha256()
    for part in (base.fingerprint, str(base.encoder_layers), template, storage) + (("bf16",) if bf16 else ()):
        h.update(part.encode() + b"\0")
    for p in prompts:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:24]


@dataclass
class EncodedSet:
    """Memory-mapped encodings of N prompts: `batch(idx)` gives right-padded [B, T, d] float32 and lengths."""

    hidden: np.memmap  # (total_tokens, d)
    offsets: np.ndarray  # (N,)
    lengths: np.ndarray  # (N,)
    storage: str
    path: Path
    build_seconds: float | None = None  # what building the entry took; None for entries older than the field

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def d(self) -> int:
        return self.hidden.shape[1]

    def batch(self, idx, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded hidden states (B, T, d) float32 and lengths (B,) for example indices `idx`; T is `width`
        (at least the longest prompt's length), or the longest prompt's length."""
        idx = np.asarray(idx)
        lengths = self.lengths[idx]
        T = width or int(lengths.max())
        out = np.zeros((len(idx), T, self.d), dtype=self.hidden.dtype)
        for row, i in enumerate(idx):
            out[row, : lengths[row]] = self.hidden[self.offsets[i] : self.offsets[i] + lengths[row]]
        if self.storage == "bfloat16":
            x = torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
        else:
            x = torch.from_numpy(out)
        return x.float(), torch.from_numpy(lengths.astype(np.int64))


def _open(path: Path) -> EncodedSet:
    index = json.loads((path / "index.json").read_text())
    np_dtype = STORAGE[index["storage"]][0]
    total = int(sum(index["lengths"]))
    hidden = np.memmap(path / "hidden.bin", dtype=np_dtype, mode="r", shape=(total, index["d"]))
    return EncodedSet(
        hidden, np.asarray(index["offsets"], np.int64), np.asarray(index["lengths"], np.int64), index["storage"], path,
        index.get("build_seconds"),
    )


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode_cached(
    base: Base,
    prompts: list[str],
    cache_dir: str | Path,
    template: str = DEFAULT_TEMPLATE,
    storage: str = "float16",
    batch_size: int = 32,
    progress: bool = True,
    bf16: bool = False,
) -> EncodedSet:
    """Encode each prompt once with the frozen base and keep the result on disk; reuse it when nothing changed.
    `bf16`: encoded under bfloat16 autocast (`Base.encode_ids`), a cache entry of its own."""
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {list(STORAGE)}")
    texts = [apply_template(template, p) for p in prompts]
    key = cache_key(base, template, texts, storage, bf16)
    final = Path(cache_dir) / key
    world = distributed.join()
    if distributed.main_first(lambda: (final / "index.json").is_file()):  # every rank follows rank 0's answer
        log.info("encoding cache hit: %s (%d prompts)", final, len(texts))
        return _open_seen(final)

    with _build_lock(Path(cache_dir), key, world.main):
        if not distributed.main_first(lambda: (final / "index.json").is_file()):
            _build(base, texts, template, storage, batch_size, progress and world.main, final, world, bf16)
        return _open_seen(final)


@contextlib.contextmanager
def _build_lock(cache_dir: Path, key: str, take: bool):
    """The entry's file lock, taken by rank 0 alone: another process building the same entry is waited for (its ranks
    wait on rank 0 meanwhile), the ranks of this run share the build."""
    if not take:
        yield
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _open_seen(final: Path) -> EncodedSet:
    distributed.must_see(final / "index.json", "the encoding cache entry")
    return _open(final)


def _build(base: Base, texts: list[str], template: str, storage: str, batch_size: int, progress: bool,
           final: Path, world: distributed.World, bf16: bool = False) -> None:
    """Encode every batch (this rank's share of them) and, on rank 0, write the entry; rank 0's progress file says
    how many batches are done, so a build resumes after the last one written."""
    ids = base.tokenize(texts)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    d = base.hidden_size
    np_dtype, torch_dtype = STORAGE[storage]
    partial = final.with_name(final.name + ".partial")
    done_file = partial / "done.json"
    hidden = None  # rank 0's memory map of the entry being built

    def open_partial() -> dict:
        nonlocal hidden
        partial.mkdir(parents=True, exist_ok=True)
        mode = "r+" if (partial / "hidden.bin").is_file() else "w+"
        hidden = np.memmap(partial / "hidden.bin", dtype=np_dtype, mode=mode, shape=(int(lengths.sum()), d))
        return json.loads(done_file.read_text()) if done_file.is_file() else {}

    progress_so_far = distributed.main_first(open_partial)
    done, seconds = progress_so_far.get("batches", 0), progress_so_far.get("seconds", 0.0)

    order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch: little padding
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if done and world.main:
        log.info("resuming an interrupted encoding at batch %d/%d", done, len(batches))
    bar = tqdm(total=len(texts), initial=min(done * batch_size, len(texts)), unit="prompt", desc="encode",
               disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    for first in range(done, len(batches), world.size):  # a round: one batch per rank
        mine = first + world.rank
        h = None
        if mine < len(batches):
            h, _ = base.encode_ids([ids[i] for i in batches[mine]], bf16)  # (B, T, d)
            h = h.to(torch_dtype).cpu()
            h = h.view(torch.int16).numpy().view(np.uint16) if storage == "bfloat16" else h.numpy()
        encoded = distributed.gather(h)
        if not world.main:
            continue
        for b, h in enumerate(encoded[: len(batches) - first], first):
            for row, i in enumerate(batches[b]):
                hidden[offsets[i] : offsets[i] + lengths[i]] = h[row, : lengths[i]]
            bar.update(len(batches[b]))
        hidden.flush()
        _write_json(done_file, {"batches": min(first + world.size, len(batches)),
                                "seconds": seconds + time.perf_counter() - t0})
    bar.close()
    del hidden
    meta = {"base": base.spec, "fingerprint": base.fingerprint, "encoder_layers": base.encoder_layers,
            "template": template, "storage": storage, "bf16": bf16, "n": len(texts), "d": d,
            "offsets": offsets.tolist(), "lengths": lengths.tolist(),
            "build_seconds": round(seconds + time.perf_counter() - t0, 1)}

    def finish() -> None:
        _write_json(partial / "index.json", meta)
        done_file.unlink()
        os.replace(partial, final)

    distributed.main_first(finish)
