"""Several processes, one run: `torchrun` starts them, each joins the process group, rank 0 alone writes.

nanoGPT's pattern: the launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK) switches it on, and one process is the
world-size-1 case of the same code (every helper here is then the identity). Gloo carries CPU tensors, NCCL CUDA
ones; the small collectives here (counts, Python objects) go through the CPU. A collective waits at most the process
group's timeout (torch's default) for the other ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rlf.errors import RLFError


@dataclass(frozen=True)
class World:
    """This process's rank among `size` processes; rank 0 (`main`) writes files and prints."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items):
        """This rank's items (of a list, range or tensor): every size-th one from its rank, so the ranks' shards are
        disjoint and cover `items`."""
        return items[self.rank :: self.size]


def launched_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 without torchrun): the GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def join() -> World:
    """This process's place in the run; on the first call under torchrun, joins its process group (gloo, and NCCL
    for CUDA tensors where CUDA is available)."""
    if not dist.is_initialized():
        if launched_size() == 1:
            return World()
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks, in float64 (exact for counts)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather(obj) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def main_first(fn):
    """fn() on rank 0 once every rank has arrived, while the others wait; every rank gets its result, and an RLFError
    raised there is raised on every rank (so all of them stop with rank 0's message)."""
    if not dist.is_initialized():
        return fn()
    dist.barrier()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except RLFError as e:
            box = [("error", str(e))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise RLFError(value)
    return value


def must_see(path, what: str) -> None:
    """On a rank other than 0, refuse (naming the path) when a file rank 0 wrote is not visible here: it is on another
    machine's disk."""
    from pathlib import Path

    rank = join().rank
    if rank and not Path(path).exists():
        raise RLFError(f"rank {rank}: {path} ({what}, written by rank 0) is not visible here; on several machines "
                       "the run directory and cache_dir must be on a filesystem every machine mounts")


def launch(nproc: int, argv: list[str]) -> int:
    """Run `rlf ARGV` as `nproc` processes on this machine, through torchrun (`--standalone`); the exit status of the
    first rank that failed, else 0. OpenMP threads per process: this machine's cores / nproc, unless set."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "--", "rlf", *argv]))  # --: all rlf's
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code  # killed by signal N: 128 + N, as a shell reports it
    return 0
