"""Does an AOTInductor package load on this GPU, and if not, which way of loading it works?

torch 2.11 segfaulted loading every .pt2 the farm built on an H200 (ResNet-50, ViT-B/16 and a
small convnet), in the building process and in a fresh one. This builds the small convnet's
package once and loads it in a fresh interpreter per way of loading, so a crash costs one child:

| way | what the child does before `aoti_load_package` |
| --- | --- |
| plain | nothing (what workers.backends.torch.aoti does) |
| cuda_first | creates the CUDA context (`torch.zeros(1, device="cuda")`) |
| codecache_first | imports torch._inductor.codecache (pytorch/pytorch#173706: a fresh process missed it in 2.10) |
| device_index_0 | passes device_index=0 instead of -1 |
| single_threaded | torch._inductor.package.load_package(..., run_single_threaded=True) |

    python3 benchmarks/aoti_probe.py [--out benchmarks/results/h100/aoti_probe.json]

Prints one line per way and writes JSON with each child's exit and the end of its stderr.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# way: (what runs before the load, how the package is loaded); PATH is the package's path
WAYS = {
    "plain": ("", "torch._inductor.aoti_load_package(PATH, device_index=-1)"),
    "cuda_first": ("torch.zeros(1, device='cuda')", "torch._inductor.aoti_load_package(PATH, device_index=-1)"),
    "codecache_first": ("import torch._inductor.codecache", "torch._inductor.aoti_load_package(PATH, device_index=-1)"),
    "device_index_0": ("", "torch._inductor.aoti_load_package(PATH, device_index=0)"),
    "single_threaded": ("from torch._inductor.package import load_package", "load_package(PATH, run_single_threaded=True)"),
}
RUN = """
x = torch.randn(8, 3, 32, 32, device='cuda').half().contiguous(memory_format=torch.channels_last)
out = runner(x)
torch.cuda.synchronize()
print('ran', [tuple(o.shape) for o in (out if isinstance(out, (list, tuple)) else [out])])
"""


def build(folder: Path) -> Path:
    import copy

    import torch

    from tests.models import small_convnet
    from workers.backends.torch.aoti import build_aoti_package
    from workers.backends.torch.options import TorchEngineOptions

    torch.manual_seed(0)
    options = TorchEngineOptions(kind="aoti", precision="fp16", channels_last=True)
    package = build_aoti_package(copy.deepcopy(small_convnet().eval()), (3, 32, 32), [1, 8], options, "cuda")
    path = folder / "model.pt2"
    path.write_bytes(package.data)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="farm-aoti-probe-") as folder:
        path = build(Path(folder))
        for way, code in WAYS.items():
            before, load = code
            program = f"import torch\n{before}\nrunner = {load.replace('PATH', repr(str(path)))}\n{RUN}"
            try:  # a load that hangs (device_index=0 did, for over 250 s) must not eat the whole device call
                done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=folder)
            except subprocess.TimeoutExpired as exc:
                done = subprocess.CompletedProcess(exc.cmd, -1, str(exc.stdout or ""), str(exc.stderr or ""))
                how = "no answer within 60 s"
            else:
                how = "ok" if done.returncode == 0 else (
                    f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0 else f"exit {done.returncode}")
            rows.append({"way": way, "returncode": done.returncode, "result": how, "stdout": done.stdout[-300:], "stderr": done.stderr[-1500:]})
            print(f"{way:16} {how:22} {done.stdout.strip()[-60:]}", flush=True)
    found = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda, "rows": rows}
    out = args.out or ROOT / "benchmarks" / "results" / "aoti_probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
