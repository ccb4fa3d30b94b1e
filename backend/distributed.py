"""torchrun's protocol for data-parallel training: one launcher, one way to join.

torchrun starts one process per GPU with LOCAL_RANK and WORLD_SIZE set; each
process joins the process group before ``model.train`` wraps its model in DDP.
The training jobs (``backend.jobs.entry``) and ``bench.gpu_check`` share this; it is a
module of its own so that the check, on a bare GPU machine, imports nothing
else of the service (no Label Studio client, no Flask).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def under_torchrun() -> bool:
    """torchrun's launcher protocol: it sets these for each process it starts."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(processes: int, *module_args: str) -> list[str]:
    """torchrun on this machine alone, starting ``processes`` copies of ``python -m <module_args>``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", *module_args]


def join_process_group() -> int:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs); returns this process's rank."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()
