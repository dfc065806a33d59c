// `pconv info MODEL`: what a pconv model file holds: architecture, parameter count, training
// data, command, date, steps and metrics.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace pconv::app {

struct InfoOptions {
  std::string model;
};

void setup_info(CLI::App& app);
void run_info(const InfoOptions& options);

}  // namespace pconv::app
