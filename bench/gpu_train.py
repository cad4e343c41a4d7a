"""Training on a GPU: throughput at fp32 and bf16 on a JPEG folder, and a CIFAR-10 supernet
trained for a wall-time budget.

``throughput``: ``ofa train --device cuda`` (the :class:`ofa.train.trainer.Trainer` in this
process) on an ImageFolder of CIFAR-10 images upscaled to 256 px (built with
``bench/data_loader.py``'s ``build_folder``), ``mbv3-w1.0`` at 224 px, batch 256, DεpS's
first phase (the full network), for each autocast dtype. The first epoch is a warm-up; over the
remaining epochs it reports training images/s (from ``metrics.jsonl``), the share of wall time
the step loop waited for a batch, GPU utilisation (``nvidia-smi`` sampled every 200 ms while
those epochs ran) and peak GPU memory. The loader alone (ours beside torchvision's reference
pipeline) is measured at the same worker count.

``sandwich``: seconds per DεpS sandwich step from the first step on, for one convolution
layout (``--variant``; see :func:`sandwich`).

``cifar``: DεpS on CIFAR-10 (``mbv3-cifar``) on the GPU for as many epochs as fit in
``--minutes`` (from :meth:`Trainer.estimate_epoch_seconds`), to ``--out``.

    python bench/gpu_train.py throughput --npz cifar10.npz --folder /tmp/jpeg --workers 15
    python bench/gpu_train.py cifar --npz cifar10.npz --minutes 4 --out /tmp/c10
    python bench/gpu_train.py sandwich --npz cifar10.npz --variant cudnn --batch-size 512

Writes ``bench/results/gpu_train_<action>.json`` (or ``--json``) and prints a table. Needs a
CUDA GPU; says so and exits 0 without one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402


class GpuSampler:
    """``nvidia-smi`` utilisation (%) and memory (MiB) every 200 ms, each sample tagged with
    the number of lines ``metrics.jsonl`` had then (so samples can be kept per epoch)."""

    def __init__(self, metrics: Path) -> None:
        self.metrics, self.samples = metrics, []
        if shutil.which("nvidia-smi") is None:  # a CPU dry run of this script
            self.proc = None
            return
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
             "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _lines(self) -> int:
        try:
            return len(self.metrics.read_text().splitlines())
        except OSError:
            return 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((self._lines(), util, mem))

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        self.proc.wait()
        self.thread.join(timeout=2)


def throughput(args: argparse.Namespace) -> dict:
    from data_loader import build_folder, ours, reference

    from ofa.train.run import TrainConfig
    from ofa.train.trainer import Trainer

    folder, cuda = Path(args.folder), args.device.startswith("cuda")
    t = time.perf_counter()
    build_folder(folder, args.images, npz=Path(args.npz), procs=args.workers + 1)
    print(f"JPEG folder {folder}: {args.images} images ({time.perf_counter() - t:.0f} s)",
          flush=True)
    nb = max(1, int(args.images * 0.9) // args.batch_size - 2)  # one epoch of either loader
    loader = {"workers": args.workers, "batches": nb,
              "ours_img_s": ours(folder, args.workers, nb, batch=args.batch_size),
              "torchvision_img_s": reference(folder, args.workers, nb, batch=args.batch_size)}
    print_table([loader])
    rows = []
    for prec in args.precisions.split(","):
        out = Path(args.runs) / f"tp_{prec}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = TrainConfig(out=str(out), space=args.space,
                          space_overrides={"resolutions": [args.resolution]},
                          dataset="imagefolder", data=str(folder), schedule="deps",
                          epochs=20, batch_size=args.batch_size, eval_images=0,
                          workers=args.workers, device=args.device, autocast=prec)
        trainer = Trainer(cfg)
        cfg.max_steps = (args.epochs + 1) * trainer.steps_per_epoch
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sampler = GpuSampler(out / "metrics.jsonl")
        start = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - start
        sampler.stop()
        log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        timed = log[1:]  # epoch 1 warms up (workers start, cuDNN picks algorithms)
        images = len(timed) * trainer.steps_per_epoch * args.batch_size
        seconds = sum(trainer.steps_per_epoch * args.batch_size / e["images_per_s"]
                      for e in timed)
        util = [u for n, u, _ in sampler.samples if 1 <= n < len(log)]
        rows.append({
            "precision": prec, "img_s": images / seconds,
            "data_wait_frac": (log[-1]["data_wait_s"] - log[0]["data_wait_s"]) / seconds,
            "gpu_util_mean": sum(util) / max(1, len(util)), "util_samples": len(util),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
            "epochs_timed": len(timed), "wall_s": wall})
        print_table(rows[-1:])
        sys.stdout.flush()
    print()
    print_table(rows)
    return {"setting": f"{args.space} @{args.resolution} px, batch {args.batch_size}, "
            f"{args.workers} workers, {args.images} JPEGs (256 px), DεpS phase 1",
            "gpu": torch.cuda.get_device_name() if cuda else "none", "loader": loader,
            "rows": rows}


def cifar(args: argparse.Namespace) -> dict:
    import tempfile

    from ofa.train.run import TrainConfig
    from ofa.train.trainer import Trainer

    def config(out: str, epochs: float) -> TrainConfig:
        return TrainConfig(out=out, space="mbv3-cifar", dataset="cifar10", data=args.npz,
                           schedule="deps", epochs=epochs, batch_size=args.batch_size,
                           lr_scale=args.lr_scale, seed=0, eval_images=2000,
                           workers=args.workers, device=args.device,
                           autocast=args.precisions.split(",")[0], ckpt_every=200)

    with tempfile.TemporaryDirectory() as tmp:
        probe = Trainer(config(tmp, 1.0))
        probe.estimate_epoch_seconds(steps=3)  # warm-up: cuDNN, allocator, every phase
        sec = probe.estimate_epoch_seconds(steps=10)
    epochs = max(0.01, round(args.minutes * 60 / sec, 2))
    print(f"probe: {sec:.1f} s per epoch -> {epochs:g} epochs in {args.minutes:g} min",
          flush=True)
    start = time.perf_counter()
    info = Trainer(config(args.out, epochs)).run()
    log = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text()
           .splitlines()]
    return {"probe_s_per_epoch": sec, "epochs": epochs, "wall_s": time.perf_counter() - start,
            "phase_ends": [e for e in log if "phase_end" in e],
            "images_per_s": {e["phase"]: e["images_per_s"] for e in log if "images_per_s" in e},
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "batch_size": args.batch_size,
            "global_steps": info["global_steps"], "train_seconds": info["train_seconds"]}


def sandwich(args: argparse.Namespace) -> dict:
    """Seconds per DεpS sandwich step (largest + smallest + 2 random subnets) on CIFAR-10,
    step by step from the first, with ``--variant``: ``auto`` (:func:`ofa.device.
    conv_memory_format`'s choice) or ``cudnn`` (channels-last, depthwise on cuDNN: the
    layout that met cuDNN's per-shape plans). Run each variant in its own process."""
    import tempfile

    from ofa.train.run import TrainConfig
    from ofa.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(TrainConfig(out=tmp, space="mbv3-cifar", dataset="cifar10", data=args.npz,
                                schedule="deps", epochs=8, batch_size=args.batch_size,
                                eval_images=0, device=args.device,
                                autocast=args.precisions.split(",")[0]))
        if args.variant == "cudnn":
            if hasattr(torch.backends.cudnn, "depthwise_kernel"):
                torch.backends.cudnn.depthwise_kernel = "cudnn"
            t.layout = torch.channels_last
            t._nhwc()
        times = t.time_steps(len(t.schedule.phases) - 1, args.steps)  # the shrink phase
        for k, sec in enumerate(times):
            print(f"step {k + 1}: {sec:.3f} s")
    tenth = max(1, len(times) // 10)
    return {"variant": args.variant, "layout": str(t.layout), "steps": len(times),
            "first_s": times[0], "first_tenth_mean_s": sum(times[:tenth]) / tenth,
            "last_tenth_mean_s": sum(times[-tenth:]) / tenth,
            "depthwise_kernel": getattr(torch.backends.cudnn, "depthwise_kernel", "n/a"),
            "torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["throughput", "cifar", "sandwich"])
    ap.add_argument("--npz", required=True, help="CIFAR-10 .npz (e.g. ../shared/data)")
    ap.add_argument("--folder", default="/tmp/bench_jpeg", help="JPEG folder (built once)")
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--space", default="mbv3-w1.0")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up one")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--runs", default="/tmp/gpu_runs")
    ap.add_argument("--lr-scale", type=float, default=1.0,
                    help="cifar: multiplies the schedule's lr (batch 512 for a few epochs: "
                    "0.35; 1.0 diverged, its warm-up is a few steps long)")
    ap.add_argument("--minutes", type=float, default=4.0, help="cifar: training wall budget")
    ap.add_argument("--out", default="/tmp/c10", help="cifar: run folder")
    ap.add_argument("--variant", default="auto", choices=["auto", "cudnn"],
                    help="sandwich: the convolution layout (see sandwich())")
    ap.add_argument("--steps", type=int, default=60, help="sandwich: steps to time")
    ap.add_argument("--device", default="cuda", help="cuda (cpu: a dry run of the script)")
    ap.add_argument("--json", help="result file (default bench/results/gpu_train_<action>.json)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA GPU is visible here")
        return
    res = {"throughput": throughput, "cifar": cifar, "sandwich": sandwich}[args.action](args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    else:
        write_json(f"gpu_train_{args.action}", res)
    print(json.dumps(res)[:2000])


if __name__ == "__main__":
    main()
