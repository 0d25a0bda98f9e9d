// Packs one matmul operand into an rgba32float texture for the texture matmul kernel.
// The operand is op(X) (X or Xᵀ) of a row-major matrix X stored in a tensor view; texel (x, y)
// of a slab holds op(X)[y][4x .. 4x+3], and zero wherever that lies outside op(X). Slabs (one
// per batch matrix) are laid side by side along x or stacked along y. Every texel of the texture
// is written, padding included, so scratch textures can be shared between matmuls.
import type { Command, Engine } from "../engine/device.ts";
import type { Tensor } from "../engine/tensor.ts";
import { declareKernel } from "./kernel.ts";

const WORKGROUP = 64;

export interface PackSpec {
  label: string;
  /** The tensor view holding X; element 0 is op(X)[0][0] of the first slab. */
  src: Tensor;
  /** Storage row length of X. */
  ld: number;
  /** Elements between consecutive slabs' matrices in `src` (0: every slab packs the same one). */
  slabStride: number;
  trans: boolean;
  /** Extent of op(X) in this block: rows × cols; the slab beyond is zero padding. */
  rows: number;
  cols: number;
  /** Slab size in texels (width, a quarter of the padded cols) and rows (height). */
  slabWidth: number;
  slabHeight: number;
  slabs: number;
  slabAxis: "x" | "y";
  texture: GPUTexture;
}

/** Whether X can be read as vec4 runs along its storage rows: everything 4-aligned. */
function vectorisable(spec: PackSpec): boolean {
  return spec.ld % 4 === 0 && spec.slabStride % 4 === 0;
}

/** Whether an invocation packs a 4×4 block (transposed and vectorisable), not one texel. */
function blocked(spec: PackSpec): boolean {
  return spec.trans && vectorisable(spec);
}

function texelCoord(spec: PackSpec, x: string, y: string): string {
  return spec.slabAxis === "x"
    ? `vec2u(slab * ${spec.slabWidth}u + ${x}, ${y})`
    : `vec2u(${x}, slab * ${spec.slabHeight}u + ${y})`;
}

/**
 * A pack kernel, the same for every layout but for `body`, which stores the texels: invocation
 * (x, y, slab) works on texel column x of one slab (and texel row y, or block row y4 when
 * blocked), `base` being the slab's first element in src. src is read as vec4 runs when
 * vectorisable, else element by element through element(base, r, c) = op(X)[r][c], zero outside
 * op(X): X[r][c], or X[c][r] when transposed.
 */
function packKernel(spec: PackSpec, body: string[]): string {
  const vec = vectorisable(spec);
  const index = spec.trans ? `c * ${spec.ld}u + r` : `r * ${spec.ld}u + c`;
  const element = vec ? "" : `
fn element(base: u32, r: u32, c: u32) -> f32 {
  return select(0.0, src[base + ${index}], r < ${spec.rows}u && c < ${spec.cols}u);
}`;
  return `${element}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let x = gid.x;
  let ${blocked(spec) ? "y4" : "y"} = gid.y;
  let slab = gid.z;
  if (x >= ${spec.slabWidth}u) { return; }
  let base = slab * ${spec.slabStride}u;
${body.join("\n")}
}`;
}

/** Not transposed: texel (x, y) is X[y][4x ..], one vec4 load when aligned. */
function directWgsl(spec: PackSpec): string {
  const load = vectorisable(spec)
    ? `select(vec4f(0.0), src[(base + y * ${spec.ld}u) / 4u + x], ` +
      `y < ${spec.rows}u && 4u * x < ${spec.cols}u)`
    : `vec4f(element(base, y, 4u * x), element(base, y, 4u * x + 1u), ` +
      `element(base, y, 4u * x + 2u), element(base, y, 4u * x + 3u))`;
  return packKernel(spec, [`  textureStore(tex, ${texelCoord(spec, "x", "y")}, ${load});`]);
}

/**
 * Transposed: op(X)[r][c] = X[c][r]. Aligned, one invocation reads a 4×4 block as
 * four vec4 runs of X's rows 4x..4x+3 and writes it transposed as four texels (x, 4·y4 + i);
 * otherwise each texel gathers its four elements one by one.
 */
function transposedWgsl(spec: PackSpec): string {
  if (blocked(spec)) {
    const rowLoads = [0, 1, 2, 3].map((j) =>
      `  let x${j} = select(vec4f(0.0), src[(base + (4u * x + ${j}u) * ${spec.ld}u) / 4u + y4], ` +
      `4u * x + ${j}u < ${spec.cols}u && 4u * y4 < ${spec.rows}u);`
    );
    const stores = [0, 1, 2, 3].map((i) => {
      const c = "xyzw"[i];
      return `  textureStore(tex, ${
        texelCoord(spec, "x", `4u * y4 + ${i}u`)
      }, vec4f(x0.${c}, x1.${c}, x2.${c}, x3.${c}));`;
    });
    return packKernel(spec, [...rowLoads, ...stores]);
  }
  return packKernel(spec, [
    "  let texel = vec4f(element(base, y, 4u * x), element(base, y, 4u * x + 1u),",
    "                    element(base, y, 4u * x + 2u), element(base, y, 4u * x + 3u));",
    `  textureStore(tex, ${texelCoord(spec, "x", "y")}, texel);`,
  ]);
}

/** One dispatch that fills every texel of `spec.texture`. */
export function packCommand(engine: Engine, spec: PackSpec): Command {
  const code = spec.trans ? transposedWgsl(spec) : directWgsl(spec);
  const kernel = declareKernel(engine, `pack ${spec.label}`, [
    ["src", "read", `array<${vectorisable(spec) ? "vec4f" : "f32"}>`],
    ["tex", "tex-write"],
  ], code);
  const view = spec.texture.createView();
  const groupsY = blocked(spec) ? spec.slabHeight / 4 : spec.slabHeight;
  return engine.dispatch(`pack ${spec.label}`, kernel, [spec.src, view], [
    Math.ceil(spec.slabWidth / WORKGROUP),
    groupsY,
    spec.slabs,
  ]);
}
