// Clears, before any test runs, the environment variables that would change what pconv does by
// default (PCONV_TEST_CLEARED_VARIABLES, comma-separated, from tests/CMakeLists.txt): the tests'
// expectations are the defaults, whatever the developer running them has set for their own use.
// For the pconv commands the tests start, all of them; in this process OpenMP has read
// OMP_NUM_THREADS already, as the library loaded (it sets a thread count, no expectation).
#include <cstdlib>
#include <sstream>
#include <string>

namespace {

const bool g_cleared = [] {
  std::stringstream names(PCONV_TEST_CLEARED_VARIABLES);
  for (std::string name; std::getline(names, name, ',');) unsetenv(name.c_str());
  return true;
}();

}  // namespace
