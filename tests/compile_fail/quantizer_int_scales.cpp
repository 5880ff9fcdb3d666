// Must not compile: scales are float, fp16 or bf16.
#include "nibble/quantizer.hpp"

int main() {
  nibble::WeightQuantizer<4, int> quantizer(32, false);
  return static_cast<int>(quantizer.config().group_size);
}
