"""log, cos and sin correctly rounded to float64: the values JavaScript's Math.log, Math.cos and
Math.sin give in Deno, so that the ServerApp's DP noise (noise.py) equals fed/noise.ts's bit for
bit. Deno's V8 takes these functions from LLVM's libc, which rounds them correctly; glibc's
(Python's math module, numpy) are within an ulp but differ from the correct rounding in about
one value in a thousand (measured: 71 log, 131 cos, 119 sin of 100,000 noise arguments), which
would change the noise.

Each value is computed in decimal (the `decimal` module: libmpdec, exact arithmetic at a chosen
precision) together with a bound on its error, and rounded to float64 once the whole interval
value ± bound rounds to one float64 (Ziv's strategy: where it does not, the value is too close to
a rounding boundary and the precision is raised). float(Decimal) rounds correctly (CPython's
dtoa), so the result is the correctly rounded value.
"""

import math
from decimal import Context, Decimal, localcontext

# Decimal digits of the first attempt; each retry doubles them. float64 needs 17, the margin
# makes a retry rare (a value must lie within 10^-(DIGITS-17) relative of a rounding boundary).
DIGITS = 40
MAX_DIGITS = 640


def _pi(digits: int) -> Decimal:
    """π to `digits` digits and more (the decimal module's recipe, a series of rational terms)."""
    with localcontext(Context(prec=digits + 5)):
        lasts, t, s, n, na, d, da = 0, Decimal(3), 3, 1, 0, 0, 24
        while s != lasts:
            lasts = s
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            t = (t * n) / d
            s += t
        return +s


_PI = {}


def _half_pi(digits: int) -> Decimal:
    if digits not in _PI:
        _PI[digits] = _pi(digits + 10) / 2
    return _PI[digits]


def _rounded(value: Decimal, bound: Decimal) -> float | None:
    """The float64 every number in [value − bound, value + bound] rounds to, or None."""
    with localcontext(Context(prec=MAX_DIGITS * 2)):  # exact: no rounding in ±
        low, high = float(value - bound), float(value + bound)
    return low if low == high else None


def log(x: float) -> float:
    """ln x correctly rounded, for a finite x > 0 (the noise takes the log of (0, 1])."""
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"log: {x} is not a finite positive number")
    if x == 1:
        return 0.0  # the one exact case: no interval around 0 rounds to one float64
    digits = DIGITS
    while digits <= MAX_DIGITS:
        with localcontext(Context(prec=digits)):
            value = Decimal(x).ln()  # correctly rounded to `digits` digits: within half an ulp
        result = _rounded(value, Decimal(1).scaleb(value.adjusted() - digits + 1))
        if result is not None:
            return result
        digits *= 2
    raise ArithmeticError(f"log({x!r}) did not settle at {MAX_DIGITS} digits")


def _cos_sin_series(r: Decimal, digits: int) -> tuple[Decimal, Decimal]:
    """cos r and sin r by their Taylor series for |r| < 1, at the context's precision, each
    stopped after the first term below 10^-(digits+2)."""
    r2 = r * r
    stop = Decimal(1).scaleb(-digits - 2)
    cos, term, n = Decimal(1), Decimal(1), 0
    while abs(term) >= stop:
        term = -term * r2 / ((n + 1) * (n + 2))
        cos += term
        n += 2
    sin, term, n = r, r, 1
    while abs(term) >= stop:
        term = -term * r2 / ((n + 1) * (n + 2))
        sin += term
        n += 2
    return cos, sin


def cos_sin(x: float) -> tuple[float, float]:
    """(cos x, sin x), each correctly rounded, for |x| ≤ 8 (the noise's angles lie in [0, 2π])."""
    if not abs(x) <= 8:
        raise ValueError(f"cos_sin: {x} is not a number in [-8, 8]")
    if x == 0:
        return 1.0, x  # exact (sin keeps the sign of a zero)
    digits = DIGITS
    while digits <= MAX_DIGITS:
        # The error of each result, with D = digits and ε = 10^(1−D) (an operation's relative
        # rounding error is at most ε/2): x is exact and π/2 within 10^-(D+10), so with j ≤ 5
        # the reduced argument r = x − j·π/2 (|r| ≤ π/4 + ε) is within ε of x − j·π/2 exactly
        # (j·π/2 < 10 and r rounded once each). Both series alternate with terms falling from
        # the first, so each truncation error is below the first term left out (< 10^-(D+2)).
        # A term after n steps carries 3n roundings (r², ×, ÷): a relative error ≤ 1.5n·ε on a
        # term ≤ 1/n!, below 1.5e·ε < 5ε summed; the additions, fewer than D, add at most ε/2
        # each on sums ≤ 1.6. A change δ of the argument moves cos and sin by at most δ. In all,
        # each result is within (D + 7)·ε: `bound`.
        with localcontext(Context(prec=digits)):
            half_pi = _half_pi(digits)
            j = int((Decimal(x) / half_pi).to_integral_value())
            r = Decimal(x) - j * half_pi
            cos_r, sin_r = _cos_sin_series(r, digits)
        bound = Decimal(digits + 10).scaleb(1 - digits)
        cos_x, sin_x = [
            (cos_r, sin_r),
            (-sin_r, cos_r),
            (-cos_r, -sin_r),
            (sin_r, -cos_r),
        ][j % 4]
        cos_f, sin_f = _rounded(cos_x, bound), _rounded(sin_x, bound)
        if cos_f is not None and sin_f is not None:
            return cos_f, sin_f
        digits *= 2
    raise ArithmeticError(f"cos_sin({x!r}) did not settle at {MAX_DIGITS} digits")
