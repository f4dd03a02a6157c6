"""Comparisons shared by the curvature tests (tests/curvature/)."""

from ewc_ref.verify.gradcheck import relative_error

#: Identities between float64 computations that differ only in summation order (fast vs naive,
#: full vs diag, chunked vs one-shot): 1e-10 relative, normwise per matrix; observed ~1e-15.
RTOL = 1e-10


def close(a, b, rtol=RTOL):
    if isinstance(a, list | tuple):  # block: [P_l x P_l]; kfac: [(A_l, G_l)] or [(A_l, G_l, Gb_l or None)]
        return len(a) == len(b) and all(close(x, y, rtol) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    return relative_error(a, b) <= rtol
