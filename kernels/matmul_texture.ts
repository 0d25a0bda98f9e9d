// The texture matmul, lavapipe's fast path: pack kernels copy op(A) and op(B) of a block into
// rgba32float textures (K and N in texels of 4, zero-padded to whole tiles), then the kernel reads
// them with textureLoad, which lavapipe vectorises, where storage-buffer loads are a loop over
// lanes. Each invocation accumulates a TM×TN register tile; each step of its k loop loads one
// texel (4 k's) of each of its TM rows of A and the 4×(TN/4) texels of B they meet, then runs
// the 4 fma's of every accumulator back to back (measured faster than sweeping the tile 4 times).
import type { Command, Engine } from "../engine/device.ts";
import { roundUp } from "./chunks.ts";
import { declareKernel } from "./kernel.ts";
import { epilogueBindings, epilogueFunctions, epilogueWgsl } from "./matmul_epilogue.ts";
import type { Block, VariantLimits } from "./matmul_plan.ts";
import { packCommand } from "./pack.ts";

/** Register tile per invocation (rows × cols) and invocations per workgroup (x × y). */
const TM = 8, TN = 8, LX = 8, LY = 8;
const TN4 = TN / 4, BM = TM * LY, BN = TN * LX;

/** The padded block as packed: rows of A and columns of B to whole tiles, K to whole texels. */
interface Padded {
  Mp: number;
  Np: number;
  Kp: number;
}

function padded(block: { M: number; N: number; K: number }): Padded {
  return { Mp: roundUp(block.M, BM), Np: roundUp(block.N, BN), Kp: roundUp(block.K, 4) };
}

/** Batch slabs stacked in each texture: A stacks batches along y, or along K (x) when reducing. */
function slabCounts(block: Pick<Block, "g" | "reduce" | "a" | "b">) {
  return {
    aAlongY: !block.reduce && block.a.batched ? block.g : 1,
    aAlongX: block.reduce ? block.g : 1,
    bAlongY: block.reduce || block.b.batched ? block.g : 1,
  };
}

/**
 * Blocks whose packed textures stay within `maxSide` texels per side: A is Mp × Kp/4 texels,
 * B is Np/4 × Kp, and batch groups stack their slabs.
 */
export function textureLimits(maxSide: number): VariantLimits {
  return {
    maxM: Math.floor(maxSide / BM) * BM,
    maxN: Math.floor((4 * maxSide) / BN) * BN,
    maxK: Math.floor(maxSide / 4) * 4,
    maxGroup: (dims) => {
      const { Mp, Kp } = padded(dims);
      let max = 65535;
      if (!dims.reduce && dims.aBatched) max = Math.min(max, Math.floor(maxSide / Mp));
      if (dims.reduce || dims.bBatched) max = Math.min(max, Math.floor(maxSide / Kp));
      return max;
    },
  };
}

function textureWgsl(block: Block, { Mp, Kp }: Padded): string {
  const slabs = slabCounts(block);
  const k4Count = (slabs.aAlongX * Kp) / 4;
  const step: string[] = [];
  for (let i = 0; i < TM; i++) {
    step.push(`let a_${i} = textureLoad(a, vec2u(k4, a_row0 + ${i}u));`);
  }
  for (let kk = 0; kk < 4; kk++) {
    for (let j = 0; j < TN4; j++) {
      step.push(
        `let b_${kk}_${j} = textureLoad(b, vec2u(col40 + ${j}u, b_row0 + 4u * k4 + ${kk}u));`,
      );
    }
  }
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN4; j++) {
      let sum = `acc_${i}_${j}`;
      for (let kk = 0; kk < 4; kk++) sum = `fma(vec4f(a_${i}.${"xyzw"[kk]}), b_${kk}_${j}, ${sum})`;
      step.push(`acc_${i}_${j} = ${sum};`);
    }
  }
  const accs: string[] = [];
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN4; j++) accs.push(`  var acc_${i}_${j} = vec4f(0.0);`);
  }
  return `${epilogueFunctions(block)}
@compute @workgroup_size(${LX * LY})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let row0 = wg.y * ${BM}u + (li / ${LX}u) * ${TM}u;
  let col40 = wg.x * ${BN / 4}u + (li % ${LX}u) * ${TN4}u;
  let col0 = 4u * col40;
  let z = ${block.reduce ? "0u" : "wg.z"};
  let a_row0 = ${slabs.aAlongY > 1 ? `z * ${Mp}u + ` : ""}row0;
  let b_row0 = ${!block.reduce && slabs.bAlongY > 1 ? `z * ${Kp}u` : "0u"};
${accs.join("\n")}
  for (var k4 = 0u; k4 < ${k4Count}u; k4++) {
${step.map((s) => "    " + s).join("\n")}
  }
${epilogueWgsl(block, TM, TN4)}
}`;
}

