"""``python -m nibble [--json]``: nibble's version and how this build was made."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from . import __version__, build_info


def describe(info: dict) -> str:
    openmp = f"OpenMP {info['openmp']}, {info['openmp_max_threads']} threads" if info["openmp"] else "no OpenMP"
    return "\n".join(
        [
            f"nibble {__version__}: low-bit weight quantization (2/4/8 bits), bit-exact with Olive and ONNX Runtime",
            "",
            f"  compiler      {info['compiler']} (C++ {info['cplusplus']})",
            f"  threads       {openmp}",
            f"  CPU kernels   {', '.join(info['kernels'])}",
            f"  CPU features  {', '.join(info['cpu_features']) or 'none detected'}",
            f"  conventions   {', '.join(info['conventions'])}",
        ]
    )


def main(argv: Optional[List[str]] = None) -> int:
    info = build_info()
    parser = argparse.ArgumentParser(
        prog="python -m nibble",
        description=describe(info),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the build information as JSON")
    args = parser.parse_args(argv)
    print(json.dumps(info, indent=2) if args.json else describe(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
