#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <cstdio>
int main(int argc, char** argv) {
  if (std::string(argv[1]) == "make") {
    cv::Mat m = cv::imread(argv[2]); cv::Mat b; cv::resize(m, b, cv::Size(4000, 3016), 0, 0, cv::INTER_CUBIC);
    cv::imwrite(argv[3], b(cv::Rect(0, atoi(argv[4]), 4000, 50)).clone());
    return 0;
  }
  cv::Mat t = cv::imread(argv[2]), r = cv::imread(argv[3]), k = cv::imread(argv[4], cv::IMREAD_GRAYSCALE);
  cv::Mat d; cv::absdiff(t, r, d); d.convertTo(d, CV_32FC3);
  double sum = 0; long n = 0;
  for (int y = 0; y < t.rows; ++y) for (int x = 0; x < t.cols; ++x) if (k.at<uchar>(y, x) > 127) { auto v = d.at<cv::Vec3f>(y, x); sum += (v[0] + v[1] + v[2]) / 3; ++n; }
  printf("%s: mean hole error %.2f levels over %ld px\n", argv[3], sum / n, n);
}
