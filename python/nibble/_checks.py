"""Argument checks at nibble's Python boundary: every public function checks its arguments here,
once, before anything reaches the C++ core (which then checks the values it alone can judge:
shapes against each other, expert ids, checkpoint layouts, non-finite weights).

The rules, the same for every entry point:

- integers: ``int``, numpy integer scalars and anything else ``operator.index`` takes; never a
  bool, a float (not even ``4.0``: the value is the wrong type, and truncating ``4.5`` is what
  these checks exist to stop), a string or None. Wrong type: TypeError; right type, value out of
  its range or not among its choices: ValueError.
- flags: ``bool`` or ``numpy.bool_`` only (``bool("no")`` is True).
- reals: ints or floats, Python or numpy, not bools.
- names (conventions, variants, formats): a ``str`` (TypeError otherwise) among the allowed ones
  (ValueError listing them otherwise).
- arrays: a ``numpy.ndarray`` of an allowed dtype (TypeError otherwise), of the required rank,
  non-empty unless the function is elementwise, C-contiguous and aligned (ValueError otherwise).
  Nothing is copied to make an array fit: nibble views its inputs in place, so an array that
  cannot be viewed is refused, with the call that makes one that can.
- objects (tensors, checkpoints): an instance of the expected class (TypeError naming it and
  where to get one otherwise).

Messages name the argument, the value (or its type) and what was expected.
"""

from __future__ import annotations

import operator
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX = 2**32 - 1


def type_name(value: Any) -> str:
    """`value`'s type as a user would write it: ``float``, ``numpy.ndarray``, ``None``."""
    if value is None:
        return "None"
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module.split('.')[0]}.{kind.__qualname__}"


def _listing(values: Iterable[Any]) -> str:
    """``a, b or c`` (values as repr for strings, as they are for numbers)."""
    shown = [repr(value) if isinstance(value, str) else str(value) for value in values]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def integer(
    value: Any,
    name: str,
    *,
    minimum: int = INT64_MIN,
    maximum: int = INT64_MAX,
    choices: Optional[Sequence[int]] = None,
    expected: Optional[str] = None,
) -> int:
    """`value` as a Python int: an integer (see the module docstring) within [minimum, maximum]
    and among `choices` when given; `expected` describes the valid values in the message."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool {value!r} (bools are not taken as integers)")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer (int or numpy integer), got {type_name(value)} {value!r}"
        ) from None
    if choices is not None and number not in choices:
        raise ValueError(f"{name} = {number} is not supported (expected {expected or _listing(choices)})")
    if number > maximum:
        raise ValueError(f"{name} = {number} is too large (expected <= {maximum})")
    if number < minimum:
        raise ValueError(f"{name} = {number} is invalid (expected {expected or f'>= {minimum}'})")
    return number


def optional_integer(value: Any, name: str, **limits) -> Optional[int]:
    """None, or :func:`integer` of `value`."""
    return None if value is None else integer(value, name, **limits)


def integers(values: Any, name: str, **limits) -> List[int]:
    """A sequence (list, tuple or rank-1 array) of integers, each checked as ``name[i]``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of integers, got {type_name(values)} {values!r}")
    return [integer(value, f"{name}[{index}]", **limits) for index, value in enumerate(values)]


def flag(value: Any, name: str) -> bool:
    """`value` as a bool: True / False (or numpy's), nothing merely truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {type_name(value)} {value!r}")
    return bool(value)


def real(value: Any, name: str) -> float:
    """`value` as a float: an int or float, Python or numpy, not a bool (ranges: the C++ core)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number (int or float), got {type_name(value)} {value!r}")
    return float(value)


def choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    """`value`, a str that is one of `allowed`."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (one of {_listing(allowed)}), got {type_name(value)} {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is unknown (expected one of {_listing(allowed)})")
    return value


def instance(value: Any, name: str, kinds: Tuple[type, ...], expected: str) -> Any:
    """`value`, an instance of one of `kinds`; `expected` says what that is and where it comes from."""
    if not isinstance(value, kinds):
        raise TypeError(f"{name}: expected {expected}, got {type_name(value)}")
    return value


def array(
    value: Any,
    name: str,
    dtypes: Sequence[np.dtype],
    *,
    min_rank: int = 1,
    rank: Optional[int] = None,
    allow_empty: bool = False,
    shape_hint: str = "",
) -> np.ndarray:
    """`value` as the numpy array it must already be (see the module docstring); `rank` asks
    for exactly that rank, `shape_hint` (e.g. ``"[T, K]"``) names the expected shape."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type_name(value)}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {value.dtype} (expected {_listing(dtypes)})")
    hint = f" {shape_hint}" if shape_hint else ""
    if rank is not None and value.ndim != rank:
        raise ValueError(f"{name} has shape {value.shape}, rank {value.ndim} (expected rank {rank}{hint})")
    if value.ndim < min_rank:
        raise ValueError(f"{name} has shape {value.shape}, rank {value.ndim} (expected rank >= {min_rank}{hint})")
    if not allow_empty and value.size == 0:
        raise ValueError(f"{name} has shape {value.shape}: empty (expected every dimension >= 1)")
    if not value.flags.c_contiguous:
        raise ValueError(
            f"{name} is not C-contiguous (strides {value.strides}); pass np.ascontiguousarray({name})"
        )
    if not value.flags.aligned:
        raise ValueError(
            f"{name} is not aligned to its {value.dtype.itemsize}-byte elements (e.g. np.frombuffer at an odd "
            f"offset); pass {name}.copy()"
        )
    return value
