"""Probes on a tiny model: every PNG + JSON written, finite numbers, partition and PCA checked by hand."""

import json

import numpy as np
import pytest
import torch

from rlf.config import load_config
from rlf.probes import gate_partition, pca, probe_summary, run_probes
from rlf.train import LoadedRun

from eval_helpers import all_finite, randomized_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_run(tiny_llama, tmp_path, lifeline="vector"):
    cfg = load_config("tiny", [f"cache_dir={tmp_path / 'cache'}", "hops=1-2"])
    model = randomized_model(tiny_llama, lifeline, gate=lambda n: torch.linspace(0.5, 1.5, n))
    return LoadedRun(cfg, model, tiny_llama)


def test_pca_on_a_plane():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(200, 2)) @ rng.normal(size=(2, 10))  # rank 2
    coords, ratio = pca(plane)
    assert coords.shape == (200, 2) and ratio[:2].sum() == pytest.approx(1.0)


def test_gate_partition_thresholds(tiny_llama, tmp_path):
    run = tiny_run(tiny_llama, tmp_path)  # gate = linspace(0.5, 1.5, 64)
    part = gate_partition(run.model, tmp_path, threshold=0.1)
    gate = np.linspace(0.5, 1.5, 64)
    assert part["counts"] == {"amplified": int((gate > 1.1).sum()), "suppressed": int((gate < 0.9).sum()),
                              "neutral": int(((gate >= 0.9) & (gate <= 1.1)).sum())}
    assert sum(part["fractions"].values()) == pytest.approx(1.0)
    assert (tmp_path / "gate_partition.png").stat().st_size > 0


def test_every_probe_writes_png_and_json(tiny_llama, tmp_path):
    run = tiny_run(tiny_llama, tmp_path)
    res = run_probes(run, tmp_path, n=12, random_sets=2, progress=False)
    for name in ("fsm", "gate_partition", "gate_ablation", "trajectory"):
        assert (tmp_path / "probes" / f"{name}.png").stat().st_size > 1000
        numbers = json.loads((tmp_path / "probes" / f"{name}.json").read_text())
        assert all_finite(numbers), name
    assert 0 < res["fsm"]["variance_explained_2"] <= 1
    assert res["gate_ablation"]["groups"]["amplified"]["size"] == res["gate_partition"]["counts"]["amplified"]
    assert len(res["gate_ablation"]["groups"]["suppressed"]["random"]["each"]) == 2
    traj = res["trajectory"]
    assert len(traj["tokens"]["intact"]) == traj["n_loops"] == len(traj["coords"]["severed"])
    assert "loops agree" in probe_summary(res)


def test_gate_probes_skip_without_a_gate(tiny_llama, tmp_path):
    res = run_probes(tiny_run(tiny_llama, tmp_path, lifeline="none"), tmp_path, n=6, progress=False)
    assert "skipped" in res["gate_partition"] and "skipped" in res["gate_ablation"]
    assert (tmp_path / "probes" / "fsm.png").is_file() and (tmp_path / "probes" / "trajectory.png").is_file()
    assert "skipped" in probe_summary(res)
