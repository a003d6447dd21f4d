// A small Markdown renderer that builds virtual DOM nodes, never HTML strings.
//
// Agent output is untrusted: every piece of text becomes a text node, so markup in it is shown,
// not run. Links are rendered only for http(s) URLs. Supported: headings, paragraphs, fenced code
// (highlighted), inline code, bold, italics, links, lists, block quotes and rules.
import type { ComponentChildren, VNode } from "preact";
import { safeUrl } from "./format";
import { highlight } from "./highlight";

type Inline = ComponentChildren;

const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|\b_([^_\s][^_]*)_\b|\[([^\]]+)\]\(([^)\s]+)\)/g;

/** Long plain text as several text nodes cut at stable offsets: while a reply streams, the text
 * before the last cut stays byte-identical, so its DOM nodes (and the browser's shaping of them)
 * are kept and only the tail is laid out again. */
const SEGMENT = 512;
function segments(text: string): string[] {
  if (text.length <= SEGMENT) return [text];
  const out: string[] = [];
  let start = 0;
  while (text.length - start > SEGMENT) {
    // Cut after the first space past the window, so a cut never changes as text is appended.
    const space = text.indexOf(" ", start + SEGMENT);
    if (space < 0) break;
    out.push(text.slice(start, space + 1));
    start = space + 1;
  }
  out.push(text.slice(start));
  return out;
}

const BLOCK = 4096;
function blockPieces(text: string): string[] {
  if (text.length <= BLOCK) return [text];
  const out: string[] = [];
  let start = 0;
  while (text.length - start > BLOCK) {
    // Prefer the end of a sentence, else a space, after the window: cuts never move as text grows.
    const sentence = text.indexOf(". ", start + BLOCK);
    const space = text.indexOf(" ", start + BLOCK);
    const cut = sentence >= 0 && sentence - start < BLOCK * 1.5 ? sentence + 1 : space;
    if (cut < 0) break;
    out.push(text.slice(start, cut + 1));
    start = cut + 1;
  }
  out.push(text.slice(start));
  return out;
}

function pushText(out: Inline[], text: string): void {
  for (const piece of segments(text)) out.push(piece);
}

function inline(text: string, key = 0): Inline[] {
  const out: Inline[] = [];
  let last = 0;
  // A regex per call: inline() recurses, and a shared global regex would lose its place.
  const re = new RegExp(INLINE.source, "g");
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (m.index > last) pushText(out, text.slice(last, m.index));
    const k = `${key}-${m.index}`;
    if (m[1]) out.push(<code key={k}>{m[2].trim() || m[2]}</code>);
    else if (m[3] || m[4]) out.push(<strong key={k}>{inline(m[3] ?? m[4], key + 1)}</strong>);
    else if (m[5] || m[6]) out.push(<em key={k}>{inline(m[5] ?? m[6], key + 1)}</em>);
    else if (m[7]) {
      const href = safeUrl(m[8]);
      out.push(
        href ? (
          <a key={k} href={href} target="_blank" rel="noopener noreferrer nofollow">
            {inline(m[7], key + 1)}
          </a>
        ) : (
          m[0]
        ),
      );
    }
    last = re.lastIndex;
  }
  if (last < text.length) pushText(out, text.slice(last));
  return out;
}

const FENCE = /^\s{0,3}(```+|~~~+)\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*)$/;
const BULLET = /^\s{0,3}([-*+])\s+(.*)$/;
const ORDERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;

export function renderMarkdown(source: string): VNode[] {
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  const blocks: VNode[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const key = blocks.length;
    if (!line.trim()) {
      i++;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const body: string[] = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++;
      const lang = fence[2].toLowerCase();
      blocks.push(
        <pre key={key} class="code" data-lang={lang || undefined}>
          <code>{highlight(body.join("\n"), lang)}</code>
        </pre>,
      );
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      // Headings inside agent output are styled, but stay below the page's own h1/h2 outline.
      const level = Math.min(6, heading[1].length + 2);
      const Tag = `h${level}` as "h3";
      blocks.push(
        <Tag key={key} class={`md-h md-h${heading[1].length}`}>
          {inline(heading[2])}
        </Tag>,
      );
      i++;
      continue;
    }
    if (RULE.test(line)) {
      blocks.push(<hr key={key} />);
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const body: string[] = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])![1]);
      blocks.push(<blockquote key={key}>{renderMarkdown(body.join("\n"))}</blockquote>);
      continue;
    }
    const listRe = BULLET.test(line) ? BULLET : ORDERED.test(line) ? ORDERED : null;
    if (listRe) {
      const items: string[] = [];
      while (i < lines.length && lines[i].trim()) {
        const item = listRe.exec(lines[i]);
        if (item) items.push(item[2]);
        else if (items.length) items[items.length - 1] += "\n" + lines[i].trim();
        i++;
      }
      const children = items.map((t, n) => <li key={n}>{inline(t)}</li>);
      blocks.push(listRe === BULLET ? <ul key={key}>{children}</ul> : <ol key={key}>{children}</ol>);
      continue;
    }
    const para: string[] = [];
    while (
      i < lines.length &&
      lines[i].trim() &&
      !FENCE.test(lines[i]) &&
      !HEADING.test(lines[i]) &&
      !BULLET.test(lines[i]) &&
      !ORDERED.test(lines[i]) &&
      !QUOTE.test(lines[i])
    ) {
      para.push(lines[i++]);
    }
    // A very long paragraph (a run-on stream) is laid out as several blocks cut at stable places,
    // so each new chunk re-lays out only the last block, not everything streamed so far.
    const pieces = blockPieces(para.join("\n"));
    pieces.forEach((piece, n) =>
      blocks.push(
        <p key={`${key}.${n}`} class={n ? "cont" : undefined}>
          {inline(piece)}
        </p>,
      ),
    );
  }
  return blocks;
}
