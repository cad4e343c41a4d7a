"""Pack ``cifar10.npz`` small enough to travel to a lent GPU machine, and unpack it there.

The shared CIFAR-10 copy is itself JPEG quality 75 (see ``../shared/data/README.md``), so
re-encoding every image at quality 75 with 4:2:0 subsampling is nearly idempotent (mean absolute
pixel error ~0.16 of 255, measured on 2,000 training images). Every 32x32 JPEG then has the
same 609-byte header (quantisation and Huffman tables, frame and scan headers); the pack keeps
it once and stores only each image's entropy-coded payload: ~19 MB for all 60,000 images
instead of 164 MB.

    python tools/cifar10_pack.py pack ../shared/data/cifar10.npz .gpu/cifar10_pack.npz
    python tools/cifar10_pack.py unpack .gpu/cifar10_pack.npz /tmp/cifar10.npz

The unpacked file has the keys and layout of the original (``x_train`` (50000,32,32,3) uint8,
``y_train`` int64, ``x_test``, ``y_test``, ``classes``). Raises ``SystemExit`` with a one-line
message when an image's header differs from the shared one (it cannot be packed).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

QUALITY = 75
SOS = b"\xff\xda"  # start of scan: the header ends with the scan header that follows it


def _encode(img: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(img).save(out, "JPEG", quality=QUALITY, subsampling=2)
    return out.getvalue()


def _split(data: bytes) -> tuple[bytes, bytes]:
    sos = data.index(SOS)
    end = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")  # scan header length
    return data[:end], data[end:]


def pack(src: Path, dst: Path) -> None:
    z = np.load(src)
    out: dict[str, np.ndarray] = {"classes": z["classes"]}
    header = None
    for split in ("train", "test"):
        x = z[f"x_{split}"]
        payloads = []
        for i, img in enumerate(x):
            head, body = _split(_encode(img))
            if header is None:
                header = head
            elif head != header:
                raise SystemExit(f"{src}: x_{split}[{i}] encodes with another JPEG header")
            payloads.append(np.frombuffer(body, np.uint8))
        out[f"jpeg_{split}"] = np.concatenate(payloads)
        out[f"offsets_{split}"] = np.cumsum([0] + [len(p) for p in payloads]).astype(np.int64)
        out[f"y_{split}"] = z[f"y_{split}"]
    out["header"] = np.frombuffer(header, np.uint8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, **out)
    print(f"{dst}: {dst.stat().st_size / 1e6:.1f} MB")


def unpack(src: Path, dst: Path) -> None:
    z = np.load(src)
    header = z["header"].tobytes()
    out: dict[str, np.ndarray] = {"classes": z["classes"]}
    for split in ("train", "test"):
        data, off = z[f"jpeg_{split}"], z[f"offsets_{split}"]
        out[f"x_{split}"] = np.stack([
            np.asarray(Image.open(io.BytesIO(header + data[off[i]:off[i + 1]].tobytes())))
            for i in range(len(off) - 1)])
        out[f"y_{split}"] = z[f"y_{split}"]
    np.savez(dst, **out)
    print(f"{dst}: train {out['x_train'].shape}, test {out['x_test'].shape}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["pack", "unpack"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args()
    (pack if a.action == "pack" else unpack)(a.src, a.dst)


if __name__ == "__main__":
    main()
