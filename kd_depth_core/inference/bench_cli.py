"""`kd-depth bench`: inference latency, throughput and peak memory per model × backend × size × batch.

Models are built randomly initialised (latency does not depend on the weights) and run through
the same backends as ``DepthPredictor`` (graph = normalise → network → depth), timing
``backend.run`` on a prepared batch: host→device copy, network, depth conversion and the copy
back, i.e. what a caller waits for, without image decoding/resizing.

Latency: p50/p95 over ``--iters`` timed calls after ``--warmup`` calls. Throughput: images/s =
batch / mean latency. Peak memory: CUDA — ``torch.cuda.max_memory_allocated`` (torch backends);
CPU — peak resident memory of the process during the timed calls minus the resident memory
before the backend was built (weights copy + activations + runtime buffers; approximate).
Writes ``bench.md`` (Markdown table), ``bench.json`` and ``bench.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kd_depth_core.utils.atomic import write_bytes_atomic, write_text_atomic

DEFAULT_SIZES = "192x640"
DEFAULT_BACKENDS = "torch,onnxruntime"


@dataclass
class BenchRow:
    model: str
    backend: str
    device: str
    precision: str
    height: int
    width: int
    batch: int
    params_m: float
    gflops: float
    p50_ms: float
    p95_ms: float
    throughput: float  # images per second
    peak_mem_mb: float
    error: str = ""


def default_models() -> list[str]:
    """Every registered student, the teacher(s) and the Monodepth2 ResNet18 baseline."""
    from kd_depth_core.models import list_families, list_models

    names = list_models("student")
    if "teacher" in list_families():
        names += list_models("teacher")
    return names + ["resnet18_md2"]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux
        return 0


class _PeakRss:
    """Samples the process's resident memory every millisecond in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'192x640,320x1024' -> [(192, 640), (320, 1024)] as (height, width)."""
    sizes = []
    for item in text.split(","):
        try:
            height, width = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--sizes: expected HEIGHTxWIDTH items like 192x640, got {item!r}") from None
        sizes.append((height, width))
    return sizes


def build_for_size(name: str, height: int, width: int):
    """(model, metadata) of a randomly initialised registered model for a height×width input."""
    from kd_depth_core.models import create_model, model_info
    from kd_depth_core.models.flops import nearest_valid_size
    from kd_depth_core.models.io import ModelMetadata

    kwargs = {"img_size": (height, width)} if "img_size" in model_info(name)["defaults"] else {}
    model = create_model(name, **kwargs).eval()
    height, width = nearest_valid_size(height, width, int(getattr(model, "size_multiple", 32)))
    meta = ModelMetadata.from_model(model, input_height=height, input_width=width, min_depth=0.1,
                                    max_depth=100.0, scale_kind="relative", focal_length_px=None)
    return model, meta


def bench_one(model, metadata, backend_kind: str, device: str, precision: str, batch: int, warmup: int,
              iters: int, cpu_threads: int = 0) -> tuple[float, float, float, float]:
    """(p50 ms, p95 ms, images/s, peak memory MB) of ``backend.run`` for one configuration."""
    import torch

    from kd_depth_core.inference.backends import create_backend

    rss_before = _rss_bytes()
    backend = create_backend(backend_kind, model, metadata, device, precision, cpu_threads)
    on_cuda = backend.device.startswith("cuda")
    if on_cuda and backend_kind != "onnxruntime":
        torch.cuda.reset_peak_memory_stats()
    rng = np.random.default_rng(0)
    inputs = [rng.random((batch, 3, metadata.input_height, metadata.input_width), dtype=np.float32)
              for _ in range(2 if metadata.stereo else 1)]
    for _ in range(warmup):
        backend.run(*inputs)
    times = []
    with _PeakRss() as rss:
        for _ in range(iters):
            start = time.perf_counter()
            backend.run(*inputs)  # returns numpy: the device work has finished
            times.append((time.perf_counter() - start) * 1000.0)
    if on_cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20 if backend_kind != "onnxruntime" else float("nan")
    else:
        peak = max(0, rss.peak - rss_before) / 2**20
    del backend
    times_arr = np.asarray(times)
    return (float(np.percentile(times_arr, 50)), float(np.percentile(times_arr, 95)),
            batch * 1000.0 / float(times_arr.mean()), float(peak))


