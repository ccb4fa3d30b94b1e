"""Time HUA's pool-wide stage: fit_scale + normalise + aggregate + priorities + order.

Builds synthetic entropies and candidate metrics for N images (no detector),
selects the candidates with the default gate, and times each step and the
whole of :func:`model.hua.rank_pool` with ``time.perf_counter``.

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_hua_aggregate --n 100000 --repeats 7
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from model.hua import (
    HUAConfig,
    aggregate,
    fit_scale,
    normalise,
    num_candidates,
    priorities,
    rank_pool,
    select_candidates,
)


def synthetic_pool(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Entropies, candidate mask and candidate metrics of a random pool.

    Args:
        n (int): N, images in the pool.
        seed (int): seed of the generator.

    Returns:
        tuple[Tensor[N], Tensor[N], Tensor[P, 4]]: H in [0, 1], the bool mask of
        the default gate's P candidates, and their (SA, CD, OR, LC).
    """
    gen = torch.Generator().manual_seed(seed)
    entropy = torch.rand(n, generator=gen)
    mask = select_candidates(entropy, num_candidates(n, HUAConfig()))
    p = int(mask.sum())
    metrics = torch.rand(p, 4, generator=gen) * torch.tensor([1.0, 1.0, 1.0, 3.0])
    return entropy, mask, metrics


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``step`` over ``repeats`` calls, after one warm-up."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the timings and print one line per step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images in the pool")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pool")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per step")
    args = parser.parse_args(argv)
    if args.n < 0 or args.repeats < 1:
        parser.error("--n must be >= 0 and --repeats >= 1")

    entropy, mask, metrics = synthetic_pool(args.n, args.seed)
    cutoff = float(entropy[mask].min()) if bool(mask.any()) else math.inf
    scale = fit_scale(metrics, entropy, cutoff)
    normalised = normalise(metrics, scale)
    l_all = torch.zeros(args.n, dtype=torch.float64)
    l_all[mask] = aggregate(normalised)
    steps: dict[str, Callable[[], object]] = {
        "fit_scale": lambda: fit_scale(metrics, entropy, cutoff),
        "normalise": lambda: normalise(metrics, scale),
        "aggregate": lambda: aggregate(normalised),
        "priorities": lambda: priorities(entropy, mask, l_all, scale),
        "rank_pool (all)": lambda: rank_pool(entropy, metrics, mask),
    }
    print(
        f"N={args.n} P={int(mask.sum())} repeats={args.repeats} "
        f"threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    for name, step in steps.items():
        seconds = median_seconds(step, args.repeats)
        rate = args.n / seconds if seconds > 0 else float("inf")
        print(f"{name:<16} median {seconds:.6f} s  {rate:,.0f} images/s")


if __name__ == "__main__":
    main()
