"""ViT-B/16 at batch 256 on a GPU, by hand: how far fp8/int8 (torchao) go against bf16, outside the farm.

Prints img/s for each way of running the same random-weight module and writes JSON after each way. No way
starts after --budget-s; a max-autotune compile may run minutes past it, so give the call a margin and run it
with output to a file, not a pipe (a call cut by its limit returns nothing a pipe held). Used to tell whether the farm or the model limits
the low-precision gain (docs/gpu.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision


def images_per_s(fn, batch: torch.Tensor, seconds: float = 2.0) -> float:
    for _ in range(3):
        fn(batch)
    torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batch)
        count += 1
    torch.cuda.synchronize()
    return count * batch.shape[0] / (time.perf_counter() - start)


def cuda_graph(module: torch.nn.Module, batch: torch.Tensor):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(batch)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = module(batch)
    return lambda _batch: (graph.replay(), out)[1]


def quantized(quantize: str, dtype: torch.dtype) -> torch.nn.Module:
    from torchao.quantization import quantize_
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Int8DynamicActivationInt8WeightConfig,
                                      PerRow, PerTensor)
    configs = {"fp8_rowwise": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
               "fp8_tensorwise": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()),
               "int8_dynamic": Int8DynamicActivationInt8WeightConfig}
    module = fresh(dtype)
    quantize_(module, configs[quantize]())
    return module


def fresh(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vit_b_16(weights=None).eval().to("cuda", dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=330)
    parser.add_argument("--out", type=Path, default=Path("vit_lowp_probe.json"))
    parser.add_argument("--only", nargs="+", default=None, metavar="WORD",
                        help="only the ways whose name, spaces as underscores, holds one of these (e.g. int8_dynamic "
                             "fp8_tensorwise_compile_max), and the two the others are compared with: the anchor and compile bf16 default")
    args = parser.parse_args()
    started = time.perf_counter()
    batch16 = torch.randn(args.batch, 3, 224, 224, device="cuda", dtype=torch.float16)
    batch_bf = batch16.to(torch.bfloat16)
    ways = {
        "eager fp16 cuda_graph (anchor)": lambda: (cuda_graph(fresh(torch.float16), batch16), batch16),
        "eager bf16 cuda_graph": lambda: (cuda_graph(fresh(torch.bfloat16), batch_bf), batch_bf),
        "compile bf16 default": lambda: (torch.compile(fresh(torch.bfloat16)), batch_bf),
        "compile bf16 max-autotune-no-cudagraphs": lambda: (torch.compile(fresh(torch.bfloat16), mode="max-autotune-no-cudagraphs"), batch_bf),
        "fp8_tensorwise compile default": lambda: (torch.compile(quantized("fp8_tensorwise", torch.bfloat16)), batch_bf),
        "fp8_rowwise compile default": lambda: (torch.compile(quantized("fp8_rowwise", torch.bfloat16)), batch_bf),
        "fp8_tensorwise compile max-autotune-no-cudagraphs": lambda: (torch.compile(quantized("fp8_tensorwise", torch.bfloat16), mode="max-autotune-no-cudagraphs"), batch_bf),
        "int8_dynamic compile default": lambda: (torch.compile(quantized("int8_dynamic", torch.bfloat16)), batch_bf),
    }
    if args.only:
        kept = {"eager fp16 cuda_graph (anchor)", "compile bf16 default"}
        ways = {name: make for name, make in ways.items() if name in kept or any(word in name.replace(" ", "_") for word in args.only)}
    rows = []
    with torch.inference_mode():
        for name, make in ways.items():
            if time.perf_counter() - started > args.budget_s:
                rows.append({"way": name, "skipped": "out of budget"})
                print(f"{name:55s} skipped: out of budget", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                fn, batch = make()
                rate = images_per_s(fn, batch)
                rows.append({"way": name, "img_per_s": rate, "setup_s": time.perf_counter() - t0})
                print(f"{name:55s} {rate:9.0f} img/s  (set up + timed in {time.perf_counter() - t0:.0f} s)", flush=True)
            except Exception as error:  # noqa: BLE001 - a probe reports every way, failed or not
                rows.append({"way": name, "error": f"{type(error).__name__}: {error}"[:300]})
                print(f"{name:55s} failed: {type(error).__name__}: {str(error)[:200]}", flush=True)
            torch._dynamo.reset()
            torch.cuda.empty_cache()
            # written after every way: a call cut by its time limit still brings back what was measured
            result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch": args.batch,
                      "date": time.strftime("%Y-%m-%d"), "rows": rows}
            args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
