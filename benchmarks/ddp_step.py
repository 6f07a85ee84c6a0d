"""Time per search step of one process against N torchrun processes at the same global batch.

Runs ``pcdarts search`` twice on the same config, one after the other: once as one process with
``--threads N`` and once under ``torchrun --nproc_per_node N`` with one thread per process (so
both use N cores), and compares the mean time per step of the epochs after the first (which
pays for start-up and the first-touch allocations). Gloo on CPU; on a GPU host pass
``--device cuda`` to compare one GPU against N (NCCL). Prints one JSON line.

    python benchmarks/ddp_step.py --nproc 2 --C 8 --cells 5 --batch 32 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _per_step(run: Path, batch: int) -> float:
    rows = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    data = json.loads((run / "manifest.json").read_text())["data"]
    steps = data["n_weight"] // batch
    later = rows[1:] or rows
    return sum(r["time_s"] for r in later) / (len(later) * steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--space", default="darts")
    p.add_argument("--method", default="pc-darts")
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=640)
    p.add_argument("--data", default="synthetic:32x3x640")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    common = ["search", "--method", a.method, "--space", a.space, "--space.C", str(a.C), "--space.layers",
              str(a.cells), "--search.batch_size", str(a.batch), "--search.epochs", str(a.epochs),
              "--method.warmup_epochs", "0", "--data", a.data, "--data.max_samples", str(a.samples),
              "--no-progress", "--run.plots", "false", "--run.device", a.device]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "pcdarts", *common, "--out", str(one), "--run.threads",
                        str(a.nproc)], check=True, capture_output=True, text=True)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(a.nproc), "-m", "pcdarts", *common, "--out", str(many),
                        "--run.threads", "1"], check=True, capture_output=True, text=True, env=env)
        out["one_process_s_per_step"] = _per_step(one, a.batch)
        out[f"{a.nproc}_processes_s_per_step"] = _per_step(many, a.batch)
        out["speedup"] = out["one_process_s_per_step"] / out[f"{a.nproc}_processes_s_per_step"]
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))


if __name__ == "__main__":
    main()
