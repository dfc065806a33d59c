// Image quality metrics for inpainting results: PSNR, SSIM and mean absolute error, per image,
// on tensors in [0, 1].
#pragma once

#include <torch/types.h>

namespace pconv::eval {

/// Peak signal-to-noise ratio in dB for peak 1, per image: (N, C, H, W) -> (N). Identical
/// images give +inf.
torch::Tensor psnr(const torch::Tensor& image, const torch::Tensor& truth);

/// Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
/// dynamic range 1), averaged over channels and valid window positions, per image: (N).
torch::Tensor ssim(const torch::Tensor& image, const torch::Tensor& truth);

/// Mean absolute error per image: (N).
torch::Tensor l1_error(const torch::Tensor& image, const torch::Tensor& truth);

}  // namespace pconv::eval
