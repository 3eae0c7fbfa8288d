"""`rlf demo --quick` end to end in the test suite, then `rlf eval`, `rlf bench memory`, `rlf probe` on its run."""

import json

import pytest

from rlf.cli import main

from eval_helpers import all_finite, main_in

pytestmark = pytest.mark.usefixtures("one_thread")


REPORT_FILES = ["report.md", "summary.json", "eval.json", "eval.md", "memory.json", "memory.md",
                *(f"probes/{name}.{ext}" for name in ("fsm", "gate_partition", "gate_ablation", "trajectory")
                  for ext in ("png", "json"))]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A quick demo run in a fresh folder (its runs/ and cache/ stay there); returns the run directory."""
    root = tmp_path_factory.mktemp("demo")
    main_in(root, ["demo", "--quick"])
    return root / "runs" / "demo-quick"


def test_demo_quick_writes_every_file_with_finite_numbers(demo):
    for name in REPORT_FILES:
        assert (demo / name).is_file() and (demo / name).stat().st_size > 0, name
    for name in ("eval.json", "memory.json", "probes/fsm.json", "probes/gate_partition.json",
                 "probes/gate_ablation.json", "probes/trajectory.json"):
        data = json.loads((demo / name).read_text())
        if name == "eval.json":  # rates are null only where a denominator is 0 (e.g. no example halted)
            data = {k: v for k, v in data.items() if k == "splits"}
            for sp in data["splits"].values():
                for cond in sp["conditions"].values():
                    m = cond["overall"]
                    assert all_finite([m["n"], m["trace_acc"]["rate"], m["answer_acc"]["rate"],
                                       m["halt_recall"]["rate"], m["mean_halt_p"]]), name
        else:
            assert all_finite({k: v for k, v in data.items() if k not in ("run", "allocator")}), name
    report = (demo / "report.md").read_text()
    for part in ("## Headline", "in-distribution trace accuracy", "ood trace accuracy", "lifeline severed",
                 "memory growth per loop", "![fsm](probes/fsm.png)", "![trajectory](probes/trajectory.png)"):
        assert part in report, part


def test_cli_eval_bench_probe_on_the_demo_run(demo, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", str(demo), "--hops", "1", "--n", "4", "--ablate", "scale=0.5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["splits"]) == ["in-distribution"]
    assert "scale=0.5" in res["splits"]["in-distribution"]["conditions"]
    assert main(["bench", "memory", str(demo), "--loops", "1,2,4", "--batch-size", "4"]) == 0
    assert "growth per loop" in capsys.readouterr().out
    assert main(["probe", str(demo), "--n", "6", "--random-sets", "1", "--out", str(tmp_path / "p")]) == 0
    assert "FSM" in capsys.readouterr().out and (tmp_path / "p" / "trajectory.png").is_file()
    assert main(["eval", str(demo), "--ablate", "sever"]) == 2
    assert "--ablate 'sever'" in capsys.readouterr().err
