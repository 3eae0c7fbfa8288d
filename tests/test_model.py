import pytest
import torch
import torch.nn.functional as F

from rlf.cores import CORES, build_core
from rlf.errors import RLFError
from rlf.cores.rotary import rotate
from rlf.model import SOLVE_LOOPS, RLFConfig, RLFModel, loop_loss, loop_targets, trainable_parameters

V, D = 300, 128


def make(core="mamba2", seed=0, **kw):
    torch.manual_seed(seed)
    head = torch.randn(V, D) / D**0.5
    return RLFModel(RLFConfig(d_model=D, vocab_size=V, core=core, **kw), head, torch.nn.RMSNorm(D))


def prompts(seed=1, B=4, T=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    lengths = torch.tensor([T, T - 3, 5, 1][:B])
    return x, lengths


def perturb(model, seed=3):
    """Move every trainable weight off its initial value (the core's output projection starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("core", CORES)
def test_shapes_per_core(core):
    model = make(core)
    x, lengths = prompts()
    logits, states = model(x, lengths, 5, return_states=True)
    assert logits.shape == (4, 5, V + 1) and states.shape == (4, 5, D)
    assert build_core(core, D)(x).shape == x.shape


@pytest.mark.parametrize("core", CORES)
def test_core_starts_as_zero_update_and_is_causal(core):
    x, _ = prompts()
    c = build_core(core, D)
    assert c(x).abs().max() == 0
    perturb(c)
    y = c(x)
    x2 = x.clone()
    x2[:, 8:] = torch.randn_like(x2[:, 8:])  # change only the future
    assert torch.allclose(c(x2)[:, :8], y[:, :8], atol=1e-5)


@pytest.mark.parametrize("core", CORES)
def test_narrow_core_starts_at_zero_is_causal_and_every_weight_learns(core):
    """core_dim=k: d -> k -> core -> k -> d. The update starts at zero, yet the first step moves the inner core's
    output projection (two zero-initialised maps in series would never train)."""
    x, _ = prompts()
    c = build_core(core, D, core_dim=64)
    assert c.down.out_features == 64 and c(x).abs().max() == 0
    c(x).sum().backward()
    assert c.up.weight.grad.abs().max() == 0  # no signal through a zero update yet ...
    moved = [n for n, p in c.inner.named_parameters() if p.grad is not None and p.grad.abs().max() > 0]
    assert moved and all("out_proj" in n for n in moved)  # ... except into the inner output projection
    perturb(c)
    x2 = x.clone()
    x2[:, 8:] = torch.randn_like(x2[:, 8:])
    assert torch.allclose(c(x2)[:, :8], c(x)[:, :8], atol=1e-5)
    with pytest.raises(RLFError, match="core_dim=256"):
        build_core(core, D, core_dim=256)


@pytest.mark.parametrize("T", [1, 7, 40])
def test_mamba2_one_chunk_scan_equals_the_mixer(T):
    """The CPU path (one chunk over the prompt) computes what transformers' Mamba2Mixer computes, gradients too."""
    from rlf.cores.mamba2 import ssd_forward

    core = build_core("mamba2", D)
    perturb(core)
    with torch.no_grad():
        core.mixer.dt_bias.add_(torch.linspace(-2, 2, core.mixer.num_heads))  # a spread of decays
    h = torch.randn(3, T, D, generator=torch.Generator().manual_seed(T), requires_grad=True)
    core.mixer.chunk_size = 16  # several chunks for T=40, so the reference really passes states between chunks
    ref = core.mixer(h)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), h)
    ours = ssd_forward(core.mixer, h)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), h)
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", [{"scratchpad": 2, "bridge_rank": 4}, {"loop_span": "answer", "bridge_rank": 4},
                                {"core": "transformer", "loop_span": "answer", "bridge_rank": 4}])
def test_gradients_reach_exactly_the_trainable_parameters(kw):
    model = make(**kw)
    perturb(model)
    x, lengths = prompts()
    loss, _ = loop_loss(model(x, lengths, 4), loop_targets([[1, 2], [3], [4, 5], [6]], V, 4))
    loss.backward()
    trainable = trainable_parameters(model)
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (name in trainable), name
    assert "lm_head" not in trainable and not any(n.startswith("final_norm") for n in trainable)
    assert {"lifeline_gate", "halt_row", "bridge_up.weight", *(["scratchpad"] if "scratchpad" in kw else [])} \
        <= set(trainable)
    assert model.lifeline_gate.dtype == torch.float32


