"""Data-parallel training: torchrun's protocol, one way to join, and DDP around the model.

torchrun starts one process per GPU with LOCAL_RANK and WORLD_SIZE set; each
process joins the process group before ``model.train`` wraps its model in DDP
(``data_parallel``). Rank 0 alone evaluates, saves and reports
(``is_main_process``). The service's training jobs and ``bench.gpu_check``
launch and join through here; the check, on a bare GPU machine, imports
nothing of the service (no Label Studio client, no Flask).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def under_torchrun() -> bool:
    """torchrun's launcher protocol: it sets these for each process it starts."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(processes: int, *module_args: str) -> list[str]:
    """torchrun on this machine alone, starting ``processes`` copies of ``python -m <module_args>``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        *module_args,
    ]


def join_process_group() -> int:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs); returns this process's rank."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()


def is_distributed() -> bool:
    """True inside a torch.distributed job (torchrun), where ``model.train.train`` uses DDP."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that evaluates, saves and reports."""
    return not is_distributed() or dist.get_rank() == 0


def data_parallel(model: nn.Module, device: torch.device, *, find_unused_parameters: bool) -> nn.Module:
    """DDP around ``model`` in a distributed job, ``model`` itself otherwise.

    Args:
        device (torch.device): this process's device (its GPU under torchrun).
        find_unused_parameters (bool): some parameters get no gradient (DDP
            must then look for them after each backward, or the next step fails).
    """
    if not is_distributed():
        return model
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )
