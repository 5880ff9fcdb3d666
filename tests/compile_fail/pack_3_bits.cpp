// Must not compile: pack/unpack exist for 2, 4 and 8 bits only.
#include <cstdint>

#include "nibble/pack.hpp"

int main() {
  uint8_t codes[3] = {1, 2, 3};
  uint8_t packed[2] = {};
  nibble::BitPacking<3>::pack_row(codes, 3, packed);
  return packed[0];
}
