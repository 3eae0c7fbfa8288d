"""The single-token code path as it was before multi-token loop targets (commit 1b7d5b4), kept verbatim as the
reference that target_tokens=1 must reproduce bit for bit (tests/test_multitoken.py). Not used by rlf itself."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rlf import distributed
from rlf.model import RLFModel, loops_needed
from rlf.train import Split


def loop_targets(target_ids: list[list[int]], halt_id: int, n_loops: int, supervision: str = "per_loop"
                 ) -> torch.Tensor:
    """Targets (B, n_loops): each example's per-loop ids, then <HALT> at every later loop (absorbing halt).

    With supervision="final" only the answer loop and the halt loops are supervised (others = -100, ignored).
    With supervision="answer_once" (the no-loop baseline, n_loops = 1) the answer is the only target.
    """
    if supervision == "answer_once":
        if n_loops != 1:
            raise ValueError(f"supervision=answer_once runs one loop, not n_loops={n_loops}")
        return torch.tensor([[ids[-1]] for ids in target_ids], dtype=torch.long)
    out = torch.full((len(target_ids), n_loops), halt_id, dtype=torch.long)
    for row, ids in enumerate(target_ids):
        if len(ids) >= n_loops:
            raise ValueError(f"example {row} has {len(ids)} targets; n_loops={n_loops} leaves no loop for <HALT>")
        out[row, : len(ids)] = torch.tensor(ids)
        if supervision == "final":
            out[row, : len(ids) - 1] = -100
    return out


def loop_loss(logits: torch.Tensor, targets: torch.Tensor, denominator: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict]:
    """Cross-entropy at every loop, vectorised over batch and loops: the sum over supervised loops / `denominator`
    (default: their count, i.e. the mean); plus the per-loop loss and the hit counts of the n = B examples: per loop
    (`loop_hits`) and of whole traces (`trace_hits`)."""
    B, L, V = logits.shape
    ce = F.cross_entropy(logits.float().reshape(B * L, V), targets.reshape(B * L), ignore_index=-100, reduction="none")
    ce = ce.view(B, L)
    mask = targets != -100
    loss = ce.sum() / (mask.sum().clamp_min(1) if denominator is None else denominator)
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets) | ~mask  # (B, L)
        stats = {
            "per_loop_loss": ((ce * mask).sum(0) / mask.sum(0).clamp_min(1)).tolist(),
            "loop_hits": correct.sum(0).tolist(),
            "trace_hits": int(correct.all(1).sum()),
            "n": B,
        }
    return loss, stats


@torch.no_grad()
def validate(model: RLFModel, split: Split, batch_size: int = 64, supervision: str = "per_loop") -> dict:
    """Trace accuracy (every loop right and <HALT> at the right loop) and answer accuracy on a split.

    With supervision="answer_once" (no loop) the trace is the answer at loop 1: both accuracies are that.
    """
    model.eval()
    n_trace = n_answer = 0
    n = len(split.examples)
    for i in distributed.join().shard(range(0, n, batch_size)):  # under torchrun: this rank's batches; counts summed
        idx = list(range(i, min(i + batch_size, n)))
        x, lengths, tids = split.batch(idx)
        n_loops = loops_needed(tids, supervision)
        logits = model(x.to(model.lm_head.device), lengths, n_loops)
        pred = logits.argmax(-1).cpu()
        if supervision == "answer_once":
            hits = int((pred[:, 0] == loop_targets(tids, model.halt_id, 1, supervision)[:, 0]).sum())
            n_trace, n_answer = n_trace + hits, n_answer + hits
            continue
        targets = loop_targets(tids, model.halt_id, n_loops)
        for row, t in enumerate(tids):
            k = len(t)
            n_trace += bool((pred[row, : k + 1] == targets[row, : k + 1]).all())
            n_answer += bool(pred[row, k - 1] == t[-1])
    model.train()
    n_trace, n_answer = map(int, distributed.all_sum([n_trace, n_answer]))
    return {"val_trace_acc": n_trace / n, "val_answer_acc": n_answer / n, "val_n": n}


def _as_matrix(rows, fill, dtype) -> np.ndarray:
    """A (N, L) array from an array or from ragged per-example lists, padded with `fill`."""
    if isinstance(rows, (np.ndarray, torch.Tensor)):
        return np.asarray(rows, dtype=dtype)
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def absorb_halt(tokens, halt_id: int, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (N, >= width) with every loop from the first <HALT> on set to <HALT>, and that first loop (or -1)."""
    tokens = _as_matrix(tokens, -1, np.int64)
    if tokens.shape[1] < width:
        tokens = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=-1)
    is_halt = tokens == halt_id
    first = np.where(is_halt.any(1), is_halt.argmax(1), -1)
    after = (first[:, None] >= 0) & (np.arange(tokens.shape[1])[None, :] >= first[:, None])
    return np.where(after, halt_id, tokens), first


def score(tokens, p_halt, target_ids: list[list[int]], halt_id: int, reference=None) -> dict[str, np.ndarray]:
    """Per-example outcomes of traces (top-1 ids per loop, -1 where a loop was not run) against per-loop targets.

    `tokens` and `p_halt` are (N, L) arrays or ragged lists; `reference` (the intact model's tokens) adds
    `agree`. Returns trace_ok, answer_ok, halted, halt_hit, halt_loop, halt_p (N,) and loop_ok, loop_mask
    (N, K + 1). Tokens after the first <HALT> count as <HALT> (halting is absorbing).
    """
    k = np.array([len(t) for t in target_ids])  # the target halt loop (0-based)
    width = int(k.max()) + 1
    targets = loop_targets(target_ids, halt_id, width).numpy()  # (N, K + 1)
    tokens, first = absorb_halt(tokens, halt_id, width)
    p_halt = _as_matrix(p_halt, np.nan, np.float64)
    rows = np.arange(len(k))
    halted = first >= 0
    loop_mask = np.arange(width)[None, :] <= k[:, None]  # (N, K + 1)
    loop_ok = (tokens[:, :width] == targets) & loop_mask
    answer = np.array([t[-1] for t in target_ids])
    answer_ok = (first >= 1) & (tokens[rows, np.maximum(first - 1, 0)] == answer)
    reached = k < p_halt.shape[1]
    halt_p = np.full(len(k), np.nan)
    halt_p[reached] = p_halt[rows[reached], k[reached]]
    out = {"trace_ok": loop_ok.sum(1) == k + 1, "answer_ok": answer_ok, "halted": halted, "halt_hit": first == k,
           "halt_loop": first, "halt_p": halt_p, "loop_ok": loop_ok, "loop_mask": loop_mask}
    if reference is not None:
        ref, _ = absorb_halt(reference, halt_id, width)
        out["agree"] = (tokens[:, :width] == ref[:, :width]) & loop_mask
    return out