def test_train_head_flag_makes_head_trainable():
    assert "lm_head" in trainable_parameters(make(train_head=True))


def test_lifeline_none_equals_vector_with_gate_zero():
    none, vec = make(lifeline="none"), make(lifeline="vector")
    perturb(vec)
    none.load_state_dict({k: v for k, v in vec.state_dict().items() if k != "lifeline_gate"})
    with torch.no_grad():
        vec.lifeline_gate.zero_()
    x, lengths = prompts()
    assert torch.allclose(none(x, lengths, 4), vec(x, lengths, 4), atol=1e-5)


def test_gate_scale_zero_severs_lifeline():
    vec = make()
    perturb(vec)
    x, lengths = prompts()
    severed = vec(x, lengths, 3, gate_scale=0.0)
    with torch.no_grad():
        vec.lifeline_gate.zero_()
    assert torch.allclose(severed, vec(x, lengths, 3), atol=1e-6)


def test_rope_identity_at_zero_norm_preserving_and_distinct():
    x = torch.randn(3, 7, D)
    assert torch.equal(rotate(x, 0), x)
    for i in (1, 5, 40, 1000):  # analytic: any loop index, far past training
        assert torch.allclose(rotate(x, i).norm(dim=-1), x.norm(dim=-1), atol=1e-4)
    assert not torch.allclose(rotate(x, 1), rotate(x, 2))
    assert torch.allclose(rotate(rotate(x, 2), 3), rotate(x, 5), atol=1e-4)  # rotations compose


def test_learned_loop_position_clamps():
    model = make(loop_pos="learned", max_loops=4)
    x = torch.zeros(1, 2, D)
    # the core starts as a zero update, so a step is loop_norm(x + gate * source + loop_embedding[i])
    out = [model.step(x, torch.zeros_like(x), i) for i in (3, 4, 9)]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert not torch.equal(model.step(x, torch.zeros_like(x), 2), out[0])


def test_loop_clock_probes_move_only_the_loop_position():
    rope, none = make(loop_pos="rope"), make(loop_pos="none")  # the same weights: a loop position has none
    perturb(rope)
    perturb(none)
    x, lengths = prompts()
    # rope at position 0 is the identity, so a clock stopped at 0 is the model without a loop position
    stopped = rope.solve(x, lengths, 5, min_loops=5, loop_clamp=0)
    assert torch.equal(stopped["p"], none.solve(x, lengths, 5, min_loops=5)["p"])
    intact = rope.solve(x, lengths, 5, min_loops=5)
    assert torch.equal(rope.solve(x, lengths, 5, min_loops=5, loop_clamp=4)["p"], intact["p"])  # never reached
    shifted = rope.solve(x, lengths, 5, min_loops=5, loop_offset=3)
    rows = torch.arange(4)
    first = rope.head(rope.step(x, x, 3)[rows, lengths - 1]).softmax(-1)  # loop 1 at position 3
    assert torch.allclose(shifted["p_halt"][:, 0], first[:, rope.halt_id], atol=1e-6)
    assert not torch.allclose(shifted["p"], intact["p"])
    with pytest.raises(RLFError, match="loop_pos=none"):
        none.solve(x, lengths, 5, loop_offset=1)


def test_solve_runs_past_a_short_learned_table():
    model = make(loop_pos="learned", max_loops=2)  # rows for loops 1 and 2; later loops reuse the last
    with torch.no_grad():
        model.halt_row.fill_(0.0)
        model.halt_row[0, 0] = -1e4  # <HALT> never wins: solve runs to its default limit
    x, lengths = prompts()
    assert model.solve(x * 0 + torch.eye(D)[0], lengths)["tokens"].shape[1] == SOLVE_LOOPS


def test_absorbing_halt_targets():
    t = loop_targets([[5, 6, 7], [8]], halt_id=V, n_loops=6)
    assert t.tolist() == [[5, 6, 7, V, V, V], [8, V, V, V, V, V]]
    final = loop_targets([[5, 6, 7]], halt_id=V, n_loops=5, supervision="final")
    assert final.tolist() == [[-100, -100, 7, V, V]]
    with pytest.raises(ValueError, match="no loop for <HALT>"):
        loop_targets([[1, 2, 3]], V, 3)


