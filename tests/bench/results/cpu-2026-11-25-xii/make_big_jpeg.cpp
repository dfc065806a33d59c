#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
int main(int argc, char** argv) {
  cv::Mat m = cv::imread(argv[1]); cv::Mat b; cv::resize(m, b, cv::Size(atoi(argv[3]), atoi(argv[4])), 0, 0, cv::INTER_CUBIC);
  cv::Mat noise(b.size(), CV_16SC3); cv::randn(noise, 0, 6); cv::Mat b16; b.convertTo(b16, CV_16SC3); b16 += noise; b16.convertTo(b, CV_8UC3);
  cv::imwrite(argv[2], b, {cv::IMWRITE_JPEG_QUALITY, 92});
}
