// Spreading n invocations over a workgroup grid that respects the 65,535-per-dimension limit.

export interface Grid {
  workgroups: [number, number];
  /** WGSL expression for the flat invocation index, given `gid: vec3u` (global_invocation_id). */
  index: string;
}

/** A 2-D grid of 1-D workgroups of `workgroupSize` covering at least n invocations. */
export function grid1d(n: number, workgroupSize: number, maxPerDim = 65535): Grid {
  const groups = Math.ceil(n / workgroupSize);
  const x = Math.min(groups, maxPerDim);
  const y = Math.ceil(groups / x);
  return { workgroups: [x, y], index: `(gid.x + gid.y * ${x * workgroupSize}u)` };
}
