"""Kill a training run between two of its checkpoints (not a test module).

Run as a script, this file is `rlf ARGS` with every training step slowed by 0.3 s, so that a kill lands between two
checkpoints and not after the end: `python tests/kill_helpers.py train ...`, or under torchrun.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import psutil

SLOW_RLF = Path(__file__)


def kill_between_checkpoints(cmd: list[str], run: Path, env: dict, log: Path) -> subprocess.Popen:
    """Start `cmd` (a run into `run`), and SIGKILL it and every process it started once the run has logged a step
    after its latest checkpoint: work the kill loses. Returns the finished process."""
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                state, logged = run / "checkpoint" / "state.json", run / "metrics.jsonl"
                if state.is_file() and logged.is_file():
                    ckpt_step = json.loads(state.read_text())["step"]
                    steps = [json.loads(x)["step"] for x in logged.read_text().splitlines() if x.endswith("}")]
                    if steps and max(steps) > ckpt_step:
                        break
                time.sleep(0.05)
            assert proc.poll() is None, f"the run ended before it was killed: {log.read_text()[-3000:]}"
            started = psutil.Process(proc.pid).children(recursive=True)  # torchrun's ranks: sessions of their own
            proc.kill()
            for p in started:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(started, timeout=30)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc


if __name__ == "__main__":
    import sys

    import rlf.train
    from rlf.cli import main

    order = rlf.train.batch_order

    def slow_order(*args, **kwargs):
        time.sleep(0.3)
        return order(*args, **kwargs)

    rlf.train.batch_order = slow_order
    sys.exit(main(sys.argv[1:]))
