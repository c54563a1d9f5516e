"""Plain PyTorch on the same GPU, right after a GPU sweep: the anchor the farm's winners are read against.

For each model and batch size: the torchvision module in fp16, channels_last, on the GPU, one CUDA
graph captured and replayed (what a careful engineer writes by hand, with no compiler), timed with
CUDA events over enough replays; images/s = batch / median replay time. With `--data-dir`, the
farm's winners by throughput for the same models on this GPU are read from that store, and the
table gives winner / anchor per batch.

    python3 benchmarks/gpu_anchor.py --data-dir /tmp/farm-gpu [--models resnet50 vit_b_16] [--batches 1 8 32 128 256]

Prints the table and writes JSON (default benchmarks/results/h200/gpu_anchor.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def anchor(model: str, batch: int, replays: int = 60) -> dict[str, float]:
    import torch
    import torchvision

    torch.backends.cudnn.benchmark = True
    module = torchvision.models.get_model(model, weights=None).eval().cuda().half().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda").half().contiguous(memory_format=torch.channels_last)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):
            module(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        module(x)
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    median = statistics.median(times)
    del graph, module, x
    torch.cuda.empty_cache()
    return {"median_ms": median, "cv": statistics.pstdev(times) / statistics.fmean(times), "images_per_s": batch * 1000 / median}


def farm_winners(data_dir: str, models: list[str]) -> dict[tuple[str, int], Any]:
    """The farm's throughput winners on a GPU target, per (model, batch size)."""
    from farm.results.select import candidates, winners
    from farm.store import StoreLocation, open_store

    store = open_store(StoreLocation.resolve(Path(data_dir)), readonly=True)
    with store.session() as s:
        found = [c for c in candidates(s) if c.model in models and "sm_" in c.target and not c.target.startswith("rtx:")]
    return {(w.model, w.batch_size): w for w in winners(found, "throughput", 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 128, 256])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "h200" / "gpu_anchor.json")
    args = parser.parse_args()
    import torch

    found = farm_winners(args.data_dir, args.models) if args.data_dir else {}
    rows = []
    print(f"{'model':10} {'batch':>5} {'anchor img/s':>13} {'farm img/s':>11} {'farm/anchor':>11}  farm winner")
    for model in args.models:
        for batch in args.batches:
            a = anchor(model, batch)
            w = found.get((model, batch))
            ratio = w.throughput / a["images_per_s"] if w else None
            rows.append({"model": model, "batch": batch, "anchor": a, "farm_images_per_s": w.throughput if w else None,
                         "farm_over_anchor": ratio, "farm_winner": w.engine if w else None,
                         "farm_verdict": w.verdict.note if w and w.verdict else None})
            print(f"{model:10} {batch:5d} {a['images_per_s']:13.0f} {w.throughput if w else float('nan'):11.0f} "
                  f"{ratio if ratio else float('nan'):10.2f}x  {w.engine if w else '-'}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
