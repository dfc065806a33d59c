"""Checks a TorchScript file written by `pconv export` in Python, the way its users run it.

    check_torchscript.py MODEL_TS REFERENCE_PT

REFERENCE_PT (from pconv_export_reference) holds the tuple (image, mask, output, output_mask):
an input and pconv's own output for it. Exit codes: 0 the module matches, 1 it does not, 77 this Python has no
torch (CTest reports the test as skipped).
"""
import json
import sys

try:
    import torch
except ImportError:
    print("skipped: this Python cannot import torch")
    sys.exit(77)

TOLERANCE = 1e-5


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    model_path, reference_path = sys.argv[1], sys.argv[2]
    extra_files = {"pconv.json": ""}
    net = torch.jit.load(model_path, map_location="cpu", _extra_files=extra_files).eval()
    image, mask, expected, expected_mask = torch.load(reference_path)

    with torch.no_grad():
        output, output_mask = net(image, mask)
        # One mask for the whole batch must broadcast as in pconv.
        shared_output, _ = net(image, mask[:1])
        repeated_output, _ = net(image, mask[:1].expand_as(mask).contiguous())
    difference = (output - expected).abs().max().item()
    print(f"torch {torch.__version__}: {image.shape[0]} images {tuple(image.shape[2:])}, "
          f"largest difference from pconv {difference:.3g}")
    if output.shape != expected.shape or output.dtype != expected.dtype:
        fail(f"output is {output.dtype} {tuple(output.shape)}; pconv gives "
             f"{expected.dtype} {tuple(expected.shape)}")
    if not difference < TOLERANCE:
        fail(f"output differs from pconv's by {difference} (tolerance {TOLERANCE})")
    if not torch.equal(output_mask, expected_mask):
        fail("output_mask differs from pconv's")
    if shared_output.shape != output.shape or not torch.allclose(
            shared_output, repeated_output, rtol=0, atol=TOLERANCE):
        fail("a batch-1 mask is not shared by the whole batch")
    if (output - image).abs().max().item() < 0.01:
        fail("the output is the input: the fixture is too weak to compare anything")

    try:
        net(image[:, :, :20], mask[:, :, :20])
        fail("an image whose size is not a multiple of 2^depth was accepted")
    except torch.jit.Error as error:
        if "multiples of" not in str(error):
            fail(f"unclear error for a bad image size: {error}")

    metadata = json.loads(extra_files["pconv.json"])
    architecture = metadata["architecture"]
    if architecture["name"] != "PConvUNet" or architecture["size_multiple"] != 2 ** architecture[
            "depth"]:
        fail(f"pconv.json has a wrong architecture: {architecture}")
    names = {name for name, _ in net.named_parameters()}
    if "encoder1.weight" not in names or "decoder1.bias" not in names:
        fail(f"parameter names differ from pconv's: {sorted(names)}")
    print("ok: torch.jit.load runs the exported model and matches pconv")


if __name__ == "__main__":
    main()
