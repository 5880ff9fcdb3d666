// What the calibration-search tests (test_autoclip, test_awq) share: the solver cases (which
// solver the search measures, with which symmetry and convention) and their helpers, and the
// bad-input fixture with the input checks both searches make.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/solvers/autoclip.hpp"
#include "support/test_data.hpp"

namespace nibble::testing {

// One (solver, symmetric, convention) case; each test lists the cases it runs.
struct SolverCase {
  const char* name;
  QuantSolver solver;
  bool symmetric;
  ConventionId convention;
};

inline QuantSolver kquant_solver(KQuantVariant variant) {
  QuantSolver solver;
  solver.kind = SearchSolver::k_quant;
  solver.kquant.variant = variant;
  return solver;
}

// Sets the case's solver field by field: copy-assigning a QuantSolver (its KQuantOptions holds a
// std::vector) trips GCC 12's -Wnonnull false positive at -O3 (a memmove from an empty vector).
template <class Options>
void use_solver(Options& options, const SolverCase& c) {
  options.solver.kind = c.solver.kind;
  options.solver.kquant.variant = c.solver.kquant.variant;
}

inline std::string describe(const SolverCase& c, int bits, int64_t group) {
  return std::string(c.name) + " bits=" + std::to_string(bits) + " group=" + std::to_string(group);
}

// The weights `solver` restores from `weights` of `shape`: quantize, then dequantize.
inline std::vector<float> fake_quantize(const std::vector<float>& weights, const Shape& shape,
                                        const QuantConfig& config, const QuantSolver& solver) {
  return dequantize(
      quantize_with_solver<float>(TensorView<const float>(weights.data(), shape), config, solver));
}

// `call` throws an Error whose message mentions `fragment`.
inline void expect_error_mentioning(const std::function<void()>& call,
                                    const std::string& fragment) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one mentioning \"" << fragment << "\"";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
  }
}

// The inputs of the searches' bad-input tests: weights w [rows, K] = [4, 64] (with 3 x as many
// values behind them, for a [3, 4, 64] view of experts), x_view [8, K] calibration tokens, and a
// 4-bit asymmetric G = 32 config.
class SearchInputTest : public ::testing::Test {
 protected:
  const int64_t rows = 4, k = 64;
  const std::vector<float> weights = gaussian(3 * rows * k, 1);
  const std::vector<float> x = gaussian(8 * k, 2);
  const TensorView<const float> w{weights.data(), Shape({rows, k})};
  const TensorView<const float> x_view{x.data(), Shape({8, k})};
  const QuantConfig config{4, 32, false};

  using Views = std::vector<TensorView<const float>>;
  using Search = std::function<void(const TensorView<const float>& weights, const Views& x)>;

  // The checks both searches share (detail::check_search_inputs), through `search`, which runs
  // entry point `who` ("autoclip", "awq_search") on `config`.
  void expect_shared_checks_refuse(const std::string& who, const Search& search) const {
    // Calibration K != weight K.
    expect_error_mentioning(
        [&] {
          search(w, {TensorView<const float>(x.data(), Shape({8, 63}))});
        },
        who +
            ": activations[0] has shape [8, 63], whose last dimension 63 "
            "is not the weights' K = 64");
    // Zero calibration rows: no view of them exists; no matrices at all is refused here.
    expect_error_mentioning(
        [&] {
          TensorView<const float>(x.data(), Shape({0, k}));
        },
        "dimension 0 is 0");
    expect_error_mentioning([&] { search(w, Views{}); }, who + ": no calibration activations");
    // Non-finite activations and weights, named by index.
    std::vector<float> with_nan = x;
    with_nan[static_cast<std::size_t>(2 * k + 5)] = std::nanf("");
    expect_error_mentioning(
        [&] {
          search(w, {TensorView<const float>(with_nan.data(), Shape({8, k}))});
        },
        "activations[0][2, 5] = nan (calibration activations must be finite)");
    std::vector<float> with_inf = x;
    with_inf[7] = INFINITY;
    expect_error_mentioning(
        [&] {
          search(w, {TensorView<const float>(with_inf.data(), Shape({8, k}))});
        },
        "activations[0][0, 7] = inf");
    std::vector<float> bad_weights(weights.begin(), weights.begin() + rows * k);
    bad_weights[static_cast<std::size_t>(k + 3)] = -INFINITY;
    expect_error_mentioning(
        [&] {
          search(TensorView<const float>(bad_weights.data(), Shape({rows, k})), {x_view});
        },
        who + ": weights[1, 3] = -inf");
    // Per-expert matrices: 1 or E.
    const TensorView<const float> experts(weights.data(), Shape({3, rows, k}));
    expect_error_mentioning(
        [&] {
          search(experts, Views{x_view, x_view});
        },
        "2 activation matrices for weights of shape [3, 4, 64] (expected 1, "
        "shared by every row, or 3, one per leading index [3])");
    expect_error_mentioning(
        [&] {
          search(w, Views{x_view, x_view});
        },
        "2 activation matrices for weights of shape [4, 64] (expected 1, "
        "shared by every row)");
  }
};

}  // namespace nibble::testing
