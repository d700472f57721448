"""GPU rows of the benchmarks: batched assigners on CUDA, their peak memory, and crowded images.

    python scripts/gpu_benchmark.py [--repeats N] [--markdown FILE]

Scenes as ``scripts/benchmark.py`` (800 x 1333 input, 22,300 anchors or points, COCO-like
GTs, predicted boxes decoded from noisy deltas). For each assigner, batch B and GTs per
image G: the median milliseconds per call for the whole batch (the target: ATSS and
Dynamic ATSS under 2 ms for B = 16, G = 100) and the peak CUDA memory of the call above
what the inputs hold. The crowded rows (G = 1,000 and 3,000 per image) check that no
assigner runs out of memory. Without a CUDA device it prints one line and exits 0.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import machine, scene, timed, torch_calls  # noqa: E402

CASES = ((16, 5), (16, 100), (1, 100), (2, 1000), (1, 3000))
ASSIGNERS = ("atss", "dynamic_atss", "max_iou", "pseudo_iou", "fcos", "tal", "simota", "dsl")


def run(repeats):
    device = torch.device("cuda")
    rows = []
    for batch, num_gts in CASES:
        calls = torch_calls(scene(num_gts, batch), device)
        for name in ASSIGNERS:
            call = calls[name]
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            try:
                seconds = timed(call, repeats, torch.cuda.synchronize)
                peak = torch.cuda.max_memory_allocated() - base
                rows.append((name, batch, num_gts, f"{seconds * 1e3:.2f}", f"{peak / 2**20:.0f}"))
            except torch.cuda.OutOfMemoryError:
                rows.append((name, batch, num_gts, "out of memory", "-"))
            torch.cuda.empty_cache()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_benchmark: no CUDA device; nothing measured")
        return 0
    lines = [f"machine: {machine()}", "", "| assigner | B | G per image | ms per batch (median) | peak MiB above inputs |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {b} | {g} | {ms} | {mib} |" for name, b, g, ms, mib in run(args.repeats)]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
