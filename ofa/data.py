"""Datasets behind one interface, with train / hold-out / test splits, and per-batch transforms.

Images are kept as uint8 ``(N, C, H, W)`` tensors (or an ``ImageFolder``) and transformed per
batch at the resolution sampled for that batch (one resolution per batch, as OFA does), with
torchvision's functional transforms:

- train: pad-and-crop (small images) or random-resized-crop (``imagefolder``), plus flip where
  it makes sense (never for digits);
- eval: resize to ``r / crop_ratio`` and centre crop ``r``.

The hold-out split is carved from the training set with a fixed seed (OFA keeps 10,000
ImageNet training images aside); it feeds BN recalibration and the accuracy-predictor dataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

__all__ = ["StepBatches", "train_loader", "eval_loader", "DATASETS", "ImageSplit", "Dataset",
           "load_dataset", "BatchLoader"]

from ofa import DATASETS
from ofa.errors import InputError
from ofa.lifetime import lifetime_init

_MEANS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


@dataclass
class ImageSplit:
    """One split: ``images`` uint8 ``(N, C, H, W)`` (C = 1 or 3), ``labels`` int64 ``(N,)``.

    For ``imagefolder`` ``images`` is None and ``paths`` holds the file paths.
    """

    images: Tensor | None
    labels: Tensor
    paths: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, idx: Tensor) -> ImageSplit:
        return ImageSplit(
            None if self.images is None else self.images[idx],
            self.labels[idx],
            None if self.paths is None else [self.paths[i] for i in idx.tolist()],
        )

    def get_images(self, idx: Tensor) -> list[Tensor]:
        """uint8 ``(C, H, W)`` images for indices ``idx`` (decoded from disk for folders)."""
        if self.images is not None:
            return list(self.images[idx])
        from torchvision.io import ImageReadMode, decode_image

        assert self.paths is not None
        out = []
        for i in idx.tolist():
            try:
                out.append(decode_image(self.paths[i], mode=ImageReadMode.RGB))
            except (RuntimeError, OSError) as exc:
                raise InputError(f"{self.paths[i]}: cannot decode the image "
                                 f"({str(exc).splitlines()[0][:80]}); remove or replace it"
                                 ) from None
        return out


@dataclass
class Dataset:
    """A dataset with ``train``, ``holdout`` and ``test`` splits and its transform policy."""

    name: str
    train: ImageSplit
    holdout: ImageSplit
    test: ImageSplit
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_aug: str = "padcrop"  # "padcrop" | "rrc"
    flip: bool = True
    crop_ratio: float = 1.0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> ImageSplit:
        if name not in ("train", "holdout", "test"):
            raise InputError(f"unknown split {name!r}; allowed: train, holdout, test")
        return getattr(self, name)

    def normalisation(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": 1 / 255.0}

    # --- transforms ----------------------------------------------------------------------
    def transform(self, imgs: Sequence[Tensor], r: int, train: bool,
                  generator: torch.Generator | None = None) -> Tensor:
        """uint8 ``(C, H, W)`` images -> normalised float ``(N, 3, r, r)``; the training
        augmentation draws from ``generator`` (default: torch's global RNG)."""
        g = generator
        out = []
        for img in imgs:
            if img.shape[0] == 1:
                img = img.expand(3, -1, -1)
            if train and self.train_aug == "rrc":
                i, j, h, w = _rrc_params(img.shape[-2], img.shape[-1], generator=g)
                img = TF.resized_crop(img, i, j, h, w, [r, r], antialias=True)
            elif train:
                img = TF.resize(img, [r, r], antialias=True)
                pad = max(1, r // 8)
                img = TF.pad(img, [pad, pad, pad, pad])
                i, j = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
                img = img[:, i:i + r, j:j + r]
            else:
                big = int(math.ceil(r / self.crop_ratio))
                img = TF.resize(img, [big, big], antialias=True)
                img = TF.center_crop(img, [r, r])
            if train and self.flip and torch.rand((), generator=g) < 0.5:
                img = img.flip(-1)
            out.append(img)
        x = torch.stack(out).float().div_(255.0)
        return TF.normalize(x, list(self.mean), list(self.std))


def _rrc_params(h: int, w: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                generator: torch.Generator | None = None) -> tuple[int, ...]:
    """Random-resized-crop box ``(top, left, height, width)`` (torchvision's algorithm)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(*scale, generator=generator))
        ar = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=generator)))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            i = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            j = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            return i, j, ch, cw
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


class BatchLoader:
    """Iterates ``(images, labels)`` of one split in batches at a resolution per batch.

    ``resolution`` is an int or a callable ``step -> int`` (the trainer samples it from the
    run's shared RNG so every rank uses the same one). ``rank``/``world`` shard each batch.
    Deterministic: the order of epoch ``e`` depends only on ``(seed, e)``.
    """

    def __init__(self, data: Dataset, split: str, batch_size: int, resolution, train: bool,
                 seed: int = 0, epoch: int = 0, rank: int = 0, world: int = 1,
                 start_batch: int = 0, shuffle: bool | None = None,
                 drop_last: bool | None = None, limit: int | None = None) -> None:
        self.data, self.split = data, data.split(split)
        self.batch_size, self.resolution, self.train = batch_size, resolution, train
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.start_batch = start_batch
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.limit = limit

    def _order(self) -> Tensor:
        n = len(self.split) if self.limit is None else min(self.limit, len(self.split))
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(len(self.split), generator=g)[:n]

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        for b in range(self.start_batch, len(self)):
            yield self._batch(order, b)

    def __getitem__(self, b: int) -> tuple[Tensor, Tensor]:
        """Batch ``b`` alone (what :func:`eval_loader`'s workers compute)."""
        return self._batch(self._order(), b)

    def _batch(self, order: Tensor, b: int) -> tuple[Tensor, Tensor]:
        idx = order[b * self.batch_size:(b + 1) * self.batch_size]
        idx = idx[self.rank::self.world]
        r = self.resolution(b) if callable(self.resolution) else self.resolution
        x = self.data.transform(self.split.get_images(idx), r, self.train)
        return x, self.split.labels[idx]


def eval_loader(batches: BatchLoader, workers: int = 0, pin_memory: bool = False
                ) -> Iterable[tuple[Tensor, Tensor]]:
    """The batches of an evaluation :class:`BatchLoader` (eval transforms: no randomness),
    decoded and resized by ``workers`` processes in order (0: ``batches`` itself, in this
    process). The same batches either way; used by evaluation and the predictor dataset.

    Raises:
        ValueError: ``batches`` applies training transforms (their random draws would depend
            on the worker).
    """
    if workers <= 0:
        return batches
    if batches.train:
        raise InputError("eval_loader serves evaluation transforms only")
    return torch.utils.data.DataLoader(batches, batch_size=None,
                                       sampler=range(batches.start_batch, len(batches)),
                                       num_workers=workers, pin_memory=pin_memory,
                                       prefetch_factor=4, worker_init_fn=lifetime_init())


class StepBatches(torch.utils.data.Dataset):
    """The training batches of a run as a map-style dataset over *global steps*.

    Item ``step`` is ``(images (B, 3, r, r) float, labels (B,), r)``: the epoch's seeded
    permutation gives the indices (sharded ``rank::world``), the resolution and every random
    augmentation are drawn from generators seeded by ``(seed, step)``. So a batch depends on
    nothing but the seed and its step: any number of worker processes, any resume point and
    any rank give the same batches (exact resume with workers), and decoding plus augmentation
    run in :func:`train_loader`'s workers, not between optimizer steps.
    """

    def __init__(self, data: Dataset, batch_size: int, resolutions: Sequence[int], seed: int,
                 steps_per_epoch: int, rank: int = 0, world: int = 1) -> None:
        self.data, self.batch_size, self.resolutions = data, batch_size, list(resolutions)
        self.seed, self.steps_per_epoch, self.rank, self.world = seed, steps_per_epoch, rank, world
        self._perm: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return 2**62  # steps are addressed directly; the sampler says which

    def resolution(self, step: int) -> int:
        """The batch resolution of ``step`` (OFA: one per batch, the same on every rank)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 1)
        return self.resolutions[int(torch.randint(len(self.resolutions), (1,), generator=g))]

    def indices(self, step: int) -> Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.data.train), generator=g))
        bs = self.batch_size
        return self._perm[1][b * bs:(b + 1) * bs][self.rank::self.world]

    def __getitem__(self, step: int) -> tuple[Tensor, Tensor, int]:
        idx, r = self.indices(step), self.resolution(step)
        g = torch.Generator().manual_seed((self.seed + 7) * 2_000_003 + step)
        x = self.data.transform(self.data.train.get_images(idx), r, train=True, generator=g)
        return x, self.data.train.labels[idx], r


def train_loader(batches: StepBatches, start: int, stop: int, workers: int = 0,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Steps ``start .. stop - 1`` of ``batches`` in order, prepared by ``workers`` processes
    (0: in this process) with prefetching, persistent workers and pinned memory (for CUDA)."""
    kw: dict = {"num_workers": workers, "pin_memory": pin_memory}
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=lifetime_init())
    # its own generator: a DataLoader iterator draws a seed, which must not move the global
    # RNG (dropout draws from it; a resumed run must see the same stream)
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop),
                                       generator=torch.Generator().manual_seed(batches.seed),
                                       **kw)


# --- loading ---------------------------------------------------------------------------------
def _from_arrays(x: np.ndarray, y: np.ndarray) -> ImageSplit:
    """NHWC or NHW uint8 numpy -> ImageSplit (NCHW tensors)."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.dtype != np.uint8:
        raise InputError(f"expected uint8 images (N,H,W[,C]), got {x.dtype} {x.shape}")
    return ImageSplit(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                      torch.from_numpy(np.asarray(y).astype(np.int64)).reshape(-1))


def _carve_holdout(train: ImageSplit, size: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    return train.subset(perm[size:].sort().values), train.subset(perm[:size].sort().values)


def _load_digits(seed: int) -> tuple[ImageSplit, ImageSplit, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    y = d.target.astype(np.int64)
    g = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(len(y), generator=g).numpy()
    n_test = len(y) // 5
    test, train = perm[:n_test], np.sort(perm[n_test:])
    return (_from_arrays(x[train], y[train]), _from_arrays(x[np.sort(test)], y[np.sort(test)]),
            [str(i) for i in range(10)])


_NPZ_NAMES = {"cifar10": "cifar10.npz", "mnist": "mnist.npz", "fashion-mnist": "fashion_mnist.npz",
              "cifar100": "cifar100.npz"}


def _load_npz(path: Path) -> tuple[ImageSplit, ImageSplit, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise InputError(f"{path}: .npz lacks arrays {sorted(missing)}")
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
            tr = _from_arrays(z["x_train"], z["y_train"])
            te = _from_arrays(z["x_test"], z["y_test"])
    except InputError:
        raise
    except (OSError, EOFError, ValueError) as exc:  # numpy: not an .npz, or a pickled one
        raise InputError(f"{path}: cannot read .npz ({str(exc).splitlines()[0]})") from None
    n = int(tr.labels.max()) + 1
    return tr, te, classes or [str(i) for i in range(n)]


Splits = tuple[ImageSplit, ImageSplit, list[str]]


def _load_torchvision(name: str, root: Path, download: bool) -> Splits:
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST,
           "fashion-mnist": tvd.FashionMNIST}[name]
    try:
        tr, te = (cls(str(root), train=t, download=download) for t in (True, False))
    except RuntimeError as exc:
        raise InputError(f"{name}: not found under {root} ({exc}); pass --data with a local "
                         "copy (.npz or torchvision folder)") from None

    def conv(ds) -> ImageSplit:
        x = ds.data.numpy() if isinstance(ds.data, Tensor) else np.asarray(ds.data)
        return _from_arrays(x.astype(np.uint8), np.asarray(ds.targets))

    return conv(tr), conv(te), list(tr.classes)


def _load_imagefolder(root: Path) -> tuple[ImageSplit, ImageSplit, list[str]]:
    from torchvision.datasets import ImageFolder

    def split(p: Path) -> tuple[ImageSplit, list[str]]:
        ds = ImageFolder(str(p))
        return ImageSplit(None, torch.tensor(ds.targets, dtype=torch.int64),
                          [s[0] for s in ds.samples]), ds.classes

    if not (root / "train").is_dir():
        raise InputError(f"{root}: imagefolder needs {root}/train/<class>/*.jpg "
                         "(and optionally val/ or test/)")
    tr, classes = split(root / "train")
    for name in ("val", "test"):
        if (root / name).is_dir():
            te, _ = split(root / name)
            return tr, te, classes
    tr, te = _carve_holdout(tr, max(1, len(tr) // 10), seed=12345)
    return tr, te, classes


def load_dataset(name: str, data: str | Path | None = None, holdout: int | None = None,
                 seed: int = 0, download: bool = False) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`) with a hold-out split carved from train.

    ``data``: a ``.npz`` file (keys ``x_train y_train x_test y_test [classes]``), a folder
    holding one (``cifar10.npz``...), a torchvision dataset root, or an ImageFolder tree.
    ``holdout``: hold-out size (default 10% of train, at most 10,000).

    Raises:
        ValueError: unknown dataset, missing or malformed data (one line, names the path).
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; allowed: {list(DATASETS)}")
    path = Path(data).expanduser() if data else None
    if path is not None and not path.exists():
        raise InputError(f"--data {path} does not exist")
    kw: dict = {}
    if name == "digits":
        if path is not None:
            raise InputError(f"--data {path}: the digits dataset is built in (scikit-learn) and "
                             "reads no files; pick the dataset of that file with --dataset")
        train, test, classes = _load_digits(seed)
        kw = {"flip": False, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    elif name == "imagefolder":
        if path is None:
            raise InputError("imagefolder needs --data DIR (an ImageFolder tree with train/)")
        train, test, classes = _load_imagefolder(path)
        mean, std = _MEANS["imagenet"]
        kw = {"train_aug": "rrc", "crop_ratio": 0.875, "mean": mean, "std": std}
    else:
        if path is not None and path.is_dir() and (path / _NPZ_NAMES[name]).exists():
            path = path / _NPZ_NAMES[name]
        if path is not None and path.suffix == ".npz":
            train, test, classes = _load_npz(path)
        else:
            root = path or Path("~/.cache/ofa-edge/data").expanduser()
            train, test, classes = _load_torchvision(name, root, download)
        gray = name in ("mnist", "fashion-mnist")
        kw = {"flip": not gray and name != "mnist", "mean": (0.5,) * 3, "std": (0.5,) * 3}
        if not gray:
            kw["mean"], kw["std"] = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)
    size = holdout if holdout is not None else min(10000, len(train) // 10)
    if not 0 < size < len(train):
        raise InputError(f"hold-out size {size} must be between 1 and {len(train) - 1}")
    train, hold = _carve_holdout(train, size, seed=seed + 7)
    return Dataset(name, train, hold, test, classes, **kw)