def run_benchmark(models: list[str], backends: list[str], sizes: list[tuple[int, int]], batches: list[int],
                  device: str = "auto", precision: str = "fp32", warmup: int = 5, iters: int = 30,
                  cpu_threads: int = 0, progress=None) -> list[BenchRow]:
    """Benchmark every combination; a configuration that fails is reported in its row's ``error``.

    ``cpu_threads`` > 0 sets torch's and ONNX Runtime's CPU threads alike (0 = their defaults).
    """
    import torch

    if cpu_threads > 0:
        torch.set_num_threads(cpu_threads)
    from kd_depth_core.inference.backends import resolve_device
    from kd_depth_core.models.flops import count_flops, count_parameters, example_inputs

    device_name = str(resolve_device(device))
    rows: list[BenchRow] = []
    for name in models:
        for height, width in sizes:
            model, meta = build_for_size(name, height, width)
            params = count_parameters(model) / 1e6
            gflops = count_flops(model, example_inputs(model, meta.input_height, meta.input_width)) / 1e9
            for kind in backends:
                for batch in batches:
                    row = BenchRow(name, kind, device_name, precision, meta.input_height, meta.input_width, batch,
                                   params, gflops, float("nan"), float("nan"), float("nan"), float("nan"))
                    try:
                        row.p50_ms, row.p95_ms, row.throughput, row.peak_mem_mb = bench_one(
                            model, meta, kind, device, precision, batch, warmup, iters, cpu_threads)
                    except (RuntimeError, ValueError) as error:
                        row.error = str(error).splitlines()[0][:200]
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    return rows


def markdown_table(rows: list[BenchRow]) -> str:
    """Rows as a Markdown table (one line per configuration)."""
    lines = ["| model | backend | device | precision | input (HxW) | batch | params (M) | GFLOPs | p50 (ms) | "
             "p95 (ms) | images/s | peak mem (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            tail = f"failed: {r.error} | | | |"
        else:
            tail = f"{r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.throughput:.1f} | {r.peak_mem_mb:.0f} |"
        lines.append(f"| {r.model} | {r.backend} | {r.device} | {r.precision} | {r.height}x{r.width} | {r.batch} | "
                     f"{r.params_m:.2f} | {r.gflops:.2f} | {tail}")
    return "\n".join(lines) + "\n"


def plot(rows: list[BenchRow], path: Path) -> None:
    """Grouped bars of p50 latency: one panel per (size, batch), one bar per backend for each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if not r.error]
    panels = sorted({(r.height, r.width, r.batch) for r in good})
    models = list(dict.fromkeys(r.model for r in good))
    backends = list(dict.fromkeys(r.backend for r in good))
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(max(6, 1.3 * len(models) * len(backends)),
                                                              3.2 * max(1, len(panels))), squeeze=False)
    width = 0.8 / max(1, len(backends))
    for axis, (height, w, batch) in zip(axes[:, 0], panels):
        for j, kind in enumerate(backends):
            values = [next((r.p50_ms for r in good if (r.model, r.backend, r.height, r.width, r.batch)
                            == (m, kind, height, w, batch)), np.nan) for m in models]
            axis.bar(np.arange(len(models)) + j * width, values, width, label=kind)
        axis.set_xticks(np.arange(len(models)) + width * (len(backends) - 1) / 2, models, rotation=20, ha="right")
        axis.set_ylabel("p50 latency (ms)")
        axis.set_title(f"{w}x{height}, batch {batch}, {good[0].device} {good[0].precision}")
        axis.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("--models", help="comma-separated registered models (default: every student, the "
                                         "teacher and resnet18_md2)")
    parser.add_argument("--backends", default=DEFAULT_BACKENDS,
                        help=f"comma-separated among torch, torchscript, onnxruntime (default {DEFAULT_BACKENDS})")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"HEIGHTxWIDTH list (default {DEFAULT_SIZES})")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="compute precision of every configuration; fp16/bf16 fall back to fp32 where the backend "
                             "or device lacks them; default fp32")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed calls per configuration before timing (compilation, caches); default 5")
    parser.add_argument("--iters", type=int, default=30,
                        help="timed calls per configuration; p50/p95 latency are taken over these; default 30")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch and ONNX Runtime (default: their own choice)")
    parser.add_argument("--out", default="runs/bench", help="folder for bench.md, bench.json, bench.png")


def run(args: argparse.Namespace) -> int:

    try:
        models = args.models.split(",") if args.models else default_models()
        backends = [b for b in args.backends.split(",") if b]
        sizes = parse_sizes(args.sizes)
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError as error:
        print(f"kd-depth bench: {error}", file=sys.stderr)
        return 2
    print(f"benchmarking {len(models)} model(s) × {len(backends)} backend(s) × {len(sizes)} size(s) × "
          f"{len(batches)} batch size(s) on {args.device}, {args.iters} timed calls each")
    rows = run_benchmark(models, backends, sizes, batches, args.device, args.precision, args.warmup, args.iters,
                         args.threads, progress=lambda r: print(f"  {r.model} {r.backend} {r.width}x{r.height} b{r.batch}: "
                                                  + (f"failed: {r.error}" if r.error else f"p50 {r.p50_ms:.2f} ms"),
                                                  flush=True))
    table = markdown_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "bench.md", table)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
               for r in rows]
    write_text_atomic(out / "bench.json", json.dumps(records, indent=2))
    if any(not r.error for r in rows):
        plot(rows, out / "bench.png")
    print(table)
    print(f"wrote {out / 'bench.md'}, {out / 'bench.json'}, {out / 'bench.png'}")
    return 0 if all(not r.error for r in rows) else 1