def test_loss_is_mean_cross_entropy_over_supervised_loops():
    logits = torch.randn(2, 3, V + 1)
    targets = torch.tensor([[1, V, V], [-100, 2, V]])
    loss, stats = loop_loss(logits, targets)
    ref = torch.nn.functional.cross_entropy(logits.reshape(6, -1), targets.reshape(6), ignore_index=-100)
    assert torch.allclose(loss, ref)
    # a given denominator replaces the count of supervised loops (5): what a rank's share of a global batch uses
    assert torch.allclose(loop_loss(logits, targets, torch.tensor(2.5))[0], ref * 2)
    logits[0, 0, 1] = logits[1, 1, 2] = logits[1, 2, V] = 100.0  # right: loop 0 of row 0, loops 1-2 of row 1
    logits[0, 1:, V] = logits[0, 1:, 0] - 100  # wrong: loops 1-2 of row 0
    stats = loop_loss(logits, targets)[1]
    assert stats["n"] == 2 and stats["loop_hits"] == [2, 1, 1] and stats["trace_hits"] == 1  # the ignored loop is a hit


@pytest.mark.parametrize("core", CORES)
def test_batched_solve_equals_per_example_solve(core):
    model = make(core)
    perturb(model, seed=5)
    with torch.no_grad():  # make <HALT> fire at different loops for different examples
        model.halt_row.copy_(model.lm_head[:20].mean(0) * 3)
    x, lengths = prompts()
    batched = model.solve(x, lengths, 6)
    for b in range(4):
        one = model.solve(x[b : b + 1, : lengths[b]], lengths[b : b + 1], 6)
        L = one["tokens"].shape[1]
        assert torch.equal(one["tokens"][0], batched["tokens"][b, :L])
        assert torch.allclose(one["p"][0], batched["p"][b, :L], atol=1e-4)
        assert one["halted_at"][0] == batched["halted_at"][b]


def test_solve_matches_forward_until_halt_and_freezes_after():
    model = make()
    perturb(model)
    x, lengths = prompts()
    out = model.solve(x, lengths, 5, min_loops=5)
    logits = model(x, lengths, 5)
    top = logits.argmax(-1)
    for b in range(4):
        h = int(out["halted_at"][b])
        end = 5 if h < 0 else h + 1
        assert torch.equal(out["tokens"][b, :end], top[b, :end])
        assert (out["tokens"][b, end:] == model.halt_id).all()


def test_ablation_sources():
    model = make()
    x, lengths = prompts()
    g = torch.Generator().manual_seed(0)
    shuffled = model.lifeline_source(x, lengths, "shuffle", g)
    noise = model.lifeline_source(x, lengths, "noise", torch.Generator().manual_seed(0))
    for b in range(4):
        n = int(lengths[b])
        a = x[b, :n].sort(dim=0).values
        assert torch.equal(a, shuffled[b, :n].sort(dim=0).values)  # same multiset of prompt vectors
        assert torch.allclose(noise[b, :n].norm(dim=-1), x[b, :n].norm(dim=-1), rtol=1e-4)
        assert (noise[b, n:] == 0).all()
    assert not torch.equal(shuffled[0], x[0])


@pytest.mark.parametrize("core,core_dim,positions", [("mamba2", 0, "none"), ("mamba2", 64, "none"),
                                                    ("transformer", 0, "none"), ("transformer", 0, "rope"),
                                                    ("transformer", 64, "rope"), ("transformer", 0, "conv"),
                                                    ("transformer", 64, "conv")])
def test_recall_of_a_remembered_prompt_equals_the_full_pass(core, core_dim, positions):
    """loop_span=answer rests on this: remember(x, last) + recall(memory, x[last]) is forward(x) read at last, for
    every answer position (including 0: nothing remembered), for a narrow core, with rotary positions and with the
    conv (whose window at the answer position holds the prompt's last tokens)."""
    core = build_core(core, D, core_dim=core_dim, positions=positions)
    torch.manual_seed(4)
    with torch.no_grad():
        for p in core.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(4, 12, D)
    last = torch.tensor([11, 8, 1, 0])
    rows = torch.arange(4)
    recalled = core.recall(core.remember(x, last), x[rows, last])
    assert torch.allclose(recalled, core(x)[rows, last], atol=1e-5)
    moved = x.clone()
    moved[rows, last] += 1.0  # a different answer input against the same memory
    assert torch.allclose(core.recall(core.remember(x, last), moved[rows, last]), core(moved)[rows, last], atol=1e-5)


