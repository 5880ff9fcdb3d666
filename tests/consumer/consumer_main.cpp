// A user's program: quantize a small weight, run the reference GEMM, check the answer.
#include <cmath>
#include <cstdio>
#include <vector>

#include <nibble/nibble.hpp>

int main() {
  const int64_t n = 8;
  const int64_t k = 64;
  std::vector<float> weights(static_cast<std::size_t>(n * k));
  for (std::size_t i = 0; i < weights.size(); ++i)
    weights[i] = std::sin(0.37f * static_cast<float>(i));

  nibble::WeightQuantizer<4> quantizer(/*group_size=*/32, /*symmetric=*/false);
  const auto quantized =
      quantizer.quantize(nibble::TensorView<const float>(weights.data(), {n, k}));

  std::vector<float> x(static_cast<std::size_t>(k), 1.0f);
  std::vector<float> y(static_cast<std::size_t>(n));
  nibble::gemm_ref(quantized.view(), nibble::TensorView<const float>(x.data(), {1, k}),
                   nibble::TensorView<float>(y.data(), {1, n}));
  double worst = 0.0;
  for (int64_t row = 0; row < n; ++row) {
    double exact = 0.0;
    for (int64_t col = 0; col < k; ++col)
      exact += weights[static_cast<std::size_t>(row * k + col)];
    worst = std::fmax(worst, std::fabs(exact - y[static_cast<std::size_t>(row)]));
  }
  // 64 weights with a 4-bit step of ~2/15 each: the sum's error stays well under 64 * step / 2.
  if (worst > 2.0) {
    std::printf("consumer FAILED: worst row error %g\n", worst);
    return 1;
  }
  std::printf("consumer ok: nibble %s, worst row error %.4f\n", nibble::kVersionString, worst);
  return 0;
}
