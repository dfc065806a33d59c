"""Checks that tensor images made by Python's torch.save go through pconv and come back.

    check_tensor_images.py PCONV WORK_DIR

Writes a 16-bit grey picture (int32, as scripts/photos_to_tensors.py writes 16-bit photos), an
8-bit RGB one (uint8) and a mask (uint8) with torch.save, inpaints both with PCONV, and loads the
results with torch.load: the same type and shape, the known pixels unchanged, the hole filled.
Exit codes: 0 all hold, 1 one does not, 77 this Python has no torch (CTest: skipped).
"""
import os
import subprocess
import sys

try:
    import torch
except ImportError:
    print("skipped: this Python cannot import torch")
    sys.exit(77)


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    pconv, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    y = torch.linspace(0, 1, 48).view(48, 1)
    x = torch.linspace(0, 1, 40).view(1, 40)
    smooth = 0.2 + 0.5 * y * x + 0.2 * torch.sin(5 * x)
    pictures = {
        "grey16": (smooth * 65535).round().to(torch.int32),  # (H, W)
        "rgb8": (smooth.unsqueeze(2).expand(48, 40, 3) * 255).round().to(torch.uint8).contiguous(),
    }
    holes = torch.zeros(48, 40, dtype=torch.bool)
    holes[12:30, 10:25] = True
    torch.save((holes.to(torch.uint8) * 255), os.path.join(work, "mask.pt"))
    for name, picture in pictures.items():
        source = os.path.join(work, name + ".pt")
        result = os.path.join(work, name + ".out.pt")
        torch.save(picture, source)
        command = [pconv, "inpaint", source, os.path.join(work, "mask.pt"), "-o", result]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            fail(f"pconv inpaint {source} exited {run.returncode}: {run.stderr.strip()}")
        out = torch.load(result)
        expected = picture  # the same dtype and shape: grey (H, W) comes back as (H, W)
        if out.dtype != picture.dtype or out.shape != expected.shape:
            fail(f"{name}: {out.dtype} {tuple(out.shape)}, expected {picture.dtype} "
                 f"{tuple(expected.shape)}")
        if not torch.equal(out[~holes], expected[~holes]):
            fail(f"{name}: known pixels changed")
        if torch.equal(out[holes], expected[holes]) or (out[holes] == 0).all():
            fail(f"{name}: the hole was not filled")
        print(f"{name}: {out.dtype} {tuple(out.shape)} read, inpainted and read back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