@pytest.mark.parametrize("core,kw", [("mamba2", {}), ("transformer", {}), ("transformer", {"core_pos": "rope"}),
                                     ("transformer", {"core_pos": "conv"})])
def test_loop_span_answer_loop0_equals_all_later_loops_see_a_fixed_prompt(core, kw):
    """Loop 0 is the same model either way; from loop 1 the answer-only loop differs (its prompt positions no
    longer change), solve agrees with forward, and the batch solves like single examples."""
    runs = {}
    for span in ("all", "answer"):
        model = make(core, loop_span=span, **kw)
        perturb(model)
        runs[span] = model
    x, lengths = prompts()
    all_, ans = runs["all"](x, lengths, 4), runs["answer"](x, lengths, 4)
    assert torch.allclose(all_[:, 0], ans[:, 0], atol=1e-4)
    assert not torch.allclose(all_[:, 1:], ans[:, 1:], atol=1e-2)
    model = runs["answer"]
    out = model.solve(x, lengths, 4, min_loops=4)
    top = ans.argmax(-1)
    for b in range(4):
        h = int(out["halted_at"][b])
        end = 4 if h < 0 else h + 1
        assert torch.equal(out["tokens"][b, :end], top[b, :end])
        one = model.solve(x[b : b + 1, : lengths[b]], lengths[b : b + 1], 4, min_loops=4)
        assert torch.equal(one["tokens"][0], out["tokens"][b])


@pytest.mark.parametrize("kw", [{}, {"loop_span": "answer"}, {"loop_span": "answer", "core_dim": 64},
                                {"core": "transformer", "loop_span": "answer"}])
def test_queries_loop_like_the_rows_they_cut(kw):
    """forward(rows=...) (the chain warm-up's queries): query j is prompt rows[j] cut to lengths[j], the same as
    looping x[rows] with those lengths, though loop_span=answer reads each prompt row into memory once."""
    model = make(**kw)
    perturb(model)
    x, _ = prompts()
    rows, lengths = torch.tensor([0, 0, 1, 3, 3, 2]), torch.tensor([4, 12, 9, 1, 1, 5])
    torch.testing.assert_close(model(x, lengths, 3, rows=rows), model(x[rows], lengths, 3), atol=1e-5, rtol=1e-5)
    with pytest.raises(RLFError, match="not queries"):
        model(x, lengths, 3, rows=rows, prompt_mode="noise")


@pytest.mark.parametrize("kw", [{"core": "mamba1"}, {"scratchpad": 2}, {"loop_layers": 1}])
def test_loop_span_answer_refuses_what_it_does_not_support(kw):
    with pytest.raises(RLFError, match="loop_span=answer"):
        RLFConfig(d_model=D, vocab_size=V, loop_span="answer", **kw)


def test_transformer_core_attention_is_torchs_layer_and_rope_makes_it_see_order():
    """The core computes attention from each nn.TransformerEncoderLayer's own projections (so that it can rotate
    them): without positions that equals torch's layer stack; with core_pos=rope, or conv (position 5 is in the last
    position's window), the last position tells the order of two earlier tokens apart, which a one-layer
    position-free core cannot (its last output sees a set)."""
    from rlf.cores.transformer import TransformerCore

    torch.manual_seed(5)
    plain = TransformerCore(D)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(3, 9, D)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(9)
    torchs = plain.out_proj(plain.norm(plain.encoder(x, mask=causal, is_causal=True)))
    assert torch.allclose(plain(x), torchs, atol=1e-5)
    swapped = x.clone()
    swapped[:, [2, 5]] = x[:, [5, 2]]
    for positions, differs in (("none", False), ("rope", True), ("conv", True)):
        core = TransformerCore(D, n_layers=1, positions=positions)
        core.load_state_dict(core.state_dict() | {
            k: v for k, v in plain.state_dict().items() if k.startswith(("norm", "out_proj", "encoder.layers.0"))})
        moved = (core(x)[:, -1] - core(swapped)[:, -1]).abs().max()
        assert (moved > 1e-3) == differs, (positions, float(moved))


