// Clears, before any test runs, the environment variables that would change what pconv does by
// default (PCONV_TEST_CLEARED_VARIABLES, comma-separated, from tests/CMakeLists.txt): the tests'
// expectations are the defaults, whatever the developer running them has set for their own use.
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
