// The privacy accountant against (1) Google's dp-accounting 0.6.0 itself (values computed in a
// throwaway venv with scipy 1.17.1, numpy 2.4.6, and hard-coded here), (2) the numbers
// dp-accounting's own test suite checks, and (3) numbers published in TF Privacy's MNIST tutorial.
// Also: ε grows with the rounds, and q = 1 is the plain Gaussian mechanism.
//
// (1) was produced by:
//   from dp_accounting.rdp import rdp_privacy_accountant as r
//   O = r.DEFAULT_RDP_ORDERS
//   rdp = r._compute_rdp_poisson_subsampled_gaussian(q, sigma, O)
//   eps, order = r.compute_epsilon(O, rdp * rounds, delta)
import {
  DEFAULT_RDP_ORDERS,
  epsilonFromRdp,
  RdpAccountant,
  rdpSampledGaussian,
} from "../../fed/accountant.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";

/** [q, σ, rounds, δ, ε, best order] from dp-accounting 0.6.0. */
const DP_ACCOUNTING: [number, number, number, number, number, number][] = [
  [1.0, 1.1, 1, 1e-05, 4.239640834979211, 5.9],
  [1.0, 4.0, 100, 1e-05, 14.132226163159334, 2.8],
  [0.5, 2.0, 10, 1e-05, 4.366906764052282, 5.1],
  [0.25, 0.8, 20, 1e-05, 13.422676004297545, 2.3],
  [0.1, 1.0, 100, 1e-06, 8.921391652814453, 3.3],
  [0.1, 1.1, 1000, 1e-05, 22.824272075126245, 2.1],
  [0.01, 2.5, 50, 1e-05, 0.1447863792989789, 57.0],
  [0.01, 0.7, 10000, 1e-05, 15.689766797291515, 2.4],
  [0.004, 1.1, 5000, 1e-05, 1.4090470954189163, 12.0],
  [0.75, 3.0, 200, 1e-06, 24.2612198355271, 2.4],
  [0.1, 10.0, 1000, 1e-05, 1.3197365962564822, 14.0],
  [0.02, 0.55, 300, 1e-06, 14.410154406272301, 2.3],
];

Deno.test("accountant: ε and its order equal dp-accounting 0.6.0's to 1e-11", () => {
  for (const [q, sigma, rounds, delta, epsilon, order] of DP_ACCOUNTING) {
    const got = new RdpAccountant(q, sigma, delta).epsilon(rounds);
    // Measured agreement is 2e-13 relative (scipy's gammaln/log_ndtr vs fed/special.ts, a few
    // ulp apart, summed over up to a thousand terms); 1e-11 leaves room for that and nothing more.
    assert(
      Math.abs(got.epsilon - epsilon) <= 1e-11 * epsilon,
      `q=${q} σ=${sigma} ${rounds} rounds: ε ${got.epsilon}, dp-accounting ${epsilon}`,
    );
    assertEquals(got.order, order, `q=${q} σ=${sigma}: best order`);
  }
});

Deno.test("accountant: orders whose series never settles are left out, as dp-accounting does", () => {
  // dp-accounting logs "failed to converge" for q = 0.25, σ = 0.8 at orders 1.1 … 1.7.
  const rdp = rdpSampledGaussian(0.25, 0.8);
  const infinite = DEFAULT_RDP_ORDERS.filter((_, k) => rdp[k] === Infinity);
  assertEquals(infinite, [1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]);
  assertEquals(DEFAULT_RDP_ORDERS.length, 99 + 53 + 4);
});

