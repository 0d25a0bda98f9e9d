// The MLP of a CoMiGS block: a gated mixture of E LoRA experts sharing one frozen GPT-2 MLP
// (row-vector convention, PEFT shapes, experts' LoRA tensors stacked along a leading E):
//   pre_j = x·W_f + b_f + s·(x·A_fjᵀ)·B_fjᵀ,   h_j = gelu_tanh(pre_j),
//   y = Σ_j g_j·(h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ)
// Fused by linearity, so the two big frozen products run once whatever E is:
//   base = x·W_f + b_f (once),   m = Σ_j g_j·h_j,
//   y = m·W_p (once) + (Σ_j g_j)·b_p + s·Σ_j (g_j·u_pj)·B_pjᵀ,   u_fj = x·A_fjᵀ, u_pj = h_j·A_pjᵀ.
// Backward (each gradient only when asked for), with v_pj = dy·B_pj:
//   dm = dy·W_pᵀ (once),   dh_j = g_j·(dm + s·v_pj·A_pj),   dpre_j = dh_j ⊙ gelu'(pre_j),
//   v_fj = s·dpre_j·B_fj,   dx = (Σ_j dpre_j)·W_fᵀ (once) + Σ_j v_fj·A_fj,
//   dgate_j = dm·h_j + dy·b_p + s·u_pj·v_pj (row-wise dots: dy·y_j without forming y_j),
//   dA_fj = v_fjᵀ·x,  dB_fj = s·dpre_jᵀ·u_fj,  dA_pj = s·(g_j·v_pj)ᵀ·h_j,  dB_pj = s·dyᵀ·(g_j·u_pj).
// The big products go through kernels/matmul.ts; the per-expert low-rank products run in the
// stacked kernels of kernels/lowrank.ts (those of plain LoRA, over E experts), the elementwise
// work in the fused kernels below, built from the same fragments (kernels/tile_codegen.ts):
// forward saves pre_j for every expert ([E, N, H]) and each consumer recomputes h_j = gelu(pre_j)
// on load, which costs compute (cheap here) instead of another [E, N, H] tensor to write and read.
import type { Command } from "../engine/device.ts";
import { ShapeError } from "../engine/errors.ts";
import type { GradTarget, Tape } from "../engine/tape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { geluWgsl } from "./gelu.ts";
import { floatLiteral } from "./literals.ts";
import {
  contract,
  type ContractSpec,
  expand,
  type ExpandSpec,
  outer,
  type OuterSpec,
} from "./lowrank.ts";
import { productCommands } from "./matmul.ts";
import { type Operand, product } from "./matmul_plan.ts";
import {
  expandLoop,
  GATE,
  gateLoads,
  type KernelSource,
  launch,
  Matrix,
  range,
  RowTile,
  stackRow,
  TILE_GROUPS,
  TILE_ROWS,
  WORKGROUP,
  zeroRegisters,
} from "./tile_codegen.ts";
import { MAX_EXPERTS } from "./topk_gate.ts";

export interface MoeMlpWeights {
  fcWeight: Tensor; // [C, H] frozen (c_fc Conv1D weight)
  fcBias: Tensor; // [H]    frozen
  projWeight: Tensor; // [H, C] frozen (c_proj)
  projBias: Tensor; // [C]    frozen
  fcA: Tensor; // [E, r, C]   experts' c_fc lora_A, stacked
  fcB: Tensor; // [E, H, r]   c_fc lora_B
  projA: Tensor; // [E, r, H]   c_proj lora_A
  projB: Tensor; // [E, C, r]   c_proj lora_B
}

interface Dims {
  rows: number;
  embd: number;
  hidden: number;
  rank: number;
  experts: number;
}

/**
 * Forward, per tile of [N, H]: for each expert, pre_j = base + s·u_fj·B_fjᵀ (saved), and the
 * mixture m = Σ_j g_j·gelu(pre_j).
 */
