"""The per-hop plot beside RESULTS.md, from the same columns as its tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlf.headline.measure import CLOCK_HOLD
from rlf.headline.render import Protocol, intact, trace


def plot_per_hop(protocols: dict[str, Protocol], path: Path) -> None:
    """One panel per protocol: trace accuracy per hop of each core (as trained, and with the clock held), answer
    accuracy of the baselines, 95% CIs; a hop count a column has no part for is left out of its line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * len(protocols), 4.5))
    for ax, proto in zip(fig.subplots(1, len(protocols), squeeze=False)[0], protocols.values()):
        hops = proto.train_hops + proto.ood_hops
        lines = [(f"{c.label} (trace)", "o-", c, "main", intact("trace_acc")) for c in proto.cores]
        lines += [(f"{c.label}, clock held at loop {CLOCK_HOLD + 1} (trace)", "D-.", c, "clock", trace)
                  for c in proto.cores]
        lines += [(f"no loop, {c.label} (answer)", "s--", c, "no_loop", lambda v: v["answers"]) for c in proto.no_loop]
        for c in proto.base_alone:
            lines += [("base alone (answer)", "^:", c, "base_alone", lambda v: v["answers"]),
                      ("base alone, chat (answer)", "^:", c, "base_alone", lambda v: v.get("chat_answers"))]
        points = [(label, style, {i: r for i, h in enumerate(hops) if (r := c.over(kind, [h], get)) is not None
                                  and not (kind == "clock" and h in c.train_hops)})
                  for label, style, c, kind, get in lines]
        points = [p for p in points if p[2]]
        offsets = np.linspace(-0.15, 0.15, max(len(points), 1))  # side by side, so equal rates do not hide each other
        for (label, style, rates), offset in zip(points, offsets):
            at = np.array(list(rates))
            y = np.array([100 * (r["rate"] or 0.0) for r in rates.values()])
            err = np.array([[y[i] - 100 * r["ci95"][0], 100 * r["ci95"][1] - y[i]]
                            for i, r in enumerate(rates.values())]).T
            err = err.clip(min=0)  # rounding can put an end of the interval a hair past the rate
            ax.errorbar(at + offset, y, yerr=err, fmt=style, capsize=3, label=label)
        ax.axvline(len(proto.train_hops) - 0.5, color="grey", lw=0.8)
        ax.set_xticks(np.arange(len(hops)), [str(h) for h in hops])
        ax.set_xlabel("hops (left of the line: trained)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"protocol {proto.name}")
        if points:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
