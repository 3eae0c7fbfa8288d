"""loop_layers=M (the seeds' full recipe): the base's next M blocks run in the loop with LoRA, on tiny bases."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlf.base import load_base
from rlf.config import load_config
from rlf.errors import RLFError
from rlf.model import loop_loss, trainable_parameters
from rlf.train import build_model, load_run, make_optimizer, save_checkpoint, train

PROMPTS = ["K = moon. P = K. What is P?\nAnswer:", "A = sun. B = A. C = B. What is C?\nAnswer:"]


@pytest.fixture(scope="module")
def split_base():
    """tiny-llama (2 layers): layer 0 encoded once, layer 1 looped."""
    return load_base("tiny-llama", encoder_layers=1, loop_layers=1)


def looped_config(tmp_path, *overrides):
    return load_config("tiny", ["encoder_layers=1", "loop_layers=1", f"cache_dir={tmp_path / 'cache'}", *overrides])


def perturb(model, seed=3):
    """Move every trainable weight off its initial value (LoRA B and the core's output start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2", "tiny-mamba2"])
def test_upper_layers_continue_the_base_where_the_encoder_stops(spec, one_thread):
    """norm(upper_layers(output of block 0)) is what the whole 2-block base computes: same layers, mask, positions."""
    full, split = load_base(spec), load_base(spec, encoder_layers=1, loop_layers=1)
    blocks = [m for m in full.model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == 2][0]
    seen = []
    blocks[0].register_forward_hook(lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    ids = full.tokenize(PROMPTS[:1])
    expected, _ = full.encode_ids(ids)
    with torch.no_grad():
        got = full.final_norm(split.upper_layers(seen[0]))
    torch.testing.assert_close(got, expected)


def test_shapes_and_only_lora_adapters_added(split_base, tmp_path, one_thread):
    model = build_model(looped_config(tmp_path), split_base)
    x, lengths = split_base.encode(PROMPTS)
    logits, states = model(x, lengths, 4, return_states=True)
    assert logits.shape == (2, 4, model.halt_id + 1) and states.shape == (2, 4, split_base.hidden_size)
    looped = [n for n in trainable_parameters(model) if n.startswith("looped_layers.")]
    assert looped and all(".lora_A." in n or ".lora_B." in n for n in looped)
    assert len(looped) == 2 * 7  # q, k, v, o, gate, up, down: an A and a B each
    assert all(p.shape[0] == 8 for n, p in trainable_parameters(model).items() if ".lora_A." in n)  # rank 8
    decayed = {id(p) for p in make_optimizer(model, looped_config(tmp_path)).param_groups[0]["params"]}
    assert all(id(p) in decayed for n, p in trainable_parameters(model).items() if n.startswith("looped_layers."))


def test_training_moves_exactly_lora_and_rlf_params_and_leaves_the_base_bit_identical(split_base, tmp_path,
                                                                                        one_thread):
    base_before = {k: v.clone() for k, v in split_base.model.state_dict().items()}
    upper_before = {k: v.clone() for k, v in split_base.upper_layers.state_dict().items()}
    cfg = looped_config(tmp_path, "lr=1e-2")
    model = build_model(cfg, split_base)
    trainable = trainable_parameters(model)
    start = {n: p.detach().clone() for n, p in trainable.items()}
    opt = make_optimizer(model, cfg)
    x, lengths = split_base.encode(PROMPTS)
    targets = torch.tensor([[5, 7, model.halt_id], [9, 11, model.halt_id]])
    for _ in range(3):
        loss, _ = loop_loss(model(x, lengths, 3), targets)
        opt.zero_grad()
        loss.backward()
        frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
        assert not frozen_with_grad
        opt.step()
    assert all(p.grad is not None for p in trainable.values())
    unmoved = [n for n, p in trainable.items() if torch.equal(p, start[n])]
    assert not unmoved, unmoved  # LoRA A moves from step 2, once B is non-zero
    assert all(torch.equal(v, base_before[k]) for k, v in split_base.model.state_dict().items())
    assert all(torch.equal(v, upper_before[k]) for k, v in split_base.upper_layers.state_dict().items())
    names = {n for n, _ in split_base.upper_layers.named_parameters()}
    assert not any("lora" in n for n in names)  # the adapters live in the model's copy, not in the base


def test_loop_layers_zero_builds_the_model_it_built_before(split_base, tmp_path, one_thread):
    plain = load_base("tiny-llama", encoder_layers=1)
    cfg = looped_config(tmp_path, "loop_layers=0")
    a, b = build_model(cfg, plain), build_model(cfg, split_base)
    assert set(trainable_parameters(a)) == set(trainable_parameters(b))
    assert not any("lora" in n or "looped" in n for n, _ in b.named_parameters())
    x, lengths = plain.encode(PROMPTS)
    assert torch.equal(a(x, lengths, 3), b(x, lengths, 3))
    assert load_config("tiny").loop_layers == 0


def test_loop_layers_out_of_range_is_a_clear_error(tmp_path):
    with pytest.raises(RLFError, match=r"loop_layers=2: tiny-llama has 2 layers .* use 0\.\.1"):
        load_base("tiny-llama", encoder_layers=1, loop_layers=2)
    with pytest.raises(RLFError, match="loop_layers=1 needs encoder_layers"):
        load_base("tiny-llama", loop_layers=1)
    with pytest.raises(RLFError, match="loop_layers=1 needs encoder_layers"):
        load_config("tiny", ["loop_layers=1"])  # the tiny preset encodes with every layer
    with pytest.raises(RLFError, match="loop_layers=-1: must be 0 or more"):
        looped_config(tmp_path, "loop_layers=-1")
    with pytest.raises(RLFError, match="lora_rank=0: must be positive"):
        looped_config(tmp_path, "lora_rank=0")
    with pytest.raises(RLFError, match=r"loaded with 0 loop layers.*loop_layers=1"):
        build_model(looped_config(tmp_path), load_base("tiny-llama", encoder_layers=1))


def test_save_and_load_run_give_identical_logits(split_base, tmp_path, one_thread):
    cfg = looped_config(tmp_path)
    model = build_model(cfg, split_base)
    perturb(model)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_checkpoint(run, model, make_optimizer(model, cfg), {"step": 1})
    stored = load_file(run / "checkpoint" / "model.safetensors")
    assert set(stored) == set(trainable_parameters(model))  # adapters, not the frozen base layers
    assert not any(".base_layer." in k for k in stored)
    loaded = load_run(run, device="cpu")  # loads its own base, with the loop layers its config names
    x, lengths = split_base.encode(PROMPTS)
    model.eval()
    assert torch.equal(loaded.model(x, lengths, 4), model(x, lengths, 4))


def test_resume_continues_exactly(split_base, tmp_path, one_thread):
    small = ["n_train=48", "n_val=8", "batch_size=8", "val_every=2", "ckpt_every=2", "log_every=2"]
    straight = train(looped_config(tmp_path, *small, "max_steps=4"), tmp_path / "a", progress=False, base=split_base)
    train(looped_config(tmp_path, *small, "max_steps=2"), tmp_path / "b", progress=False, base=split_base)
    resumed = train(looped_config(tmp_path, *small, "max_steps=4"), tmp_path / "b", resume=True, progress=False,
                    base=split_base)
    assert straight["steps"] == resumed["steps"] == 4  # all 4 steps inside the warmup: lr does not see max_steps
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_causal_and_right_padding_safe(split_base, tmp_path, one_thread):
    model = build_model(looped_config(tmp_path), split_base)
    perturb(model)
    model.eval()
    x, lengths = split_base.encode(PROMPTS)  # the first prompt is the shorter: right-padded
    short = int(lengths[0])
    assert short < x.shape[1]
    together = model(x, lengths, 3)
    alone = model(x[:1, :short], lengths[:1], 3)
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)
    future = x.clone()
    future[:, short:] = torch.randn_like(future[:, short:]) * 3  # change only positions after the first answer
    torch.testing.assert_close(model(future, lengths, 3)[:1], together[:1], atol=1e-5, rtol=1e-5)


def test_seed_recipe_preset_resolves():
    cfg = load_config("seed-recipe")
    assert (cfg.base, cfg.encoder_layers, cfg.loop_layers) == ("smollm2-135m", 6, 24)  # SmolLM2-135M: 30 layers
    assert (cfg.lora_rank, cfg.lora_alpha) == (8, 16.0)