function mixForwardWgsl(d: Dims, scale: number, index: string): KernelSource {
  const { rows, hidden, rank, experts } = d;
  const base = new Matrix("base", hidden, "read");
  const uf = new Matrix("uf", rank, "read");
  const fcB = new Matrix("fcB", rank, "read");
  const pre = new Matrix("pre", hidden, "rw");
  const mix = new Matrix("mix", hidden, "rw");
  const tile = new RowTile(rows, hidden);
  // pre_j of expert e (saved for backward) and its share g_j·gelu(pre_j) of the mixture.
  const perElement = (t: number, g: number) =>
    [
      `let pre${t}${g} = base${t}${g} + ${floatLiteral(scale)} * acc${t}${g};`,
      tile.guard(
        t,
        g,
        pre.store(stackRow(`row0 + ${t}u`, rows, true), `c0 + ${g}u`, `pre${t}${g}`),
      ),
      `mix${t}${g} += g${t} * gelu(pre${t}${g});`,
    ].join("\n    ");
  const matrices = [base, uf, fcB, pre, mix];
  const code = `${geluWgsl("vec4f", true)}
${matrices.map((m) => m.functions()).join("\n")}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  ${tile.start()}
  ${tile.load("base", base)}
  ${zeroRegisters("mix", TILE_ROWS, TILE_GROUPS, "  ")}
  for (var e = 0u; e < ${experts}u; e++) {
    // acc_t_g[c] = u_fe[row0 + t, :] · B_fe[4·(c0 + g) + c, :]
    ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "    ")}
    ${expandLoop(tile, uf, fcB, "wide-major", { stacked: true, gated: false }, "    ")}
    ${gateLoads(tile, experts)}
    ${tile.each(perElement, "    ")}
  }
  ${tile.guardEach((t, g) => mix.store(`row0 + ${t}u`, `c0 + ${g}u`, `mix${t}${g}`))}
}`;
  return {
    bindings: [base.binding, uf.binding, fcB.binding, GATE, pre.binding, mix.binding],
    code,
  };
}

/** Which outputs the backward elementwise kernel writes. */
interface MixBackwardOutputs {
  /** dpre_j for every expert [E, N, H] (for dx, dA_f, dB_f). */
  dpre: boolean;
  /** Σ_j dpre_j [N, H] (for dx's big product). */
  dpreSum: boolean;
  /** Per column tile, Σ over its columns of dm·h_j [colTiles, N, E] (for dgate). */
  dgate: boolean;
}

/**
 * Backward, per tile of [N, H]: dh_j = g_j·(dm + s·v_pj·A_pj), dpre_j = dh_j ⊙ gelu'(pre_j),
 * their sum over experts, and the tile's share of the row dots dm·h_j.
 */
function mixBackwardWgsl(
  d: Dims,
  scale: number,
  out: MixBackwardOutputs,
  index: string,
): KernelSource {
  const { rows, hidden, rank, experts } = d;
  const dm = new Matrix("dm", hidden, "read");
  const pre = new Matrix("pre", hidden, "read");
  const vp = new Matrix("vp", rank, "read");
  const projA = new Matrix("projA", hidden, "read");
  const dpre = new Matrix("dpre", hidden, "rw");
  const dpreSum = new Matrix("dpre_sum", hidden, "rw");
  const written = [...(out.dpre ? [dpre] : []), ...(out.dpreSum ? [dpreSum] : [])];
  const tile = new RowTile(rows, hidden);
  const T = range(TILE_ROWS);
  // A clamped (duplicate) column group must not count twice in the row dots.
  const dotTerm = (t: number, g: number) =>
    tile.ragged && g > 0
      ? `select(0.0, dot(dm${t}${g}, act${t}${g}[0]), c0 + ${g}u < ${tile.groups}u)`
      : `dot(dm${t}${g}, act${t}${g}[0])`;
  const perElement = (t: number, g: number) =>
    [
      `let pre${t}${g} = ${pre.load(stackRow(tile.row(t), rows, true), tile.group(g))};`,
      `let act${t}${g} = gelu_and_slope(pre${t}${g});`,
      `let dpre${t}${g} = g${t} * (dm${t}${g} + ${floatLiteral(scale)} * acc${t}${g}) * ` +
      `act${t}${g}[1];`,
      out.dpre
        ? tile.guard(
          t,
          g,
          dpre.store(stackRow(`row0 + ${t}u`, rows, true), `c0 + ${g}u`, `dpre${t}${g}`),
        )
        : "",
      out.dpreSum ? `dsum${t}${g} += dpre${t}${g};` : "",
      out.dgate ? `dg${t} += ${dotTerm(t, g)};` : "",
    ].filter(Boolean).join("\n    ");
  const code = `${geluWgsl("vec4f", true)}
${[dm, pre, vp, projA, ...written].map((m) => m.functions()).join("\n")}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${tile.invocations}u) { return; }
  let row0 = (id / ${tile.colTiles}u) * ${TILE_ROWS}u;
  let colTile = id % ${tile.colTiles}u;
  let c0 = colTile * ${TILE_GROUPS}u;
  ${tile.load("dm", dm)}
  ${out.dpreSum ? zeroRegisters("dsum", TILE_ROWS, TILE_GROUPS, "  ") : ""}
  for (var e = 0u; e < ${experts}u; e++) {
    // acc_t_g[c] = v_pe[row0 + t, :] · A_pe[:, 4·(c0 + g) + c]
    ${zeroRegisters("acc", TILE_ROWS, TILE_GROUPS, "    ")}
    ${expandLoop(tile, vp, projA, "rank-major", { stacked: true, gated: false }, "    ")}
    ${gateLoads(tile, experts)}
    ${out.dgate ? T.map((t) => `var dg${t} = 0.0;`).join(" ") : ""}
    ${tile.each(perElement, "    ")}
    ${
    out.dgate
      ? T.map((t) =>
        `if (row0 + ${t}u < ${rows}u) { ` +
        `dgate_partial[(colTile * ${rows}u + row0 + ${t}u) * ${experts}u + e] = dg${t}; }`
      ).join("\n    ")
      : ""
  }
  }
  ${
    out.dpreSum
      ? tile.guardEach((t, g) => dpreSum.store(`row0 + ${t}u`, `c0 + ${g}u`, `dsum${t}${g}`))
      : ""
  }
}`;
  const bindings = [
    ...[dm, pre, vp, projA].map((m) => m.binding),
    GATE,
    ...written.map((m) => m.binding),
    ...(out.dgate ? [["dgate_partial", "rw", "array<f32>"] as const] : []),
  ];
  return { bindings, code };
}

