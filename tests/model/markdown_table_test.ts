// The Markdown table renderer: compact for files, padded and right-aligned for the terminal.
import { markdownTable } from "../../model/markdown_table.ts";
import { assertEquals } from "../assert.ts";

const ROWS = [["method", "ppl"], ["fedavg", "128.20"], ["2g", "9.5"]];

Deno.test("markdownTable: compact rows, --- or ---: rules", () => {
  assertEquals(
    markdownTable(ROWS, { align: ["left", "right"] }),
    ["| method | ppl |", "| --- | ---: |", "| fedavg | 128.20 |", "| 2g | 9.5 |"].join("\n"),
  );
  assertEquals(markdownTable([["a"], ["b"]]), "| a |\n| --- |\n| b |");
});

Deno.test("markdownTable: padded cells line up; numbers right-aligned", () => {
  assertEquals(
    markdownTable(ROWS, { align: ["left", "right"], pad: true }),
    [
      "| method |    ppl |",
      "| ------ | -----: |",
      "| fedavg | 128.20 |",
      "| 2g     |    9.5 |",
    ].join("\n"),
  );
  // A column narrower than a rule keeps the rule's three characters.
  assertEquals(markdownTable([["x"], ["1"]], { pad: true }), "| x   |\n| --- |\n| 1   |");
});
