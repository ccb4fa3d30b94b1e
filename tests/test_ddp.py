"""Multi-process training (torchrun, DDP) on the CPU with gloo: what a multi-GPU worker runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
class TestDistributedTraining:
    def test_two_processes_stay_in_sync(self, tmp_path: Path) -> None:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "tests" / "ddp_worker.py"),
            str(tmp_path),
        ]
        done = subprocess.run(
            command,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert [r["world"] for r in ranks] == [2, 2]
        assert [r["main"] for r in ranks] == [True, False]
        assert ranks[0]["epochs"] == ranks[1]["epochs"] == 2
        # Same start, trained (weights moved), and DDP kept the replicas identical.
        assert ranks[0]["before"] == ranks[1]["before"]
        assert ranks[0]["after"] != ranks[0]["before"]
        assert ranks[0]["after"] == pytest.approx(ranks[1]["after"], rel=0, abs=1e-6)
