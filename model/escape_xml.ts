// Text placed in XML or HTML (the SVG plot of fed/report.ts, the routing page of
// model/routing_html.ts): the characters markup gives a meaning to, as entities, so that the text
// reads as itself, in element content and in double-quoted attribute values alike.

export function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}
