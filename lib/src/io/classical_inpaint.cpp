#include "pconv/io/classical_inpaint.h"

#include "../check_argument.h"

#ifdef PCONV_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/photo.hpp>
#endif

#include <ATen/ATen.h>

namespace pconv::io {

bool classical_inpaint_available() {
#ifdef PCONV_WITH_OPENCV
  return true;
#else
  return false;
#endif
}

torch::Tensor classical_inpaint(const torch::Tensor& image, const torch::Tensor& holes,
                                ClassicalMethod method, double radius) {
  PCONV_CHECK_ARGUMENT(image.dim() == 3 && image.size(0) == 3,
                       "classical_inpaint: image must be (3, H, W)");
  PCONV_CHECK_ARGUMENT(
      holes.dim() == 2 && holes.size(0) == image.size(1) && holes.size(1) == image.size(2),
      "classical_inpaint: holes must be (H, W) like the image");
#ifdef PCONV_WITH_OPENCV
  const int height = static_cast<int>(image.size(1));
  const int width = static_cast<int>(image.size(2));
  // Channel order does not matter to cv::inpaint (it treats channels alike), so RGB stays RGB.
  auto samples = (image.detach().to(at::kCPU, at::kFloat).clamp(0, 1) * 255.0)
                     .round()
                     .to(at::kByte)
                     .permute({1, 2, 0})
                     .contiguous();
  auto mask = holes.to(at::kCPU).ne(0).to(at::kByte).mul(255).contiguous();
  const cv::Mat source(height, width, CV_8UC3, samples.data_ptr<uint8_t>());
  const cv::Mat hole_mask(height, width, CV_8UC1, mask.data_ptr<uint8_t>());
  cv::Mat filled;
  cv::inpaint(source, hole_mask, filled, radius,
              method == ClassicalMethod::kTelea ? cv::INPAINT_TELEA : cv::INPAINT_NS);
  return at::from_blob(filled.data, {height, width, 3}, at::kByte)
      .permute({2, 0, 1})
      .to(at::kFloat)
      .div(255.0)
      .contiguous();
#else
  (void)radius;
  (void)method;
  throw Error("classical inpainting needs a build with OpenCV");
#endif
}

}  // namespace pconv::io
