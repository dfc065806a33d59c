#include "pconv/eval/evaluation.h"

#include "../check_argument.h"

#include "pconv/data/image_folder.h"
#include "pconv/data/mask_generator.h"
#include "pconv/eval/metrics.h"
#include "pconv/io/image_file.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace pconv::eval {
namespace {

std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, value);
  return buffer;
}

// The masks of bin `bin_index` for a seed: the same for every method and every run. The bin is
// (low, high], the generator's range closed: its lower edge is excluded by the next double.
data::MaskGenerator bin_masks(const HoleBin& bin, int64_t bin_index, int64_t size, uint64_t seed,
                              double thin_strokes) {
  return data::MaskGenerator(data::MaskGeneratorOptions(size, size)
                                 .min_ratio(std::nextafter(bin.low, bin.high))
                                 .max_ratio(bin.high)
                                 .thin_probability(thin_strokes),
                             seed * 1000003ULL + static_cast<uint64_t>(bin_index));
}

// What a result file would hold: samples rounded to 8 bits.
at::Tensor as_8_bit(const at::Tensor& pixels) {
  return (pixels.clamp(0, 1) * 255.0).round() / 255.0;
}

struct Column {
  std::string title;
  std::vector<std::string> cells;  // one per row
  std::vector<bool> best;
};

// Rows: bins then "all"; columns: per metric, per method. Best per row and metric flagged.
std::vector<Column> columns(const EvalReport& report, bool with_count) {
  std::vector<Column> out;
  Column bins{"hole ratio", {}, {}};
  Column counts{"n", {}, {}};
  for (size_t b = 0; b < report.bins.size(); ++b) {
    bins.cells.push_back(report.bins[b].label());
    counts.cells.push_back(std::to_string(report.per_bin.empty() ? 0 : report.per_bin[0][b].count));
  }
  bins.cells.emplace_back("all");
  counts.cells.push_back(std::to_string(report.overall.empty() ? 0 : report.overall[0].count));
  out.push_back(bins);
  if (with_count) out.push_back(counts);
  struct Metric {
    const char* name;
    const char* pattern;
    double (*get)(const Scores&);
    bool higher_is_better;
  };
  const Metric metrics[] = {
      {"PSNR", "%.2f", [](const Scores& s) { return s.psnr; }, true},
      {"SSIM", "%.4f", [](const Scores& s) { return s.ssim; }, true},
      {"L1 %", "%.2f", [](const Scores& s) { return 100.0 * s.l1; }, false},
  };
  const size_t rows = report.bins.size() + 1;
  for (const auto& metric : metrics) {
    std::vector<Column> block;
    for (size_t m = 0; m < report.methods.size(); ++m) {
      Column column{std::string(metric.name) + " " + report.methods[m], {}, {}};
      for (size_t r = 0; r < rows; ++r) {
        const auto& s = r < report.bins.size() ? report.per_bin[m][r] : report.overall[m];
        column.cells.push_back(format(metric.pattern, metric.get(s)));
      }
      block.push_back(column);
    }
    for (size_t r = 0; r < rows && block.size() > 1; ++r) {  // one method: nothing to compare
      size_t best = 0;
      for (size_t m = 1; m < block.size(); ++m) {
        const auto value = [&](size_t i) {
          const auto& s = r < report.bins.size() ? report.per_bin[i][r] : report.overall[i];
          return metric.get(s);
        };
        if (metric.higher_is_better ? value(m) > value(best) : value(m) < value(best)) best = m;
      }
      for (size_t m = 0; m < block.size(); ++m) block[m].best.push_back(m == best);
    }
    out.insert(out.end(), block.begin(), block.end());
  }
  return out;
}

}  // namespace

std::string HoleBin::label() const {
  return "(" + format("%g", low) + ", " + format("%g", high) + "]";
}

std::vector<HoleBin> paper_bins() {
  return {{0.01, 0.1}, {0.1, 0.2}, {0.2, 0.3}, {0.3, 0.4}, {0.4, 0.5}, {0.5, 0.6}};
}

