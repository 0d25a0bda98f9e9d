// A plain copy y = x: the memory-bandwidth yardstick for the memory-bound kernels (elementwise,
// layernorm, adamw). Three ways to read x: storage buffer one f32 per load, storage buffer one
// vec4 per load, and a read-only rgba32float storage texture; y is always a vec4 storage buffer
// except in the scalar case.
import type { BenchCase, BenchSetup } from "../case.ts";
import type { Engine, Resource } from "../../engine/device.ts";
import type { BindingKind } from "../../engine/bindings.ts";
import { grid1d } from "../../kernels/grid.ts";
import { Rng } from "../../tests/util.ts";

const WORKGROUP = 64;

type Variant = "storage-scalar" | "storage-vec4" | "texture";

function storageWgsl(units: number, type: "f32" | "vec4f", index: string): string {
  return `
@group(0) @binding(0) var<storage, read> x: array<${type}>;
@group(0) @binding(1) var<storage, read_write> y: array<${type}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i >= ${units}u) { return; }
  y[i] = x[i];
}`;
}

/** One invocation per texel (4 floats); texel (c, r) is y[r·width + c]. */
function textureWgsl(width: number, rows: number): string {
  return `
@group(0) @binding(0) var x: texture_storage_2d<rgba32float, read>;
@group(0) @binding(1) var<storage, read_write> y: array<vec4f>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let r = gid.y;
  if (c >= ${width}u || r >= ${rows}u) { return; }
  y[r * ${width}u + c] = textureLoad(x, vec2u(c, r));
}`;
}

function setup(engine: Engine, variant: Variant, rows: number, cols: number): BenchSetup {
  const n = rows * cols;
  const values = Float32Array.from(new Rng(rows + cols).uniform(n));
  const y = engine.tensor([rows, cols], { label: "y" });
  let source: Resource;
  let release: () => void;
  let code: string;
  let bindings: BindingKind[];
  let workgroups: [number, number];
  if (variant === "texture") {
    const width = cols / 4;
    const texture = engine.texture(width, rows, "x");
    engine.device.queue.writeTexture({ texture }, values, { bytesPerRow: width * 16 }, [
      width,
      rows,
    ]);
    source = texture.createView();
    release = () => engine.releaseTexture(texture);
    code = textureWgsl(width, rows);
    bindings = ["tex-read", "rw"];
    workgroups = [Math.ceil(width / WORKGROUP), rows];
  } else {
    const x = engine.tensor([rows, cols], { data: values, label: "x" });
    source = x;
    release = () => x.dispose();
    const units = variant === "storage-vec4" ? n / 4 : n;
    const grid = grid1d(units, WORKGROUP);
    code = storageWgsl(units, variant === "storage-vec4" ? "vec4f" : "f32", grid.index);
    bindings = ["read", "rw"];
    workgroups = grid.workgroups;
  }
  const kernel = engine.kernel(`copy ${variant}`, code, bindings);
  return {
    commands: [engine.dispatch(`copy ${variant}`, kernel, [source, y], workgroups)],
    check: async () => {
      const got = await engine.readF32(y);
      return got.every((v, i) => v === values[i]);
    },
    bytes: 2 * n * 4,
    dispose: () => {
      release();
      y.dispose();
    },
  };
}

const variants: Variant[] = ["storage-scalar", "storage-vec4", "texture"];

export const cases: BenchCase[] = [[1024, 768], [1024, 3072]].flatMap(([rows, cols]) =>
  variants.map((variant): BenchCase => ({
    kernel: "copy",
    variant,
    shape: { rows, cols },
    setup: (engine) => Promise.resolve(setup(engine, variant, rows, cols)),
  }))
);
