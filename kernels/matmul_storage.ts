// The storage-buffer matmul (for real GPUs). A block is one dispatch's share of a product (see
// kernels/matmul_plan.ts): per batch z,
//   C_z (+)= op(A_z)·op(B_z) (+ bias)        or, reducing over the batch, C (+)= Σ_z op(A_z)·op(B_z).
// Each invocation accumulates a TM×TN register tile, reading 4×4 blocks of A and B as vec4 runs
// along their storage rows where the layout allows. Loads outside the block read zero.
import type { Command, Engine } from "../engine/device.ts";
import { declareKernel } from "./kernel.ts";
import { epilogueBindings, epilogueFunctions, epilogueWgsl } from "./matmul_epilogue.ts";
import { type Block, type BlockOperand, isVec4Layout, type VariantLimits } from "./matmul_plan.ts";

/** Register tile per invocation (rows × cols) and invocations per workgroup (x × y). */
const TM = 8, TN = 8, LX = 8, LY = 8;
const BM = TM * LY, BN = TN * LX;

/** Blocks as large as a dispatch grid covers (65,535 workgroups per dimension); any K. */
export function storageLimits(): VariantLimits {
  return { maxM: 65535 * BM, maxN: 65535 * BN, maxK: Infinity, maxGroup: () => 65535 };
}

/**
 * WGSL for `fn load_<name>(z, r, c) -> vec4f`: storage row r, columns c..c+3 of the operand's
 * matrix z within the block (zero outside its `rows` × `cols` storage extent).
 */
function operandLoader(name: string, op: BlockOperand, rows: number, cols: number): string {
  const base = `z * ${op.batchStride}u + r * ${op.ld}u + c`;
  if (isVec4Layout(op)) {
    // Aligned: the four columns are all inside or all outside (cols is a multiple of 4).
    return `fn load_${name}(z: u32, r: u32, c: u32) -> vec4f {
  return select(vec4f(0.0), ${name}[(${base}) / 4u], r < ${rows}u && c < ${cols}u);
}`;
  }
  const lane = (e: number) =>
    `select(0.0, ${name}[${base} + ${e}u], r < ${rows}u && c + ${e}u < ${cols}u)`;
  return `fn load_${name}(z: u32, r: u32, c: u32) -> vec4f {
  return vec4f(${[0, 1, 2, 3].map(lane).join(", ")});
}`;
}

function storageWgsl(block: Block): string {
  const { a, b } = block;
  const TN4 = TN / 4;
  // Storage extents of the block: A is M×K (K×M transposed), B is K×N (N×K transposed).
  const aRows = a.trans ? block.K : block.M, aCols = a.trans ? block.M : block.K;
  const bRows = b.trans ? block.N : block.K, bCols = b.trans ? block.K : block.N;
  const step: string[] = [];
  // a(i, kk): op(A)[row0 + i][k + kk].
  if (a.trans) {
    for (let kk = 0; kk < 4; kk++) {
      for (let q = 0; q < TM / 4; q++) {
        step.push(`let at_${kk}_${q} = load_a(z, k + ${kk}u, row0 + ${4 * q}u);`);
      }
    }
  } else {
    for (let i = 0; i < TM; i++) step.push(`let ar_${i} = load_a(z, row0 + ${i}u, k);`);
  }
  const aValue = (i: number, kk: number) =>
    a.trans ? `at_${kk}_${i >> 2}.${"xyzw"[i & 3]}` : `ar_${i}.${"xyzw"[kk]}`;
  // bRow(kk, j): op(B)[k + kk][col0 + 4j .. +3].
  if (b.trans) {
    for (let n = 0; n < TN; n++) step.push(`let bt_${n} = load_b(z, col0 + ${n}u, k);`);
  } else {
    for (let kk = 0; kk < 4; kk++) {
      for (let j = 0; j < TN4; j++) {
        step.push(`let br_${kk}_${j} = load_b(z, k + ${kk}u, col0 + ${4 * j}u);`);
      }
    }
  }
  const bRow = (kk: number, j: number) =>
    b.trans
      ? `vec4f(${[0, 1, 2, 3].map((e) => `bt_${4 * j + e}.${"xyzw"[kk]}`).join(", ")})`
      : `br_${kk}_${j}`;
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN4; j++) {
      let sum = `acc_${i}_${j}`;
      for (let kk = 0; kk < 4; kk++) sum = `fma(vec4f(${aValue(i, kk)}), ${bRow(kk, j)}, ${sum})`;
      step.push(`acc_${i}_${j} = ${sum};`);
    }
  }
  const accs: string[] = [];
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN4; j++) accs.push(`  var acc_${i}_${j} = vec4f(0.0);`);
  }
  const kLoop = `for (var k = 0u; k < ${block.K}u; k += 4u) {
${step.map((s) => "      " + s).join("\n")}
    }`;
  // Reducing over the batch: the batch loop is the outer part of the sum.
  const body = block.reduce
    ? `  for (var z = 0u; z < ${block.g}u; z++) {
    ${kLoop}
  }
  let z = 0u;`
    : `  let z = wg.z;
  {
    ${kLoop}
  }`;
  return `${epilogueFunctions(block)}
${operandLoader("a", a, aRows, aCols)}
${operandLoader("b", b, bRows, bCols)}
@compute @workgroup_size(${LX * LY})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let row0 = wg.y * ${BM}u + (li / ${LX}u) * ${TM}u;
  let col0 = wg.x * ${BN}u + (li % ${LX}u) * ${TN}u;
${accs.join("\n")}
${body}
${epilogueWgsl(block, TM, TN4)}
}`;
}

/** The single dispatch computing one block on storage buffers. */
export function storageBlockCommands(engine: Engine, block: Block): Command[] {
  const operand = (name: string, op: BlockOperand) =>
    [name, "read", `array<${isVec4Layout(op) ? "vec4f" : "f32"}>`] as const;
  const kernel = declareKernel(engine, "matmul storage", [
    operand("a", block.a),
    operand("b", block.b),
    ...epilogueBindings(block),
  ], storageWgsl(block));
  const resources = [block.a.view, block.b.view, block.out.view];
  if (block.bias) resources.push(block.bias);
  return [
    engine.dispatch(`${block.label} (storage)`, kernel, resources, [
      Math.ceil(block.N / BN),
      Math.ceil(block.M / BM),
      block.reduce ? 1 : block.g,
    ]),
  ];
}