/**
 * dgate[n, e] (+)= Σ_tiles partial[tile, n, e] + dy[n]·b_p + s·u_pe[n]·v_pe[n]: dy·y_e, the
 * three terms of expert e's output (frozen product, bias, low-rank delta), in a fixed order.
 */
function dgateWgsl(d: Dims, scale: number, accumulate: boolean, index: string): KernelSource {
  const { rows, embd, rank, experts } = d;
  const dy = new Matrix("dy", embd, "read");
  const bias = new Matrix("bias", embd, "read");
  const up = new Matrix("up", rank, "read");
  const vp = new Matrix("vp", rank, "read");
  const matrices = [dy, bias, up, vp];
  const code = `
${matrices.map((m) => m.functions()).join("\n")}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let id = ${index};
  if (id >= ${rows * experts}u) { return; }
  let n = id / ${experts}u;
  let e = id % ${experts}u;
  var frozen = 0.0;
  for (var t = 0u; t < ${new RowTile(rows, d.hidden).colTiles}u; t++) { frozen += partial[t * ${
    rows * experts
  }u + id]; }
  var biased = 0.0;
  for (var c4 = 0u; c4 < ${dy.groups}u; c4++) { biased += dot(${dy.load("n", "c4")}, ${
    bias.load("0u", "c4")
  }); }
  var low = 0.0;
  for (var q = 0u; q < ${up.groups}u; q++) { low += dot(${up.load(`e * ${rows}u + n`, "q")}, ${
    vp.load(`e * ${rows}u + n`, "q")
  }); }
  dgate[id] = ${accumulate ? "dgate[id] + " : ""}frozen + biased + ${floatLiteral(scale)} * low;
}`;
  const bindings = [
    ["partial", "read", "array<f32>"] as const,
    ...matrices.map((m) => m.binding),
    ["dgate", "rw", "array<f32>"] as const,
  ];
  return { bindings, code };
}

/** A stored [rows, cols] tensor as a matmul operand (used as stored, or transposed). */
function operand(tensor: Tensor, rows: number, cols: number, trans: boolean): Operand {
  return { tensor, rows, cols, trans, batched: false };
}

function checkShapes(x: Tensor, gate: Tensor, w: MoeMlpWeights, scale: number): Dims {
  const [rows, embd] = x.shape;
  const experts = gate.shape[1];
  const hidden = w.fcWeight.shape[1];
  const rank = w.fcA.shape[1];
  const expected: [string, Tensor, number[]][] = [
    ["x", x, [rows, embd]],
    ["gate", gate, [rows, experts]],
    ["fcWeight", w.fcWeight, [embd, hidden]],
    ["fcBias", w.fcBias, [hidden]],
    ["projWeight", w.projWeight, [hidden, embd]],
    ["projBias", w.projBias, [embd]],
    ["fcA", w.fcA, [experts, rank, embd]],
    ["fcB", w.fcB, [experts, hidden, rank]],
    ["projA", w.projA, [experts, rank, hidden]],
    ["projB", w.projB, [experts, embd, rank]],
  ];
  const all = expected.map(([name, t]) => `${name} ${t}`).join(", ");
  const wrong = expected.filter(([_, t, shape]) =>
    t.dtype !== "f32" || t.shape.join() !== shape.join()
  );
  if (x.shape.length !== 2 || gate.shape.length !== 2 || wrong.length > 0) {
    throw new ShapeError(
      `moeMlp: shapes do not fit together (${all}); expected x [N, C], gate [N, E], ` +
        `fcWeight [C, H], fcBias [H], projWeight [H, C], projBias [C], fcA [E, r, C], ` +
        `fcB [E, H, r], projA [E, r, H], projB [E, C, r], all f32` +
        (wrong.length ? `; wrong: ${wrong.map(([name]) => name).join(", ")}` : ""),
    );
  }
  if (experts > MAX_EXPERTS) {
    throw new ShapeError(`moeMlp: ${experts} experts (gate ${gate}); at most ${MAX_EXPERTS}`);
  }
  const trainable = expected.slice(2, 6).filter(([_, t]) => t.requiresGrad);
  if (trainable.length > 0) {
    throw new ShapeError(
      `moeMlp: the base MLP weights must be frozen, but ` +
        `${trainable.map(([name, t]) => `${name} ${t}`).join(", ")} require gradients`,
    );
  }
  if (!Number.isFinite(scale)) throw new ShapeError(`moeMlp: scale ${scale} is not finite`);
  return { rows, embd, hidden, rank, experts };
}