def test_core_pos_is_for_the_transformer_core():
    with pytest.raises(RLFError, match="core_pos=rope is for core=transformer"):
        RLFConfig(d_model=D, vocab_size=V, core="mamba2", core_pos="rope")


def pointer_setup(seed=1):
    """A perturbed feedback=pointer model and prompts whose ids repeat words (ids < 20, -1 past each end)."""
    model = make(loop_span="answer", feedback="pointer")
    perturb(model)
    x, lengths = prompts(seed)
    ids = torch.randint(0, 20, (4, 12), generator=torch.Generator().manual_seed(seed))
    ids[torch.arange(12)[None, :] >= lengths[:, None]] = -1
    return model, x, lengths, ids


def test_pointer_key_averages_the_states_holding_the_word():
    model, x, lengths, ids = pointer_setup()
    word = ids[:, 0].clone()
    key = model.pointer_key(x, ids, lengths, word)
    for b in range(4):
        held = (ids[b] == word[b]).nonzero().squeeze(1)
        torch.testing.assert_close(key[b], x[b, held].mean(0))
    assert (model.pointer_key(x, ids, lengths, torch.full((4,), 25)) == 0).all()  # a word the prompt lacks: 0
    soft = torch.zeros(4, V)
    soft[:, 3], soft[:, 7] = 0.25, 0.75  # a distribution weighs each position by its token's probability
    w = (ids == 3) * 0.25 + (ids == 7) * 0.75
    want = (w[..., None] * x).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-9)
    torch.testing.assert_close(model.pointer_key(x, ids, lengths, soft), want)


def test_pointer_feedback_feeds_each_loop_its_words_key():
    """Teacher forcing feeds loop k the key of teacher[:, k - 1]; without it, the key of loop k - 1's own softmax;
    solve does the same as forward until each example halts."""
    model, x, lengths, ids = pointer_setup()
    teacher = torch.randint(0, 20, (4, 3), generator=torch.Generator().manual_seed(4))
    state, step, _ = model._loop(x, lengths, x)
    want = []
    for k in range(3):
        state = step(state if k == 0 else model.pointer_key(x, ids, lengths, teacher[:, k - 1]), k)
        want.append(model.head(state))
    got = model(x, lengths, 3, prompt_ids=ids, teacher=teacher)
    torch.testing.assert_close(got, torch.stack(want, 1))
    own = model(x, lengths, 3, prompt_ids=ids)
    assert not torch.allclose(own[:, 1:], got[:, 1:])  # its own words are not the teacher's
    state = step(model._loop(x, lengths, x)[0], 0)
    fed = model.pointer_key(x, ids, lengths, model.head(state)[:, :V].softmax(-1))
    torch.testing.assert_close(own[:, 1], model.head(step(fed, 1)))
    out = model.solve(x, lengths, 3, min_loops=3, prompt_ids=ids)
    for b in range(4):
        h = int(out["halted_at"][b])
        end = 3 if h < 0 else h + 1
        assert torch.equal(out["tokens"][b, :end], own[b, :end].argmax(-1))


def test_pointer_feedback_queries_loop_like_the_rows_they_cut():
    model, x, _, ids = pointer_setup()
    rows, lengths = torch.tensor([0, 0, 1, 3, 2]), torch.tensor([4, 12, 9, 1, 5])
    ids[:, :] = torch.randint(0, 20, ids.shape, generator=torch.Generator().manual_seed(2))
    cut = ids[rows].masked_fill(torch.arange(12)[None, :] >= lengths[:, None], -1)
    torch.testing.assert_close(model(x, lengths, 3, rows=rows, prompt_ids=ids),
                               model(x[rows], lengths, 3, prompt_ids=cut), atol=1e-5, rtol=1e-5)


def test_pointer_feedback_refusals():
    with pytest.raises(RLFError, match="feedback=pointer .* loop_span=answer"):
        RLFConfig(d_model=D, vocab_size=V, feedback="pointer")
    with pytest.raises(RLFError, match="target_tokens=1"):
        RLFConfig(d_model=D, vocab_size=V, feedback="pointer", loop_span="answer", target_tokens=2)
    model, x, lengths, _ = pointer_setup()
    with pytest.raises(RLFError, match="prompt_ids"):
        model(x, lengths, 2)


