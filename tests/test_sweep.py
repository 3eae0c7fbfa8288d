"""`rlf bench sweep`: the experiment log trains each variant once, measures it on dev hop counts, keeps the rows."""

import json

import pytest

import rlf.sweep
from rlf.errors import RLFError
from rlf.sweep import read_sweep, run_sweep

SWEEP = """
preset: tiny
overrides: [max_steps=3, n_train=64, n_val=8, val_every=3, ckpt_every=3, "cache_dir={cache}"]
dev_hops: "4"
n_dev: 3
results: {out}/log.json
docs: {out}/log.md
out: {out}/runs
variants:
  - name: a
    overrides: [lr=1e-3]
    note: first
"""


def write_sweep(tmp_path, text=SWEEP):
    path = tmp_path / "s.yaml"
    path.write_text(text.format(out=tmp_path, cache=tmp_path / "cache"))
    return path


def test_a_variant_is_trained_measured_logged_and_not_retrained(tmp_path, monkeypatch):
    path = write_sweep(tmp_path)
    run_sweep(path)
    row = json.loads((tmp_path / "log.json").read_text())["rows"]["a"]
    assert row["steps"] == 3 and row["overrides"] == ["lr=1e-3"] and row["note"] == "first"
    assert row["dev"]["4"]["trace_acc"]["n"] == 3  # 3 held-out 4-hop chains, beyond the tiny preset's 1-3
    assert [s for s, _, _ in row["val_curve"]] == [3]
    assert "| a | lr=1e-3 | 3 |" in (tmp_path / "log.md").read_text()
    monkeypatch.setattr(rlf.sweep, "train_or_reuse", lambda *a, **k: pytest.fail("a logged variant is retrained"))
    run_sweep(path)  # the same config: the logged row stands
    calls = []

    def trains(cfg, out, base):
        calls.append(cfg.lr)
        raise KeyboardInterrupt  # stop there: what matters is that it trains

    monkeypatch.setattr(rlf.sweep, "train_or_reuse", trains)
    path.write_text(path.read_text().replace("lr=1e-3", "lr=2e-3"))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(path)  # a changed config is measured again
    assert calls == [2e-3]


@pytest.mark.parametrize("bad, message", [
    ("variants: []", "non-empty list"),
    ("variants: [{overrides: [lr=1]}]", "variants\\[0\\]: needs a `name`"),
    ("variants: [{name: a}, {name: a}]", "duplicate name 'a'"),
    ("variants: [{name: a, overrides: [bogus=1]}]", "variant a: override 'bogus=1'"),
    ("variants: [{name: a, overrides: [supervision=answer_once]}]", "no trace to measure"),
    ("colour: red\nvariants: [{name: a}]", "unknown keys \\['colour'\\]"),
])
def test_a_bad_sweep_file_is_refused_before_anything_trains(tmp_path, bad, message):
    path = tmp_path / "s.yaml"
    path.write_text("preset: tiny\n" + bad)
    with pytest.raises(RLFError, match=message):
        read_sweep(path)