/** y [N, C] = Σ_j gate[n,j]·(h_j·W_p + b_p + s·(h_j·A_pjᵀ)·B_pjᵀ), h_j = gelu_tanh(x·W_f + b_f + s·(x·A_fjᵀ)·B_fjᵀ). */
export function moeMlp(
  tape: Tape,
  x: Tensor, /*[N, C]*/
  gate: Tensor, /*[N, E]*/
  weights: MoeMlpWeights,
  scale: number,
): Tensor {
  const engine = tape.engine;
  const d = checkShapes(x, gate, weights, scale);
  const { rows, embd, hidden, rank, experts } = d;
  const { fcWeight, fcBias, projWeight, projBias, fcA, fcB, projA, projB } = weights;
  /** An unbatched product through kernels/matmul.ts (the frozen base MLP's work). */
  const matmul = (
    label: string,
    a: Operand,
    b: Operand,
    target: GradTarget,
    bias: Tensor | null = null,
  ) => productCommands(engine, product(label, a, b, 1, false, target, bias));
  const overwrite = (tensor: Tensor) => ({ tensor, accumulate: false });
  const base = tape.tensor([rows, hidden], `moe base(${x.label})`);
  const uf = tape.tensor([experts, rows, rank], `moe u_f(${x.label})`);
  const pre = tape.tensor([experts, rows, hidden], `moe pre(${x.label})`);
  const mix = tape.tensor([rows, hidden], `moe mix(${x.label})`);
  const up = tape.tensor([experts, rows, rank], `moe u_p(${x.label})`);
  const y = tape.tensor([rows, embd], `moe mlp(${x.label})`);
  // Every low-rank tensor is a stack of the experts' matrices.
  const stack = { rows, rank, experts, stacked: true };
  const contractE = (label: string, spec: Omit<ContractSpec, keyof typeof stack>, on: Tensor[]) =>
    contract(engine, label, { ...stack, ...spec }, on);
  const expandE = (label: string, spec: Omit<ExpandSpec, keyof typeof stack>, on: Tensor[]) =>
    expand(engine, label, { ...stack, ...spec }, on);
  const forward = [
    ...matmul(
      "moe base = x·W_f + b_f",
      operand(x, rows, embd, false),
      operand(fcWeight, embd, hidden, false),
      overwrite(base),
      fcBias,
    ),
    contractE(
      "moe u_f = x·A_fᵀ",
      { k: embd, actPerExpert: false, actGelu: false, weight: "rank-major", scale: 1 },
      [x, fcA, uf],
    ),
    launch(
      engine,
      "moe pre, mix",
      (index) => mixForwardWgsl(d, scale, index),
      new RowTile(rows, hidden).invocations,
      [base, uf, fcB, gate, pre, mix],
    ),
    contractE(
      "moe u_p = gelu(pre)·A_pᵀ",
      { k: hidden, actPerExpert: true, actGelu: true, weight: "rank-major", scale: 1 },
      [pre, projA, up],
    ),
    ...matmul(
      "moe y = mix·W_p",
      operand(mix, rows, hidden, false),
      operand(projWeight, hidden, embd, false),
      overwrite(y),
    ),
    expandE(
      "moe y += Σg·b_p + s·Σ g·u_p·B_pᵀ",
      { wide: embd, weight: "wide-major", scale, gated: true, bias: true, epilogue: "add" },
      [up, projB, y, gate, projBias],
    ),
  ];

  /** target (+)= sumScale·Σ_n big_e[n]ᵀ ⊗ (g[n, e]·)small_e[n], for each expert e. */
  const outerE = (
    label: string,
    layout: OuterSpec["layout"],
    spec: Omit<OuterSpec, keyof typeof stack | "layout">,
    [big, small]: [Tensor, Tensor],
    sumScale: number,
    target: GradTarget,
  ): Command[] =>
    outer(tape, label, { ...stack, ...spec, layout }, { big, small, gate }, sumScale, target);

  tape.record({
    name: "moe_mlp",
    inputs: [x, gate, fcA, fcB, projA, projB],
    outputs: [y],
    forward,
    backward: (ctx) => {
      const dy = ctx.gradOutput(0);
      const [dx, dgate, dfcA, dfcB, dprojA, dprojB] = range(6).map((i) => ctx.gradInput(i));
      const commands: Command[] = [];
      if (dprojB) {
        const spec = { wide: embd, bigPerExpert: false, bigGelu: false, gated: true };
        commands.push(...outerE("moe dB_p", "wide-major", spec, [dy, up], scale, dprojB));
      }
      const needDpre = dx || dfcA || dfcB;
      if (!needDpre && !dgate && !dprojA) return commands;
      const vp = tape.tensor([experts, rows, rank], `moe v_p(${x.label})`);
      commands.push(contractE(
        "moe v_p = dy·B_p",
        { k: embd, actPerExpert: false, actGelu: false, weight: "k-major", scale: 1 },
        [dy, projB, vp],
      ));
      if (dprojA) {
        const spec = { wide: hidden, bigPerExpert: true, bigGelu: true, gated: true };
        commands.push(...outerE("moe dA_p", "rank-major", spec, [pre, vp], scale, dprojA));
      }
      if (!needDpre && !dgate) return commands;
      const dm = tape.tensor([rows, hidden], `moe dm(${x.label})`);
      commands.push(...matmul(
        "moe dm = dy·W_pᵀ",
        operand(dy, rows, embd, false),
        operand(projWeight, hidden, embd, true),
        overwrite(dm),
      ));
      const outputs = { dpre: !!needDpre, dpreSum: !!dx, dgate: !!dgate };
      const dpre = outputs.dpre ? tape.tensor([experts, rows, hidden], "moe dpre") : null;
      const dpreSum = outputs.dpreSum ? tape.tensor([rows, hidden], "moe Σ dpre") : null;
      const dgatePartial = outputs.dgate
        ? tape.tensor([new RowTile(rows, hidden).colTiles, rows, experts], "moe dgate partials")
        : null;
      const written = [dpre, dpreSum, dgatePartial].filter((t): t is Tensor => t !== null);
      commands.push(launch(
        engine,
        "moe dpre",
        (index) => mixBackwardWgsl(d, scale, outputs, index),
        new RowTile(rows, hidden).invocations,
        [dm, pre, vp, projA, gate, ...written],
      ));
      if (dgate && dgatePartial) {
        commands.push(launch(
          engine,
          "moe dgate",
          (index) => dgateWgsl(d, scale, dgate.accumulate, index),
          rows * experts,
          [dgatePartial, dy, projBias, up, vp, dgate.tensor],
        ));
      }
      if (!dpre) return commands;
      if (dfcB) {
        const spec = { wide: hidden, bigPerExpert: true, bigGelu: false, gated: false };
        commands.push(...outerE("moe dB_f", "wide-major", spec, [dpre, uf], scale, dfcB));
      }
      if (!dx && !dfcA) return commands;
      const vf = tape.tensor([experts, rows, rank], `moe v_f(${x.label})`);
      commands.push(contractE(
        "moe v_f = s·dpre·B_f",
        { k: hidden, actPerExpert: true, actGelu: false, weight: "k-major", scale },
        [dpre, fcB, vf],
      ));
      if (dfcA) {
        const spec = { wide: embd, bigPerExpert: false, bigGelu: false, gated: false };
        commands.push(...outerE("moe dA_f", "rank-major", spec, [x, vf], 1, dfcA));
      }
      if (dx && dpreSum) {
        commands.push(
          ...matmul(
            "moe dx = Σdpre·W_fᵀ",
            operand(dpreSum, rows, hidden, false),
            operand(fcWeight, embd, hidden, true),
            dx,
          ),
          expandE(
            "moe dx += Σ v_f·A_f",
            {
              wide: embd,
              weight: "rank-major",
              scale: 1,
              gated: false,
              bias: false,
              epilogue: "add",
            },
            [vf, fcA, dx.tensor],
          ),
        );
      }
      return commands;
    },
  });
  return y;
}