def copy_setup(seed=1):
    """A perturbed readout=copy model (transformer core, feedback=pointer) and pointer_setup's prompts and ids."""
    model = make("transformer", loop_span="answer", feedback="pointer", readout="copy", lifeline="none")
    perturb(model)
    _, x, lengths, ids = pointer_setup(seed)
    return model, x, lengths, ids


def test_copy_readout_is_a_product_of_the_head_and_the_attention_over_prompt_words():
    """A word's logit is the head's plus log of the mixed attention mass on the positions before the answer that hold
    it; <HALT>'s, plus log of the mass on the answer position itself; every other token is -inf. Its gradients are
    those of that definition too (the read-out writes a repeated word once, from one position)."""
    model, x, lengths, ids = copy_setup()
    ids[0, 1] = ids[0, 4] = ids[0, 0]  # a word held three times
    state, step, _ = model._loop(x, lengths, x, trail=(trail := []))
    h = step(state, 0).detach().requires_grad_()
    att = trail[0].detach().requires_grad_()  # (B, layers, heads, T + 1)
    got = model.copy_logits(h, att, ids, lengths)
    z = model.head(h)
    a = (model.copy_mix.softmax(0)[:, None] * att.flatten(1, 2)).sum(1)  # (B, T + 1)
    want = []
    for b in range(4):
        row = torch.full((V + 1,), -torch.inf)
        n = int(lengths[b]) - 1  # positions before the answer position
        for w in set(ids[b, :n].tolist()):
            row[w] = z[b, w] + a[b, :n][ids[b, :n] == w].sum().log()
        row[V] = z[b, V] + a[b, -1].log()
        want.append(row)
    want = torch.stack(want)
    torch.testing.assert_close(got, want)
    assert torch.isinf(got[3, :V]).all()  # a one-token prompt holds no word before its answer position: <HALT> only
    targets = torch.tensor([int(ids[0, 0]), int(ids[1, 2]), V, V])
    grads = [torch.autograd.grad(F.cross_entropy(out, targets), (h, att, model.copy_mix)) for out in (got, want)]
    for g_got, g_want in zip(*grads):
        torch.testing.assert_close(g_got, g_want)


def test_copy_readout_runs_the_same_in_forward_solve_and_teacher_forcing():
    model, x, lengths, ids = copy_setup()
    teacher = torch.randint(0, 20, (4, 3), generator=torch.Generator().manual_seed(4))
    state, step, _ = model._loop(x, lengths, x, trail=(trail := []))
    want = []
    for k in range(3):
        state = step(state if k == 0 else model.pointer_key(x, ids, lengths, teacher[:, k - 1]), k)
        want.append(model.copy_logits(state, trail[-1], ids, lengths))
    torch.testing.assert_close(model(x, lengths, 3, prompt_ids=ids, teacher=teacher), torch.stack(want, 1))
    own = model(x, lengths, 3, prompt_ids=ids)
    out = model.solve(x, lengths, 3, min_loops=3, prompt_ids=ids)
    for b in range(4):
        h = int(out["halted_at"][b])
        end = 3 if h < 0 else h + 1
        assert torch.equal(out["tokens"][b, :end], own[b, :end].argmax(-1))
    rows, cut_lengths = torch.tensor([0, 2, 1]), torch.tensor([7, 5, 9])
    cut = ids[rows].masked_fill(torch.arange(12)[None, :] >= cut_lengths[:, None], -1)
    torch.testing.assert_close(model(x, cut_lengths, 3, rows=rows, prompt_ids=ids),
                               model(x[rows], cut_lengths, 3, prompt_ids=cut), atol=1e-5, rtol=1e-5)


def test_copy_readout_refusals():
    with pytest.raises(RLFError, match="readout=copy .* core=transformer and feedback=pointer"):
        RLFConfig(d_model=D, vocab_size=V, readout="copy", loop_span="answer", feedback="pointer")
    with pytest.raises(RLFError, match="readout=copy"):
        RLFConfig(d_model=D, vocab_size=V, readout="copy", core="transformer", loop_span="answer")
