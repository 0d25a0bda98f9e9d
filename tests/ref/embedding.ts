// Float64 reference for the embedding lookup (a row gather) and its vector-Jacobian product
// (a scatter-add of the upstream rows into the table rows they came from).

/** out[n] = table[ids[n]], rows of length `cols`. */
export function embeddingRef(
  table: ArrayLike<number>,
  ids: ArrayLike<number>,
  cols: number,
): Float64Array {
  const out = new Float64Array(ids.length * cols);
  for (let n = 0; n < ids.length; n++) {
    for (let c = 0; c < cols; c++) out[n * cols + c] = table[ids[n] * cols + c];
  }
  return out;
}

/** dtable[v] = Σ_{n : ids[n] = v} dout[n], for a table of `vocab` rows. */
export function embeddingBackwardRef(
  dout: ArrayLike<number>,
  ids: ArrayLike<number>,
  vocab: number,
  cols: number,
): Float64Array {
  const dtable = new Float64Array(vocab * cols);
  for (let n = 0; n < ids.length; n++) {
    for (let c = 0; c < cols; c++) dtable[ids[n] * cols + c] += dout[n * cols + c];
  }
  return dtable;
}
