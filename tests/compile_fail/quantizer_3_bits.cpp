// Must not compile: WeightQuantizer exists for 2, 4 and 8 bits only.
#include "nibble/quantizer.hpp"

int main() {
  nibble::WeightQuantizer<3> quantizer(32, false);
  return static_cast<int>(quantizer.config().group_size);
}
