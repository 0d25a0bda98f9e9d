// The kinds of resource a kernel binds, in binding order, and their bind-group layout entries.
// Layouts are explicit (not "auto") so bind groups can be built before a pipeline has compiled.

export type BindingKind =
  | "read" // var<storage, read>
  | "rw" // var<storage, read_write>
  | "uniform" // var<uniform>
  | "tex-read" // texture_storage_2d<rgba32float, read>
  | "tex-write"; // texture_storage_2d<rgba32float, write>

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
