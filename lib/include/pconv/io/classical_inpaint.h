// The classical inpainting that OpenCV gives everyone (cv::inpaint: Telea's fast marching and
// the Navier-Stokes method), as the baselines pconv is measured against. OpenCV stays in io/.
#pragma once

#include <torch/types.h>

namespace pconv::io {

enum class ClassicalMethod { kTelea, kNavierStokes };

/// Whether this build has the classical methods (it has them when built with OpenCV).
bool classical_inpaint_available();

/// Fills `holes` ((H, W), non-zero = hole) of `image` ((3, H, W) float in [0, 1], RGB) with
/// cv::inpaint on its 8-bit version, neighbourhood `radius` pixels. Returns (3, H, W) float;
/// the known pixels are the input's quantised to 8 bits. Throws pconv::Error in a build
/// without OpenCV.
torch::Tensor classical_inpaint(const torch::Tensor& image, const torch::Tensor& holes,
                                ClassicalMethod method, double radius = 3.0);

}  // namespace pconv::io
