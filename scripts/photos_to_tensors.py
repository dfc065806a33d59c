#!/usr/bin/env python3
"""Decodes a folder of photos into tensor images (.pt) that any pconv build reads, OpenCV or not.

A tensor image is one uint8 tensor (H, W[, C]) in RGB order, int32 for 16-bit samples, saved
with torch.save; pconv reads it wherever it reads images. This is how a machine without OpenCV
for C++ (the lent GPU machine) trains: its Python has torch and pillow.

    photos_to_tensors.py SRC_DIR DST_DIR    (the folder structure is kept; .pt replaces the suffix)
"""
import concurrent.futures
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def convert(src: Path, dst: Path) -> str:
    with Image.open(src) as image:
        if image.mode in ("I;16", "I;16B", "I;16L"):
            # int32, not uint16: torch.save writes uint16 in a form LibTorch cannot read.
            tensor = torch.from_numpy(np.asarray(image, dtype=np.uint16).astype(np.int32))
        else:
            if image.mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(tensor.contiguous(), tmp)
    os.replace(tmp, dst)
    return f"{src} -> {dst} {tuple(tensor.shape)}"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src_dir, dst_dir = Path(sys.argv[1]), Path(sys.argv[2])
    sources = sorted(p for p in src_dir.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not sources:
        print(f"{src_dir}: no photos", file=sys.stderr)
        return 3
    failed = 0
    with concurrent.futures.ProcessPoolExecutor() as pool:
        jobs = {pool.submit(convert, s, dst_dir / s.relative_to(src_dir).with_suffix(".pt")): s
                for s in sources}
        for job in concurrent.futures.as_completed(jobs):
            try:
                job.result()
            except Exception as error:  # one bad photo is reported, the rest converted
                failed += 1
                print(f"{jobs[job]}: {error}", file=sys.stderr)
    print(f"{len(sources) - failed} of {len(sources)} photos written to {dst_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