/** Scratch textures shared by all matmuls of an engine, one per role and size. */
const scratch = new WeakMap<Engine, Map<string, GPUTexture>>();

function scratchTexture(engine: Engine, role: string, width: number, height: number): GPUTexture {
  let textures = scratch.get(engine);
  if (!textures) scratch.set(engine, textures = new Map());
  const key = `${role} ${width}×${height}`;
  let texture = textures.get(key);
  if (!texture) textures.set(key, texture = engine.texture(width, height, `matmul ${key}`));
  return texture;
}

/**
 * Commands for a product's blocks, in order: each block packs the operands whose texture does
 * not already hold them (the planner orders blocks so big operands are packed once), then runs
 * the kernel.
 */
export function textureBlocksCommands(engine: Engine, blocks: readonly Block[]): Command[] {
  const holds = new Map<GPUTexture, string>();
  const commands: Command[] = [];
  for (const block of blocks) {
    const pad = padded(block);
    const slabs = slabCounts(block);
    const aTexture = scratchTexture(
      engine,
      "A",
      (slabs.aAlongX * pad.Kp) / 4,
      slabs.aAlongY * pad.Mp,
    );
    const bTexture = scratchTexture(engine, "B", pad.Np / 4, slabs.bAlongY * pad.Kp);
    if (holds.get(aTexture) !== block.aKey) {
      commands.push(packCommand(engine, {
        label: `${block.label} A`,
        src: block.a.view,
        ld: block.a.ld,
        slabStride: block.a.batchStride,
        trans: block.a.trans,
        rows: block.M,
        cols: block.K,
        slabWidth: pad.Kp / 4,
        slabHeight: pad.Mp,
        slabs: slabs.aAlongX * slabs.aAlongY,
        slabAxis: block.reduce ? "x" : "y",
        texture: aTexture,
      }));
      holds.set(aTexture, block.aKey);
    }
    if (holds.get(bTexture) !== block.bKey) {
      commands.push(packCommand(engine, {
        label: `${block.label} B`,
        src: block.b.view,
        ld: block.b.ld,
        slabStride: block.b.batchStride,
        trans: block.b.trans,
        rows: block.K,
        cols: block.N,
        slabWidth: pad.Np / 4,
        slabHeight: pad.Kp,
        slabs: slabs.bAlongY,
        slabAxis: "y",
        texture: bTexture,
      }));
      holds.set(bTexture, block.bKey);
    }
    const kernel = declareKernel(engine, "matmul texture", [
      ["a", "tex-read"],
      ["b", "tex-read"],
      ...epilogueBindings(block),
    ], textureWgsl(block, pad));
    const resources = [aTexture.createView(), bTexture.createView(), block.out.view];
    if (block.bias) resources.push(block.bias);
    commands.push(
      engine.dispatch(`${block.label} (texture)`, kernel, resources, [
        pad.Np / BN,
        pad.Mp / BM,
        block.reduce ? 1 : block.g,
      ]),
    );
  }
  return commands;
}