Deno.test("accountant: dp-accounting's own test values", () => {
  // rdp_privacy_accountant_test.py, test_compute_rdp_poisson_sampled_gaussian: q = 0.01,
  // σ = 2.5, 50 steps, checked there with rtol 1e-4.
  const orders = [1.5, 2.5, 5, 50, 100];
  const expected = [6.70579741e-04, 1.08548710e-03, 2.18075656e-03, 2.38460375e-02, 1.67416308e02];
  rdpSampledGaussian(0.01, 2.5, orders).forEach((r, k) => {
    assert(Math.abs(50 * r - expected[k]) <= 1e-4 * expected[k], `order ${orders[k]}: ${50 * r}`);
  });
  // test_compute_epsilon_delta_pure_dp: constant RDP 1.1 at orders 2..32, δ = 1e-5.
  const pure = Array.from({ length: 31 }, (_, k) => 2 + k);
  const result = epsilonFromRdp(pure, pure.map(() => 1.1), 1e-5);
  assert(Math.abs(result.epsilon - 1.32783806176) < 1e-10);
  assertEquals(result.order, 32);
  // test_compute_epsilon_delta_gaussian: σ = 4.530877117 without sampling is (1, 1e-6)-DP over
  // orders 1.001 … 99.999 (they start at 1.0; an order must exceed 1 here).
  const fine = Array.from({ length: 98999 }, (_, k) => 0.001 * (1001 + k));
  const gaussian = epsilonFromRdp(fine, rdpSampledGaussian(1, 4.530877117, fine), 1e-6);
  assert(Math.abs(gaussian.epsilon - 1) < 5e-8, `ε = ${gaussian.epsilon}`);
});

Deno.test("accountant: TF Privacy's published MNIST numbers (classic conversion)", () => {
  // tensorflow/privacy tutorials/README.md: DP-SGD on MNIST, 60000 examples, batch 256,
  // δ = 1e-5, orders [1.1, 1.2, ..., 10.9] + [12, ..., 63] (mnist_dpsgd_tutorial.py's
  // compute_epsilon), steps = epochs·⌊60000/256⌋, converted with the classic
  // ε = min RDP(α) − log δ/(α − 1) of its get_privacy_spent. Published to two decimals:
  // noise 1.12: ε 1.00 after 1 epoch, 1.04 after 2, 2.92 after 60; noise 1.2: 1.20 after 10.
  const orders = [
    ...Array.from({ length: 99 }, (_, x) => 1 + (x + 1) / 10),
    ...Array.from({ length: 52 }, (_, x) => 12 + x),
  ];
  const classic = (sigma: number, epochs: number) => {
    const perStep = rdpSampledGaussian(256 / 60000, sigma, orders);
    const steps = epochs * Math.floor(60000 / 256);
    return Math.min(...orders.map((a, k) => steps * perStep[k] - Math.log(1e-5) / (a - 1)));
  };
  for (
    const [sigma, epochs, published] of [[1.12, 1, 1.0], [1.12, 2, 1.04], [1.12, 60, 2.92], [
      1.2,
      10,
      1.2,
    ]]
  ) {
    const epsilon = classic(sigma, epochs);
    // Rounded to two decimals, as printed.
    assertEquals(
      Math.round(epsilon * 100) / 100,
      published,
      `σ ${sigma}, ${epochs} epochs: ${epsilon}`,
    );
  }
});

Deno.test("accountant: ε grows with every round, from 0; q = 1 is the Gaussian mechanism", () => {
  for (const [q, sigma] of [[0.1, 1.1], [1, 2], [0.5, 0.7]]) {
    const accountant = new RdpAccountant(q, sigma, 1e-5);
    assertEquals(accountant.epsilon(0).epsilon, 0);
    let previous = 0;
    for (let rounds = 1; rounds <= 200; rounds++) {
      const { epsilon } = accountant.epsilon(rounds);
      assert(epsilon > previous, `q=${q} σ=${sigma}: ε(${rounds}) = ${epsilon} ≤ ${previous}`);
      previous = epsilon;
    }
  }
  assertEquals([...rdpSampledGaussian(1, 2, [2, 7.5])], [2 / 8, 7.5 / 8]);
  // Without noise every order is +∞: no privacy after a round, yet none spent before it.
  const noiseless = new RdpAccountant(0.5, 0, 1e-5);
  assertEquals([noiseless.epsilon(0).epsilon, noiseless.epsilon(1).epsilon], [0, Infinity]);
  // Sampling only helps: q < 1 never costs more than q = 1.
  assert(
    new RdpAccountant(0.3, 1, 1e-5).epsilon(10).epsilon <
      new RdpAccountant(1, 1, 1e-5).epsilon(10).epsilon,
  );
  assertThrows(() => new RdpAccountant(1.5, 1, 1e-5), RangeError, "sampling rate");
  assertThrows(() => new RdpAccountant(0.5, 1, 0), RangeError, "δ");
  assertThrows(() => new RdpAccountant(0.5, 1, 1e-5).epsilon(1.5), RangeError, "rounds");
});
