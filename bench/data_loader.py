"""Training-data throughput: our loader (ofa.data.StepBatches + train_loader) beside
torchvision's reference pipeline, on a folder of JPEGs, at 0, 1 and 2 worker processes.

The JPEG ImageFolder is built once (not committed) from ``../shared/data/cifar10.npz``: the
first N training images upscaled to 256 px and JPEG-encoded into 10 class folders. Both
pipelines decode, random-resized-crop to 224 px, flip and normalise batches of 128.

    python bench/data_loader.py [--images 10000] [--batches 20] [--folder runs/bench_jpeg]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT.parent / "shared" / "data" / "cifar10.npz"


def _write_images(job: tuple[Path, np.ndarray, np.ndarray, int]) -> None:
    from PIL import Image

    folder, x, y, first = job
    for i in range(len(x)):
        img = Image.fromarray(x[i]).resize((256, 256), Image.BILINEAR)
        img.save(folder / "train" / f"c{int(y[i])}" / f"{first + i:05d}.jpg", quality=90)


def build_folder(folder: Path, n: int, npz: Path = NPZ, procs: int = 1) -> None:
    """``folder/train/<class>/<i>.jpg``: the first ``n`` CIFAR-10 training images of ``npz``
    at 256 px, written by ``procs`` processes."""
    from multiprocessing import Pool

    done = folder / "train" / ".complete"
    if done.exists():
        return
    z = np.load(npz)
    x, y = z["x_train"][:n], z["y_train"][:n]
    for c in range(10):
        (folder / "train" / f"c{c}").mkdir(parents=True, exist_ok=True)
    step = -(-n // procs)
    jobs = [(folder, x[i:i + step], y[i:i + step], i) for i in range(0, n, step)]
    if procs > 1:
        with Pool(procs) as pool:
            pool.map(_write_images, jobs)
    else:
        _write_images(jobs[0])
    done.write_text("ok\n")


def ours(folder: Path, workers: int, batches: int, batch: int = 128) -> float:
    from ofa.data import StepBatches, load_dataset, train_loader

    data = load_dataset("imagefolder", folder, seed=0)
    b = StepBatches(data, batch, [224], seed=0, steps_per_epoch=len(data.train) // batch)
    it = iter(train_loader(b, 0, batches + 2, workers))
    next(it)  # workers started, first batch ready
    t = time.perf_counter()
    n = sum(x.shape[0] for x, _, _ in it)
    return n / (time.perf_counter() - t)


def reference(folder: Path, workers: int, batches: int, batch: int = 128) -> float:
    from torchvision import datasets
    from torchvision.transforms import v2

    tf = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(224, antialias=True),
                     v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(str(folder / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)[0].shape[0]
    return n / (time.perf_counter() - t)


def train_speed(folder: Path, workers: int, steps: int, out: Path) -> dict:
    """``ofa train`` (mbv3-w1.0 at 128 px, batch 64, DεpS's first phase: the full network)
    for ``steps`` steps: training images/s and the share of wall time spent waiting for data."""
    import shutil

    from ofa.train.run import TrainConfig
    from ofa.train.trainer import Trainer

    shutil.rmtree(out, ignore_errors=True)
    t = Trainer(TrainConfig(out=str(out), space="mbv3-w1.0", space_overrides={
        "resolutions": [128]}, dataset="imagefolder", data=str(folder), schedule="deps",
        epochs=10, batch_size=64, eval_images=0, workers=workers, max_steps=steps + 2,
        device="cpu"))
    t.run()  # two warm-up steps are in the count below too: the first waits for the workers
    start = time.perf_counter()
    t2 = Trainer(TrainConfig(out=str(out), space="mbv3-w1.0", space_overrides={
        "resolutions": [128]}, dataset="imagefolder", data=str(folder), schedule="deps",
        epochs=10, batch_size=64, eval_images=0, workers=workers, max_steps=2 * steps + 2,
        device="cpu"), resume=True)
    t2.run()
    wall = time.perf_counter() - start
    return {"workers": workers, "steps": steps, "train_img_s": steps * 64 / wall,
            "data_wait_frac": t2.data_wait / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--folder", default=str(ROOT / "runs" / "bench_jpeg"))
    ap.add_argument("--train-steps", type=int, default=30, help="0 skips the training run")
    args = ap.parse_args()
    if not NPZ.exists():
        print(f"skipped: {NPZ} is absent")
        return
    torch.set_num_threads(1)  # the loaders' work, not intra-op threads, is what is compared
    folder = Path(args.folder)
    t = time.perf_counter()
    build_folder(folder, args.images)
    print(f"JPEG folder {folder}: {args.images} images ({time.perf_counter() - t:.0f} s)")
    rows = []
    for w in (0, 1, 2):
        rows.append({"workers": w, "ours_img_s": ours(folder, w, args.batches),
                     "torchvision_img_s": reference(folder, w, args.batches)})
        rows[-1]["ratio"] = rows[-1]["ours_img_s"] / rows[-1]["torchvision_img_s"]
        print_table(rows[-1:])
    print()
    print_table(rows)
    train = [train_speed(folder, w, args.train_steps, ROOT / "runs" / f"bench_loader_w{w}")
             for w in (0, 2)] if args.train_steps else []
    print()
    print_table(train)
    write_json("data_loader", {"setting": f"{args.images} CIFAR-10 JPEGs at 256 px, rrc 224, "
                               "batch 128", "rows": rows, "train": train})


if __name__ == "__main__":
    main()