EvalReport evaluate(const std::vector<std::filesystem::path>& photos,
                    const std::vector<std::pair<std::string, Method>>& methods,
                    const EvalOptions& options, const std::function<void()>& on_example) {
  PCONV_CHECK_ARGUMENT(!photos.empty(), "evaluate: no photos");
  const auto begin = std::chrono::steady_clock::now();
  EvalReport report;
  report.bins = paper_bins();
  report.photos = static_cast<int64_t>(photos.size());
  report.size = options.size();
  report.seed = options.seed();
  report.thin_strokes = options.thin_strokes();
  const size_t method_count = methods.size();
  for (const auto& [name, method] : methods) report.methods.push_back(name);
  report.per_bin.assign(method_count, std::vector<Scores>(report.bins.size()));
  report.overall.assign(method_count, Scores{});
  report.seconds.assign(method_count, 0.0);
  report.mean_hole_ratio.assign(report.bins.size(), 0.0);

  const int64_t n = report.photos;
  const int64_t per_bin = options.per_bin() > 0 ? options.per_bin() : n;
  const size_t bin_count = report.bins.size();
  std::vector<data::MaskGenerator> masks;
  for (size_t b = 0; b < bin_count; ++b) {
    masks.push_back(bin_masks(report.bins[b], static_cast<int64_t>(b), options.size(),
                              options.seed(), options.thin_strokes()));
  }
  // Example j of bin b is on photo j (one per photo), or on photo (b * per_bin + j) mod n. Each
  // photo is decoded once and its examples done together, so that one crop at a time is in
  // memory however many photos there are. Scores are summed afterwards in example order.
  std::vector<std::vector<std::pair<size_t, int64_t>>> uses(static_cast<size_t>(n));
  for (size_t b = 0; b < bin_count; ++b) {
    for (int64_t j = 0; j < per_bin; ++j) {
      const int64_t photo = options.per_bin() > 0 ? (static_cast<int64_t>(b) * per_bin + j) % n : j;
      uses[static_cast<size_t>(photo)].emplace_back(b, j);
    }
  }
  struct Result {
    double psnr = 0;
    double ssim = 0;
    double l1 = 0;
  };
  // [method][bin][example]
  std::vector<std::vector<std::vector<Result>>> results(
      method_count, std::vector<std::vector<Result>>(
                        bin_count, std::vector<Result>(static_cast<size_t>(per_bin))));
  std::vector<std::vector<double>> ratios(bin_count,
                                          std::vector<double>(static_cast<size_t>(per_bin)));
  const int64_t kept_per_bin = std::min(options.examples_per_bin(), per_bin);
  std::vector<std::vector<Example>> kept(
      bin_count, std::vector<Example>(static_cast<size_t>(std::max<int64_t>(kept_per_bin, 0))));
  const auto crop_options = data::CropOptions().size(options.size()).min_fraction(0.0);
  for (int64_t photo = 0; photo < n; ++photo) {
    if (uses[static_cast<size_t>(photo)].empty()) continue;
    const auto& path = photos[static_cast<size_t>(photo)];
    const auto pixels = io::read_image(path).pixels;
    if (std::min(pixels.size(1), pixels.size(2)) < options.size()) {
      report.upscaled.push_back(path.string() + " (" + std::to_string(pixels.size(2)) + "x" +
                                std::to_string(pixels.size(1)) + ")");
    }
    // In 8 bits, as the composite is scored (a saved file's levels): the known pixels then
    // count nothing, where a scaled crop's in-between levels gave every method up to 0.5/255
    // of error on each (until session x; about a quarter of pconv's L1 in the smallest bin).
    const auto truth = as_8_bit(data::crop_image(pixels, path, crop_options, false, 0));
    for (const auto& [b, j] : uses[static_cast<size_t>(photo)]) {
      const auto holes = masks[b].hole_map(static_cast<uint64_t>(j));
      ratios[b][static_cast<size_t>(j)] = holes.to(at::kDouble).mean().item<double>();
      const auto input = truth * holes.logical_not().unsqueeze(0);
      Example example;
      const bool keep = j < kept_per_bin;
      if (keep) {
        example.truth = truth;
        example.holes = holes;
      }
      for (size_t m = 0; m < method_count; ++m) {
        const auto start = std::chrono::steady_clock::now();
        const auto output = methods[m].second(input, holes);
        report.seconds[m] +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const auto composite =
            as_8_bit(at::where(holes.unsqueeze(0), output.to(at::kCPU, at::kFloat), truth))
                .unsqueeze(0);
        const auto reference = truth.unsqueeze(0);
        auto& result = results[m][b][static_cast<size_t>(j)];
        // Capped as the trainer's validation is: an exact fill (a flat photo) would make the
        // bin's mean infinite.
        result.psnr = psnr(composite, reference).clamp_max(100.0).item<double>();
        result.ssim = ssim(composite, reference).item<double>();
        result.l1 = l1_error(composite, reference).item<double>();
        if (keep) example.outputs.push_back(composite.squeeze(0));
      }
      if (keep) kept[b][static_cast<size_t>(j)] = std::move(example);
      if (on_example) on_example();
    }
  }
  for (size_t b = 0; b < bin_count; ++b) {
    for (const double ratio : ratios[b]) {
      report.mean_hole_ratio[b] += ratio / static_cast<double>(per_bin);
    }
    for (auto& example : kept[b]) report.examples.push_back(std::move(example));
    for (size_t m = 0; m < method_count; ++m) {
      auto& scores = report.per_bin[m][b];
      for (const auto& result : results[m][b]) {
        scores.psnr += result.psnr;
        scores.ssim += result.ssim;
        scores.l1 += result.l1;
        ++scores.count;
      }
    }
  }
  for (size_t m = 0; m < method_count; ++m) {
    auto& overall = report.overall[m];
    for (auto& scores : report.per_bin[m]) {
      overall.psnr += scores.psnr;
      overall.ssim += scores.ssim;
      overall.l1 += scores.l1;
      overall.count += scores.count;
      const auto count = static_cast<double>(std::max<int64_t>(scores.count, 1));
      scores.psnr /= count;
      scores.ssim /= count;
      scores.l1 /= count;
    }
    const auto count = static_cast<double>(std::max<int64_t>(overall.count, 1));
    overall.psnr /= count;
    overall.ssim /= count;
    overall.l1 /= count;
  }
  report.total_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return report;
}

