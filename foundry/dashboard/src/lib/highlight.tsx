// Syntax colouring for code blocks: one regex pass producing spans (text nodes only, never HTML).
import type { ComponentChildren } from "preact";

const KEYWORDS = new Set(
  (
    "abstract and as async await break case catch class const continue def default del do elif else enum " +
    "export extends false finally fn for from func function go if impl import in interface is let loop " +
    "match mod module mut new nil none not null or package pass private protected pub public raise return " +
    "self static struct super switch this throw true try type typeof use var void while with yield"
  ).split(" "),
);

const TOKEN =
  /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/)|("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`)|\b(\d[\d_.]*(?:e[+-]?\d+)?)\b|\b([A-Za-z_][\w]*)\b/g;

const HASH_COMMENTS = new Set(["py", "python", "sh", "bash", "shell", "zsh", "yaml", "yml", "toml", "rb", "ruby", "r", ""]);

export function highlight(code: string, lang: string): ComponentChildren {
  if (lang === "diff" || lang === "patch") {
    return code.split("\n").map((line, n) => (
      <span key={n} class={line.startsWith("+") ? "tok-add" : line.startsWith("-") ? "tok-del" : undefined}>
        {line}
        {"\n"}
      </span>
    ));
  }
  if (code.length > 200_000) return code; // colouring a huge blob is not worth a frozen page
  const hashComments = HASH_COMMENTS.has(lang);
  const out: ComponentChildren[] = [];
  let last = 0;
  const re = new RegExp(TOKEN.source, "g");
  for (let m = re.exec(code); m; m = re.exec(code)) {
    let cls: string | null = null;
    if (m[1]) cls = m[1].startsWith("#") && !hashComments ? null : "tok-com";
    else if (m[2]) cls = "tok-str";
    else if (m[3]) cls = "tok-num";
    else if (m[4] && KEYWORDS.has(m[4])) cls = "tok-kw";
    if (!cls) continue;
    if (m.index > last) out.push(code.slice(last, m.index));
    out.push(
      <span key={m.index} class={cls}>
        {m[0]}
      </span>,
    );
    last = re.lastIndex;
  }
  if (last < code.length) out.push(code.slice(last));
  return out;
}
