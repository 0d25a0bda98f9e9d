// The one Markdown table renderer of the reports (compare's results.md, the routing report) and
// of the end-of-run table `deno task train` prints.

export interface TableStyle {
  /** Per column: "right" for numbers ("---:"), else left. */
  align?: readonly ("left" | "right")[];
  /** Pad every cell to its column's width: for reading in a terminal. Files stay compact. */
  pad?: boolean;
}

/** `rows[0]` is the header. */
export function markdownTable(
  rows: readonly (readonly string[])[],
  { align = [], pad = false }: TableStyle = {},
): string {
  const right = (k: number) => align[k] === "right";
  // A rule is at least "---" or "---:".
  const widths = rows[0].map((_, k) => {
    const rule = right(k) ? 4 : 3;
    return pad ? Math.max(rule, ...rows.map((r) => r[k].length)) : rule;
  });
  const cell = (text: string, k: number) =>
    pad ? (right(k) ? text.padStart(widths[k]) : text.padEnd(widths[k])) : text;
  const line = (r: readonly string[]) => `| ${r.map(cell).join(" | ")} |`;
  const rule = widths.map((w, k) => right(k) ? "-".repeat(w - 1) + ":" : "-".repeat(w));
  return [line(rows[0]), `| ${rule.join(" | ")} |`, ...rows.slice(1).map(line)].join("\n");
}
