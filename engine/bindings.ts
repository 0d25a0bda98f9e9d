// The resources a kernel binds, in binding order: one list gives both the WGSL declarations and
// the bind-group layout, so the two cannot drift. Layouts are explicit (not "auto") so bind
// groups can be built before a pipeline has compiled.

export type BindingKind =
  | "read" // var<storage, read>
  | "rw" // var<storage, read_write>
  | "uniform" // var<uniform>
  | "tex-read" // texture_storage_2d<rgba32float, read>
  | "tex-write"; // texture_storage_2d<rgba32float, write>

/**
 * One binding of a kernel: its WGSL name, its kind and, for buffers, its WGSL type (e.g.
 * "array<vec4f>", or a struct's name for a uniform); textures are rgba32float.
 */
export type Binding =
  | readonly [name: string, kind: "read" | "rw" | "uniform", type: string]
  | readonly [name: string, kind: "tex-read" | "tex-write"];

/** `@group(0) @binding(i)` declarations of `bindings`, binding i being the list's entry i. */
export function bindingDeclarations(bindings: readonly Binding[]): string {
  return bindings.map((binding, i) => {
    const [name, kind] = binding;
    const at = `@group(0) @binding(${i})`;
    switch (kind) {
      case "read":
        return `${at} var<storage, read> ${name}: ${binding[2]};`;
      case "rw":
        return `${at} var<storage, read_write> ${name}: ${binding[2]};`;
      case "uniform":
        return `${at} var<uniform> ${name}: ${binding[2]};`;
      case "tex-read":
        return `${at} var ${name}: texture_storage_2d<rgba32float, read>;`;
      case "tex-write":
        return `${at} var ${name}: texture_storage_2d<rgba32float, write>;`;
    }
  }).join("\n");
}

/** The kinds of `bindings`, in binding order: what the bind-group layout is made from. */
export function bindingKinds(bindings: readonly Binding[]): BindingKind[] {
  return bindings.map(([, kind]) => kind);
}

/** How many storage buffers (read and rw) `kinds` bind: what maxStorageBuffersPerShaderStage caps. */
export function storageBufferCount(kinds: readonly BindingKind[]): number {
  return kinds.filter((kind) => kind === "read" || kind === "rw").length;
}

export function bindGroupLayoutEntries(kinds: readonly BindingKind[]): GPUBindGroupLayoutEntry[] {
  return kinds.map((kind, binding): GPUBindGroupLayoutEntry => {
    const visibility = GPUShaderStage.COMPUTE;
    switch (kind) {
      case "read":
        return { binding, visibility, buffer: { type: "read-only-storage" } };
      case "rw":
        return { binding, visibility, buffer: { type: "storage" } };
      case "uniform":
        return { binding, visibility, buffer: { type: "uniform" } };
      case "tex-read":
        return {
          binding,
          visibility,
          storageTexture: { access: "read-only", format: "rgba32float" },
        };
      case "tex-write":
        return {
          binding,
          visibility,
          storageTexture: { access: "write-only", format: "rgba32float" },
        };
    }
  });
}
