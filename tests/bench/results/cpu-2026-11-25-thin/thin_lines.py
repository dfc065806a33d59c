"""Hole-pixel error of pconv and OpenCV's Telea on straight lines of one width at a time.

For each of the first 12 validation photos (sorted by name, centre crop of at most 512x512)
and each width, six random lines (seeded by the photo's index) make the mask; pconv inpaint
(the model given, default options) and cv2.inpaint(TELEA, radius 3) fill it; the mean
absolute error over the hole pixels (8-bit levels, all channels) and pconv's mean signed
error (negative: darker than the photo) are printed per width.

    python thin_lines.py PCONV MODEL PHOTO_DIR WORK_DIR [WIDTHS [PCONV_OPTION...]]

Needs numpy and OpenCV for Python (here: pip install opencv-python-headless numpy in a
throw-away venv; pconv itself does not use them).
"""
import glob
import os
import subprocess
import sys

import cv2
import numpy as np

pconv, model, photo_dir, work = sys.argv[1:5]
widths = [int(w) for w in sys.argv[5].split(",")] if len(sys.argv) > 5 else [1, 2, 3, 5, 8, 12]
extra = sys.argv[6:]  # e.g. --thin-hole-growth 0
os.makedirs(work, exist_ok=True)
photos = sorted(glob.glob(os.path.join(photo_dir, "*")))[:12]
errors = {w: ([], [], []) for w in widths}
for i, path in enumerate(photos):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    h, w0 = image.shape[:2]
    side = min(h, w0, 512)
    image = image[(h - side) // 2:(h - side) // 2 + side, (w0 - side) // 2:(w0 - side) // 2 + side]
    photo = os.path.join(work, f"p{i}.png")
    cv2.imwrite(photo, image)
    rng = np.random.default_rng(i)
    truth = image.astype(float)
    for width in widths:
        mask = np.zeros((side, side), np.uint8)
        for _ in range(6):
            a = tuple(int(v) for v in rng.integers(0, side, 2))
            b = tuple(int(v) for v in rng.integers(0, side, 2))
            cv2.line(mask, a, b, 255, width)
        mask_path = os.path.join(work, f"m{i}_{width}.png")
        out_path = os.path.join(work, f"o{i}_{width}.png")
        cv2.imwrite(mask_path, mask)
        subprocess.run([pconv, "inpaint", photo, mask_path, "--model", model, "-o", out_path, "-q"] + extra,
                       check=True, stdout=subprocess.DEVNULL)
        out = cv2.imread(out_path).astype(float)
        telea = cv2.inpaint(image, mask, 3, cv2.INPAINT_TELEA).astype(float)
        hole = mask > 0
        errors[width][0].append(np.abs(out - truth)[hole].mean())
        errors[width][1].append(np.abs(telea - truth)[hole].mean())
        errors[width][2].append((out - truth)[hole].mean())
print("| line width (px) | pconv L1 | Telea L1 | pconv mean error |")
print("| ---: | ---: | ---: | ---: |")
for width in widths:
    pc, te, bias = (np.mean(v) for v in errors[width])
    print(f"| {width} | {pc:.2f} | {te:.2f} | {bias:+.2f} |")
