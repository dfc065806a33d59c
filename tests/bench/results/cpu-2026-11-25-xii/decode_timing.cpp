#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <chrono>
#include <cstdio>
int main(int argc, char** argv) {
  cv::Mat m = cv::imread(argv[1]); cv::Mat b; cv::resize(m, b, cv::Size(6000, 4000), 0, 0, cv::INTER_CUBIC);
  cv::imwrite("big.jpg", b, {cv::IMWRITE_JPEG_QUALITY, 92});
  for (int flags : {cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR, (int)cv::IMREAD_REDUCED_COLOR_2, (int)cv::IMREAD_REDUCED_COLOR_4, (int)cv::IMREAD_REDUCED_COLOR_8}) {
    auto t0 = std::chrono::steady_clock::now();
    cv::Mat r; for (int i = 0; i < 3; ++i) r = cv::imread("big.jpg", flags);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 3;
    printf("flags %d: %.3f s %dx%d\n", flags, s, r.cols, r.rows);
  }
}
