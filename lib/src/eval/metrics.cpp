#include "pconv/eval/metrics.h"

#include "../check_argument.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <vector>

namespace pconv::eval {
namespace {

void check_pair(const torch::Tensor& image, const torch::Tensor& truth, const char* metric) {
  PCONV_CHECK_ARGUMENT(image.dim() == 4 && image.sizes() == truth.sizes(), metric, ": image ",
                       image.sizes(), " and truth ", truth.sizes(),
                       " must be the same (N, C, H, W)");
}

}  // namespace

torch::Tensor psnr(const torch::Tensor& image, const torch::Tensor& truth) {
  check_pair(image, truth, "psnr");
  const auto mse = (image.to(at::kDouble) - truth.to(at::kDouble)).pow(2).mean({1, 2, 3});
  return -10.0 * at::log10(mse);
}

torch::Tensor ssim(const torch::Tensor& image, const torch::Tensor& truth) {
  check_pair(image, truth, "ssim");
  constexpr int64_t kWindow = 11;
  constexpr double kSigma = 1.5;
  constexpr double kC1 = 0.01 * 0.01;
  constexpr double kC2 = 0.03 * 0.03;
  PCONV_CHECK_ARGUMENT(image.size(2) >= kWindow && image.size(3) >= kWindow,
                       "ssim: images must be at least 11x11; got ", image.size(2), "x",
                       image.size(3));
  const auto x = image.to(at::kDouble);
  const auto y = truth.to(at::kDouble);
  const int64_t channels = x.size(1);
  const auto coords = at::arange(kWindow, x.options()) - static_cast<double>(kWindow - 1) / 2.0;
  auto gauss = at::exp(-coords.pow(2) / (2 * kSigma * kSigma));
  gauss = gauss / gauss.sum();
  // The Gaussian window is separable: a column pass and a row pass (22 taps a pixel instead of
  // 121), over the five planes at once (x, y, x^2, y^2, xy for every channel).
  const auto column = gauss.view({1, 1, kWindow, 1}).expand({5 * channels, 1, kWindow, 1});
  const auto row = gauss.view({1, 1, 1, kWindow}).expand({5 * channels, 1, 1, kWindow});
  const std::vector<int64_t> ones{1, 1};
  const std::vector<int64_t> zeros{0, 0};
  const auto planes = at::cat({x, y, x * x, y * y, x * y}, 1);
  const auto filtered = at::conv2d(at::conv2d(planes, column.contiguous(), at::Tensor(), ones,
                                              zeros, ones, 5 * channels),
                                   row.contiguous(), at::Tensor(), ones, zeros, ones, 5 * channels)
                            .split(channels, 1);
  const auto& mu_x = filtered[0];
  const auto& mu_y = filtered[1];
  const auto sigma_xx = filtered[2] - mu_x * mu_x;
  const auto sigma_yy = filtered[3] - mu_y * mu_y;
  const auto sigma_xy = filtered[4] - mu_x * mu_y;
  const auto map = ((2 * mu_x * mu_y + kC1) * (2 * sigma_xy + kC2)) /
                   ((mu_x * mu_x + mu_y * mu_y + kC1) * (sigma_xx + sigma_yy + kC2));
  return map.mean({1, 2, 3});
}

torch::Tensor l1_error(const torch::Tensor& image, const torch::Tensor& truth) {
  check_pair(image, truth, "l1_error");
  return (image.to(at::kDouble) - truth.to(at::kDouble)).abs().mean({1, 2, 3});
}

}  // namespace pconv::eval
