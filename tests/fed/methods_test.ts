// What each method shares (method.md §4's table) and the expert learning-rate schedule (§3).
import { expertLr } from "../../fed/client.ts";
import { isShared, METHOD_SPECS, METHODS } from "../../fed/methods.ts";
import { assert, assertEquals } from "../assert.ts";

Deno.test("methods share what method.md's table says, and routers never", () => {
  const shared = (m: keyof typeof METHOD_SPECS) =>
    (["attention", "generalist", "specialist", "router"] as const).filter((role) =>
      isShared(METHOD_SPECS[m], role)
    );
  assertEquals(shared("comigs-1g1s"), ["attention", "generalist"]);
  assertEquals(shared("comigs-1gxs"), ["attention", "generalist"]);
  assertEquals(shared("pfedmoe"), ["attention", "generalist"]);
  assertEquals(shared("comigs-2g"), ["attention", "generalist", "specialist"]);
  assertEquals(shared("fedavg"), ["attention", "generalist", "specialist"]);
  assertEquals(shared("pcl"), ["attention", "generalist", "specialist"]);
  for (const m of ["comigs-2s", "local", "centralized", "pretrained"] as const) {
    assertEquals(shared(m), []);
  }
  assertEquals(METHODS.length, 10);
  assertEquals(METHOD_SPECS.pcl.personal, true);
  assertEquals(METHOD_SPECS.pfedmoe.router, "joint");
  assertEquals(METHOD_SPECS.fedavg.router, "uniform");
  assertEquals(METHOD_SPECS["comigs-1g1s"].router, "alternating");
});

Deno.test("expert learning rate: cosine from lr to lr/10 over R·T steps, no warm-up", () => {
  const schedule = { batch: 1, seq: 1, lr: 2e-3, totalSteps: 100, routerEvery: 1, routerSteps: 1 };
  assertEquals(expertLr(schedule, 0), 2e-3);
  assert(Math.abs(expertLr(schedule, 50) - 1.1e-3) < 1e-12);
  assert(Math.abs(expertLr(schedule, 100) - 2e-4) < 1e-12);
  for (let t = 1; t <= 100; t++) assert(expertLr(schedule, t) < expertLr(schedule, t - 1));
});
