"""Helpers shared by the evaluation, probe and demo tests (not a test module)."""

import math
from collections import deque
from pathlib import Path

import pytest
import torch

from rlf.cli import main
from rlf.config import load_config
from rlf.train import build_model


def randomized_model(base, lifeline: str = "vector", core: str = "transformer", gate=None):
    """A tiny untrained model whose loop does something: random core weights, a gate (random unless given),
    and a sharpened <HALT> row so that it halts now and then."""
    model = build_model(load_config("tiny", [f"lifeline={lifeline}", f"core={core}", "max_loops=8"]), base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.core.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if lifeline != "none":
            n = model.lifeline_gate.numel()
            model.lifeline_gate.copy_(torch.rand(n, generator=g) * 2 if gate is None else gate(n))
        model.halt_row.mul_(30)
    return model.eval()


def all_finite(obj) -> bool:
    """True when every number in a nested JSON-like object is finite (and nothing is None)."""
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(all_finite(v) for v in obj)
    return obj is not None and (not isinstance(obj, float) or math.isfinite(obj))


def main_in(folder: Path, argv: list[str]) -> None:
    """`rlf ARGV` succeeds with `folder` as the working directory (its runs/ and cache/ go there) and one torch
    thread, as the one_thread fixture, which module fixtures cannot use."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(folder)
            assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def shortest_path(edges: dict[str, list[str]], subject: str, options: list[str], unique: bool = True
                  ) -> tuple[list[str], str]:
    """(the path below the subject to the one reachable option, that option) by BFS over `edges`; asserts exactly one
    option is reachable and, when `unique`, by a single shortest path (an independent resolver of graph questions)."""
    depth, count, parent = {subject: 0}, {subject: 1}, {subject: None}
    queue = deque([subject])
    while queue:
        node = queue.popleft()
        for child in edges.get(node, []):
            if child not in depth:
                depth[child], count[child], parent[child] = depth[node] + 1, count[node], node
                queue.append(child)
            elif depth[child] == depth[node] + 1:
                count[child] += count[node]
    reachable = [o for o in options if o in depth]
    assert len(reachable) == 1, f"options {options}: reachable {reachable}"
    answer = reachable[0]
    assert count[answer] == 1 or not unique, f"the shortest path to {answer} is not unique"
    path = [answer]
    while parent[path[-1]] != subject:
        path.append(parent[path[-1]])
    return path[::-1], answer
