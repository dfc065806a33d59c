// Uses PartialConv2d through the installed/exported pconv package and checks one property.
#include <pconv/nn/partial_conv2d.h>
#include <pconv/version.h>

#include <ATen/ATen.h>

#include <iostream>

int main() {
  pconv::nn::PartialConv2d conv(pconv::nn::PartialConv2dOptions(3, 8, 3).padding(1));
  const auto input = at::randn({1, 3, 16, 16});
  auto mask = at::ones({1, 1, 16, 16});
  mask.narrow(2, 4, 8).narrow(3, 4, 8).zero_();
  const auto [output, new_mask] = conv(input, mask);
  const bool ok = output.sizes() == at::IntArrayRef{1, 8, 16, 16} &&
                  new_mask.sum().item<double>() > mask.sum().item<double>();
  std::cout << "pconv " << pconv::kVersion << " consumer: " << (ok ? "ok" : "FAILED") << '\n';
  return ok ? 0 : 1;
}
