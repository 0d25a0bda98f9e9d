"""The privacy a DP run on Flower has spent: fed/accountant.ts's Rényi-DP accountant in Python,
the same ε to about 1e-15 relative (tests/flower/dp_ports_test.ts; the libm's log1p, expm1 and
log may differ from Deno's in the last bit).

The ServerApp trains every node online each round, so each client takes part with probability
q = 1 and every round is the plain Gaussian mechanism: RDP(α) = α/(2σ²) per round, composed by
adding over rounds, converted to (ε, δ) by the bound of Balle et al. 2020 (Prop. 12) at
dp-accounting's orders, as fed/accountant.ts `epsilonFromRdp` does. (fed/accountant.ts also
accounts for Poisson-sampled rounds, --clients-per-round; the Flower App samples no clients.)
Central DP: σ = z (one client moves the sum by at most C, the noise is z·C). Local DP: each
client's own guarantee over the rounds it trained, with sensitivity 2C (any clipped update may
replace any other), so σ = z/2 (fed/privacy.ts `dpAccountant`).
"""

import math

# dp-accounting's DEFAULT_RDP_ORDERS, computed as fed/accountant.ts computes them.
DEFAULT_RDP_ORDERS = (
    [1 + (x + 1) / 10 for x in range(99)] + [11 + x for x in range(53)] + [128, 256, 512, 1024]
)


def epsilon_from_rdp(rdp: list[float], delta: float) -> tuple[float, float]:
    """(ε, the order that gave it): the smallest ε over DEFAULT_RDP_ORDERS for `delta`."""
    best, best_order = math.inf, DEFAULT_RDP_ORDERS[0]
    for alpha, r in zip(DEFAULT_RDP_ORDERS, rdp, strict=True):
        if r < 0 or delta * delta + math.expm1(-r) > 0:
            epsilon = 0.0  # numerical noise, or δ ≥ √(1 − e^{−KL}) already
        elif alpha > 1.01:
            epsilon = r + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)
        else:
            epsilon = math.inf  # the bound is numerically unstable as α → 1
        if epsilon < best:
            best, best_order = epsilon, alpha
    return max(0.0, best), best_order


def gaussian_epsilon(noise_multiplier: float, delta: float, rounds: int) -> float:
    """ε after `rounds` rounds of the Gaussian mechanism of sensitivity 1 and noise σ."""
    if rounds == 0:
        return 0.0
    per_round = [alpha / (2 * noise_multiplier * noise_multiplier) for alpha in DEFAULT_RDP_ORDERS]
    return epsilon_from_rdp([r * rounds for r in per_round], delta)[0]


def epsilon_spent(mode: str, noise: float, delta: float, rounds: int) -> float:
    """ε of a `mode` (central or local) DP run after `rounds` rounds: central, the rounds run;
    local, the most rounds any one client trained (fed/privacy.ts PrivacySpent)."""
    return gaussian_epsilon(noise if mode == "central" else noise / 2, delta, rounds)
