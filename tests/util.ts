// Shared test helpers: one engine per test process, a seeded RNG, closeness checks with the
// worst offender named, and central finite differences for checking float64 references.
import { Engine } from "../engine/device.ts";
import type { Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { Mulberry32 } from "../model/rng.ts";

let shared: Promise<Engine> | undefined;

/** The engine all tests in this process share (creating a device per test is slow). */
export function testEngine(): Promise<Engine> {
  shared ??= Engine.create();
  return shared;
}

/**
 * Deno.test for GPU work: WebGPU keeps resources and async ops alive between tests. Each test
 * ends with the GPU idle, passed or failed: work left in flight can outlive the module and abort
 * the test process when it exits (Engine.close).
 */
export function gpuTest(name: string, fn: (engine: Engine) => Promise<void>): void {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const engine = await testEngine();
      try {
        await fn(engine);
      } finally {
        await engine.device.queue.onSubmittedWorkDone();
      }
    },
  });
}

/** The project's PRNG with the samplers tests need. */
export class Rng extends Mulberry32 {
  // Plain loops: Float64Array.from with a map function is ~100× slower in V8.
  uniform(n: number, lo = -1, hi = 1): Float64Array {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * this.next();
    return out;
  }
  normal(n: number, std = 1): Float64Array {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const u = 1 - this.next(), v = this.next();
      out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    }
    return out;
  }
  int(n: number, below: number): Uint32Array {
    return Uint32Array.from({ length: n }, () => Math.floor(this.next() * below));
  }
}

/** A tensor holding `data` that requires gradients: a leaf whose gradient lands in `.grad`. */
export function leaf(
  engine: Engine,
  shape: readonly number[],
  data: ArrayLike<number>,
  label: string,
): Tensor {
  const t = engine.tensor(shape, { data, label });
  t.requiresGrad = true;
  return t;
}

/** Rounds to float32, so references see exactly the inputs the GPU sees. */
export function f32(values: ArrayLike<number>): Float64Array {
  const out = new Float64Array(values.length);
  out.set(new Float32Array(values as ArrayLike<number>));
  return out;
}

/**
 * Asserts |got − ref| ≤ atol + rtol·|ref| everywhere (llm.c's rule), naming the worst element.
 * Also fails on NaN or on a length mismatch.
 */
export function assertClose(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  tol: { atol: number; rtol: number },
  what: string,
): void {
  if (got.length !== ref.length) {
    throw new Error(`${what}: got ${got.length} values, reference has ${ref.length}`);
  }
  let worst = -1, worstExcess = 0;
  for (let i = 0; i < ref.length; i++) {
    const allowed = tol.atol + tol.rtol * Math.abs(ref[i]);
    const err = Math.abs(got[i] - ref[i]);
    if (!(err <= allowed)) {
      const excess = Number.isNaN(err) ? Infinity : err / allowed;
      if (worst < 0 || excess > worstExcess) [worst, worstExcess] = [i, excess];
    }
  }
  if (worst >= 0) {
    throw new Error(
      `${what}: element ${worst} is ${got[worst]}, reference ${ref[worst]} ` +
        `(|err| ${Math.abs(got[worst] - ref[worst]).toExponential(2)} > atol ${tol.atol} + ` +
        `rtol ${tol.rtol}·|ref|)`,
    );
  }
}

/**
 * Central finite differences of a scalar float64 function at `x`, at the coordinates listed
 * (all by default). Used to prove the analytic float64 references, never the GPU directly.
 */
export function finiteDifference(
  f: (x: Float64Array) => number,
  x: Float64Array,
  coordinates: Iterable<number> = x.keys(),
  h = 1e-6,
): Map<number, number> {
  const out = new Map<number, number>();
  for (const i of coordinates) {
    const saved = x[i];
    x[i] = saved + h;
    const up = f(x);
    x[i] = saved - h;
    const down = f(x);
    x[i] = saved;
    out.set(i, (up - down) / (2 * h));
  }
  return out;
}

/** Checks an analytic gradient against central finite differences at `count` sampled points. */
export function assertGradMatchesFD(
  f: (x: Float64Array) => number,
  x: Float64Array,
  analytic: ArrayLike<number>,
  what: string,
  opts: { count?: number; seed?: number; atol?: number; rtol?: number } = {},
): void {
  const rng = new Rng(opts.seed ?? 1);
  const count = Math.min(opts.count ?? 40, x.length);
  const picks = count === x.length
    ? [...x.keys()]
    : Array.from({ length: count }, () => Math.floor(rng.next() * x.length));
  const fd = finiteDifference(f, x, picks);
  const got = picks.map((i) => analytic[i]);
  const ref = picks.map((i) => fd.get(i)!);
  // Central differences in float64 with h = 1e-6 are accurate to ~1e-8 for smooth functions.
  assertClose(got, ref, { atol: opts.atol ?? 1e-6, rtol: opts.rtol ?? 1e-5 }, `${what} vs FD`);
}

/** Σ a_i·b_i in float64: the scalar whose gradient is the vector-Jacobian product with b. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/**
 * An identity op (y = copy of x) whose backward only captures the gradient the tape assigns to
 * y, so a test can read what the next op wrote into an intermediate gradient (an overwrite
 * target). Its only differentiable input is a one-element anchor, so x needs no gradient and
 * none as large as x is allocated.
 */
export function probe(tape: Tape, x: Tensor): { y: Tensor; grad: () => Tensor } {
  const anchor = tape.tensor([1], "probe anchor");
  anchor.requiresGrad = true;
  const y = tape.tensor(x.shape, `probe(${x.label})`);
  let grad: Tensor | undefined;
  tape.record({
    name: "probe",
    inputs: [anchor],
    outputs: [y],
    forward: [{ kind: "copy", label: "probe", src: x, dst: y }],
    backward: (ctx) => {
      grad = ctx.gradOutput(0);
      return [];
    },
  });
  return { y, grad: () => grad! };
}
