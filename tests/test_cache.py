import json
import time

import numpy as np
import pytest
import torch

from rlf.base import load_base
from rlf.cache import apply_template, encode_cached

PROMPTS = [f"V{i} = moon. W = V{i}. What is W?" + " X = Y." * (i % 4) for i in range(40)]


def _valid(x, lengths):
    return (torch.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]


@pytest.mark.parametrize("storage,tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_cache_matches_direct_encoding(tmp_path, tiny_llama, storage, tol):
    enc = encode_cached(tiny_llama, PROMPTS, tmp_path, storage=storage, batch_size=8, progress=False)
    idx = [0, 3, 17, 39]
    x, lengths = enc.batch(idx)
    direct, n = tiny_llama.encode([apply_template("{prompt}\nAnswer:", PROMPTS[i]) for i in idx])
    assert torch.equal(lengths, n)
    assert ((x - direct) * _valid(x, lengths)).abs().max() < tol * direct.abs().max()
    assert (x * ~_valid(x, lengths)).abs().max() == 0  # padding is zeros


def test_bf16_encoding_runs_the_base_in_bfloat16(tmp_path, tiny_llama):
    """bf16=True encodes under bfloat16 autocast: close to the float32 encoding, but not it (so it is really on)."""
    exact = encode_cached(tiny_llama, PROMPTS, tmp_path / "a", progress=False)
    fast = encode_cached(tiny_llama, PROMPTS, tmp_path / "b", bf16=True, progress=False)
    x, lengths = exact.batch(range(len(PROMPTS)))
    y, lengths_b = fast.batch(range(len(PROMPTS)))
    assert torch.equal(lengths, lengths_b) and fast.path.name != exact.path.name
    assert json.loads((fast.path / "index.json").read_text())["bf16"] is True
    err = ((y - x) * _valid(x, lengths)).norm(dim=-1).sum() / (x * _valid(x, lengths)).norm(dim=-1).sum()
    assert 1e-4 < err < 3e-2


def test_packed_at_own_length(tmp_path, tiny_llama):
    enc = encode_cached(tiny_llama, PROMPTS, tmp_path, progress=False)
    assert enc.hidden.shape[0] == enc.lengths.sum() < len(PROMPTS) * enc.lengths.max()
    assert np.array_equal(enc.offsets[1:], np.cumsum(enc.lengths)[:-1])


def test_hit_miss_and_invalidation(tmp_path, tiny_llama, monkeypatch):
    first = encode_cached(tiny_llama, PROMPTS, tmp_path, progress=False)
    calls = []
    monkeypatch.setattr(type(tiny_llama), "encode_ids", lambda self, ids, bf16=False: calls.append(1) or (
        _ for _ in ()).throw(AssertionError("cache hit must not run the base")))
    again = encode_cached(tiny_llama, PROMPTS, tmp_path, progress=False)
    assert again.path == first.path and not calls
    assert again.build_seconds == first.build_seconds >= 0  # a hit still says what the entry cost to build
    monkeypatch.undo()
    changed = {
        "data": encode_cached(tiny_llama, PROMPTS[:-1] + ["new prompt"], tmp_path, progress=False),
        "template": encode_cached(tiny_llama, PROMPTS, tmp_path, template="Q: {prompt}\nA:", progress=False),
        "storage": encode_cached(tiny_llama, PROMPTS, tmp_path, storage="bfloat16", progress=False),
        "bf16": encode_cached(tiny_llama, PROMPTS, tmp_path, bf16=True, progress=False),
        "layers": encode_cached(load_base("tiny-llama", encoder_layers=1), PROMPTS, tmp_path, progress=False),
        "base": encode_cached(load_base("tiny-gpt2"), PROMPTS, tmp_path, progress=False),
    }
    paths = {first.path} | {e.path for e in changed.values()}
    assert len(paths) == 1 + len(changed)


def test_interrupted_encoding_resumes(tmp_path, tiny_llama, monkeypatch):
    real = type(tiny_llama).encode_ids
    seen = []

    def flaky(self, ids, bf16=False):
        seen.append(len(ids))
        if len(seen) == 3:
            raise KeyboardInterrupt
        time.sleep(0.3)  # the two finished batches take >= 0.6 s: the resumed build must count them
        return real(self, ids, bf16)

    monkeypatch.setattr(type(tiny_llama), "encode_ids", flaky)
    with pytest.raises(KeyboardInterrupt):
        encode_cached(tiny_llama, PROMPTS, tmp_path, batch_size=8, progress=False)
    monkeypatch.setattr(type(tiny_llama), "encode_ids",
                        lambda self, ids, bf16=False: seen.append(len(ids)) or real(self, ids, bf16))
    seen.clear()
    resumed = encode_cached(tiny_llama, PROMPTS, tmp_path, batch_size=8, progress=False)
    assert len(seen) == 3  # 5 batches, 2 done before the interruption
    assert resumed.build_seconds >= 0.6
    fresh = encode_cached(tiny_llama, PROMPTS, tmp_path / "fresh", batch_size=8, progress=False)
    assert np.array_equal(np.asarray(resumed.hidden), np.asarray(fresh.hidden))
