# The corners of a rectangular hole in a flat picture, filled by the default model with every
# hole widened by 0..3 pixels for the network (pconv inpaint --hole-growth N, the experiment's
# option). Run from an empty folder with the project's .venv python:
#   .venv/bin/python corners.py PCONV_BINARY
import subprocess
import sys

import torch

pconv = sys.argv[1]
image = torch.empty(256, 256, 3, dtype=torch.uint8)
image[...] = torch.tensor([200, 120, 60], dtype=torch.uint8)
torch.save(image, "flat.pt")
holes = torch.zeros(256, 256, dtype=torch.uint8)
holes[80:150, 60:160] = 255  # a 70 x 100 hole
torch.save(holes, "mask.pt")
inside = holes.bool()
colour = torch.tensor([200.0, 120.0, 60.0])
for growth in range(4):
    out = f"out{growth}.pt"
    subprocess.run([pconv, "-q", "inpaint", "flat.pt", "mask.pt", "-o", out, "--strategy", "full",
                    "--hole-growth", str(growth)], check=True, stdout=subprocess.DEVNULL)
    filled = torch.load(out).int()
    error = (filled.float() - colour).abs().mean(-1)[inside]
    print(f"growth {growth}: corner {filled[80, 60].tolist()}, centre {filled[115, 110].tolist()}, "
          f"mean error {error.mean().item():.2f}, largest {error.max().item():.0f} levels")