std::string to_text(const EvalReport& report) {
  const auto table = columns(report, true);
  std::ostringstream out;
  const size_t rows = report.bins.size() + 1;
  std::vector<size_t> widths;
  for (const auto& column : table) {
    size_t width = column.title.size();
    for (const auto& cell : column.cells) width = std::max(width, cell.size() + 1);
    widths.push_back(width);
  }
  for (size_t c = 0; c < table.size(); ++c) {
    out << (c ? "  " : "") << std::string(widths[c] - table[c].title.size(), ' ') << table[c].title;
  }
  out << '\n';
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < table.size(); ++c) {
      const bool best = !table[c].best.empty() && table[c].best[r];
      const auto cell = table[c].cells[r] + (best ? "*" : (table[c].best.empty() ? "" : " "));
      out << (c ? "  " : "") << std::string(widths[c] - std::min(widths[c], cell.size()), ' ')
          << cell;
    }
    out << '\n';
  }
  if (report.methods.size() > 1) {
    out << "(* best of the row; PSNR and SSIM higher is better, L1 lower)\n";
  }
  for (size_t m = 0; m < report.methods.size(); ++m) {
    out << report.methods[m] << ": "
        << format("%.1f", 1000.0 * report.seconds[m] /
                              static_cast<double>(std::max<int64_t>(report.overall[m].count, 1)))
        << " ms per image\n";
  }
  out << "whole evaluation: " << format("%.1f", report.total_seconds)
      << " s (reading the photos, the masks and the metrics included)\n";
  return out.str();
}

