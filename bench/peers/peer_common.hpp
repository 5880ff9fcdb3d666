// What nibble_peer.cpp and ggml_peer.cpp share: the command line, the correctness check before
// timing, and the timed calls. Plain C++17, no nibble or ggml headers (ggml_peer builds outside
// CMake, against ggml only).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

namespace peer {

// "--name value" options and bare "--name" flags; anything else is a usage error (exit 2).
class Args {
 public:
  Args(int argc, char** argv, const char* program, const char* usage_text,
       std::initializer_list<const char*> options, std::initializer_list<const char*> flags = {})
      : program_(program), usage_(usage_text) {
    for (int i = 1; i < argc; ++i) {
      const std::string word = argv[i];
      if (word.rfind("--", 0) != 0 || word.size() == 2) usage("unexpected argument '" + word + "'");
      const std::string name = word.substr(2);
      if (std::find(flags.begin(), flags.end(), name) != flags.end()) {
        values_[name] = "1";
      } else if (std::find(options.begin(), options.end(), name) != options.end()) {
        if (i + 1 >= argc) usage("missing value after " + word);
        values_[name] = argv[++i];
      } else {
        usage("unknown option " + word);
      }
    }
  }

  [[noreturn]] void usage(const std::string& problem) const {
    std::fprintf(stderr, "%s: %s\n%s", program_, problem.c_str(), usage_);
    std::exit(2);
  }

  bool has(const std::string& name) const { return values_.count(name) != 0; }

  // The option's text; `fallback` when absent (null: the option is required).
  std::string text(const std::string& name, const char* fallback = nullptr) const {
    const auto found = values_.find(name);
    if (found != values_.end()) return found->second;
    if (fallback == nullptr) usage("missing --" + name);
    return fallback;
  }

  int64_t integer(const std::string& name, const char* fallback = nullptr) const {
    const std::string value = text(name, fallback);
    char* end = nullptr;
    const long long parsed = std::strtoll(value.c_str(), &end, 10);
    if (end == value.c_str() || *end != '\0') {
      usage("--" + name + " " + value + " is not an integer");
    }
    return parsed;
  }

 private:
  const char* program_;
  const char* usage_;
  std::map<std::string, std::string> values_;
};

// max |reference - y| / max |reference| over the rows of X checked, reference = X . W^T in fp64
// from the peer's own dequantized W [n, k]; y [m, n] row-major. At most 8 rows of X, spread over
// M, are checked: M = 512 in full would be 2^33 multiply-adds per process, longer than the timing.
inline double relative_error(const float* x, const float* w, const float* y, int64_t m, int64_t n,
                             int64_t k) {
  const int64_t checked = std::min<int64_t>(m, 8);
  double max_error = 0.0, max_reference = 0.0;
  for (int64_t r = 0; r < checked; ++r) {
    const int64_t i = checked == 1 ? 0 : r * (m - 1) / (checked - 1);
    for (int64_t j = 0; j < n; ++j) {
      double reference = 0.0;
      for (int64_t e = 0; e < k; ++e)
        reference += static_cast<double>(x[i * k + e]) * w[j * k + e];
      max_reference = std::max(max_reference, std::fabs(reference));
      max_error = std::max(max_error, std::fabs(reference - y[i * n + j]));
    }
  }
  return max_error / std::max(max_reference, 1e-30);
}

// Exits 1 when the result is off by more than 5% of max |reference| (q8 activation rounding
// makes ~1e-2 normal) or is NaN.
inline void check_result(const char* program, double relative) {
  if (!(relative <= 0.05)) {
    std::fprintf(stderr, "%s: result off by %.3g of max |reference| (limit 0.05)\n", program,
                 relative);
    std::exit(1);
  }
}

struct CallTimes {
  double median_ms = 0.0, min_ms = 0.0, max_ms = 0.0;
};

// call(c) for c = 1 .. copies - 1 untimed (copy 0 ran for the check), then `calls` timed calls,
// call i on copy i % copies, each timed alone with steady_clock.
template <class Call>
CallTimes time_calls(int64_t copies, int64_t calls, Call&& call) {
  for (int64_t c = 1; c < copies; ++c)
    call(c);
  std::vector<double> ms;
  ms.reserve(static_cast<std::size_t>(calls));
  for (int64_t i = 0; i < calls; ++i) {
    const auto start = std::chrono::steady_clock::now();
    call(i % copies);
    const std::chrono::duration<double, std::milli> elapsed =
        std::chrono::steady_clock::now() - start;
    ms.push_back(elapsed.count());
  }
  std::sort(ms.begin(), ms.end());
  const std::size_t count = ms.size();
  const double median = count % 2 == 1 ? ms[count / 2] : 0.5 * (ms[count / 2 - 1] + ms[count / 2]);
  return CallTimes{median, ms.front(), ms.back()};
}

}  // namespace peer
