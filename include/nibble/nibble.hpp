// nibble: header-only low-bit weight quantization and dequant-GEMM kernels.
// Including this header brings in the whole CPU library; each header also stands alone.
#pragma once

#include "nibble/core/checked_math.hpp"
#include "nibble/core/convention.hpp"
#include "nibble/core/dtype.hpp"
#include "nibble/core/error.hpp"
#include "nibble/core/float16.hpp"
#include "nibble/core/quant_config.hpp"
#include "nibble/core/tensor_view.hpp"
#include "nibble/formats/ort.hpp"
#include "nibble/io/json.hpp"
#include "nibble/io/safetensors.hpp"
#include "nibble/kernels/cpu/dequantize.hpp"
#include "nibble/kernels/cpu/gemm.hpp"
#include "nibble/kernels/cpu/isa.hpp"
#include "nibble/kernels/cpu/moe_gemm.hpp"
#include "nibble/kernels/cpu/reference.hpp"
#include "nibble/pack.hpp"
#include "nibble/quant_tensor.hpp"
#include "nibble/quantizer.hpp"
#include "nibble/solvers/rtn.hpp"
#include "nibble/version.hpp"