std::string to_markdown(const EvalReport& report) {
  const auto table = columns(report, true);
  std::ostringstream out;
  out << "|";
  for (const auto& column : table) out << ' ' << column.title << " |";
  out << "\n|";
  for (size_t c = 0; c < table.size(); ++c) out << (c < 2 ? " --- |" : " ---: |");
  out << '\n';
  for (size_t r = 0; r < report.bins.size() + 1; ++r) {
    out << "|";
    for (const auto& column : table) {
      const bool best = !column.best.empty() && column.best[r];
      out << ' ' << (best ? "**" : "") << column.cells[r] << (best ? "**" : "") << " |";
    }
    out << '\n';
  }
  out << "\n"
      << report.photos << " photos, " << report.size << "x" << report.size
      << " centre crops, mask seed " << report.seed
      << (report.thin_strokes > 0.0
              ? ", " + format("%g", report.thin_strokes) + " of the strokes thin (1-3 px)"
              : std::string())
      << "; metrics of the composite (known pixels kept), 8-bit"
      << (report.methods.size() > 1 ? "; best of each row in bold" : "") << ".";
  if (!report.upscaled.empty()) {
    out << " " << report.upscaled.size() << " of the photos "
        << (report.upscaled.size() == 1 ? "is" : "are") << " smaller than the crops and "
        << (report.upscaled.size() == 1 ? "was" : "were")
        << " upscaled to them (smoother, so easier to fill, than real photos).";
  }
  out << "\n\n"
      << "Time per image (this run):";
  for (size_t m = 0; m < report.methods.size(); ++m) {
    out << (m ? "," : "") << ' ' << report.methods[m] << ' '
        << format("%.1f", 1000.0 * report.seconds[m] /
                              static_cast<double>(std::max<int64_t>(report.overall[m].count, 1)))
        << " ms";
  }
  out << "; the whole evaluation " << format("%.1f", report.total_seconds)
      << " s (reading the photos, the masks and the metrics included).\n";
  return out.str();
}

std::string to_csv(const EvalReport& report) {
  std::ostringstream out;
  out << "method,bin,low,high,count,mean_hole_ratio,psnr,ssim,l1\n";
  // The "all" rows' mean hole ratio: the bins' means weighed by their counts (every method has
  // the same examples).
  double ratio_sum = 0.0;
  int64_t examples = 0;
  for (size_t b = 0; b < report.bins.size() && !report.per_bin.empty(); ++b) {
    ratio_sum += report.mean_hole_ratio[b] * static_cast<double>(report.per_bin[0][b].count);
    examples += report.per_bin[0][b].count;
  }
  const double overall_hole_ratio = examples > 0 ? ratio_sum / static_cast<double>(examples) : 0.0;
  for (size_t m = 0; m < report.methods.size(); ++m) {
    for (size_t b = 0; b <= report.bins.size(); ++b) {
      const bool all = b == report.bins.size();
      const auto& s = all ? report.overall[m] : report.per_bin[m][b];
      // The bin's label, "(0.1, 0.2]", has a comma: quoted, as CSV readers expect.
      out << report.methods[m] << ",\"" << (all ? std::string("all") : report.bins[b].label())
          << "\"," << (all ? 0.0 : report.bins[b].low) << ',' << (all ? 1.0 : report.bins[b].high)
          << ',' << s.count << ','
          << format("%.6f", all ? overall_hole_ratio : report.mean_hole_ratio[b]) << ','
          << format("%.6f", s.psnr) << ',' << format("%.6f", s.ssim) << ',' << format("%.6f", s.l1)
          << '\n';
    }
  }
  return out.str();
}

torch::Tensor with_white_holes(const torch::Tensor& image, const torch::Tensor& holes) {
  return at::where(holes.ne(0).unsqueeze(0).expand_as(image), at::ones_like(image), image);
}

torch::Tensor side_by_side(const std::vector<torch::Tensor>& pictures, int64_t gap) {
  PCONV_CHECK_ARGUMENT(!pictures.empty(), "side_by_side: no pictures");
  std::vector<at::Tensor> spaced;
  for (const auto& picture : pictures) {
    if (!spaced.empty()) spaced.push_back(at::ones({picture.size(0), picture.size(1), gap}));
    spaced.push_back(picture);
  }
  return at::cat(spaced, 2);
}

torch::Tensor example_grid(const EvalReport& report) {
  std::vector<at::Tensor> rows;
  for (const auto& example : report.examples) {
    std::vector<at::Tensor> cells{with_white_holes(example.truth, example.holes)};
    cells.insert(cells.end(), example.outputs.begin(), example.outputs.end());
    cells.push_back(example.truth);
    auto row = side_by_side(cells);
    if (!rows.empty()) rows.push_back(at::ones({3, 4, row.size(2)}));
    rows.push_back(std::move(row));
  }
  PCONV_CHECK_ARGUMENT(!rows.empty(), "example_grid: the report kept no examples");
  return at::cat(rows, 1);
}

}  // namespace pconv::eval
