// The task's changes (per-file unified diff, untracked files included) and its file tree.
import { useEffect, useState } from "preact/hooks";
import { api, errorText } from "../lib/api";
import { ErrorNote } from "./common";

const KIND_LABEL: Record<string, string> = { A: "added", M: "modified", D: "deleted", R: "renamed" };

interface DiffAnswer {
  files: { path: string; kind: string; origPath: string | null }[];
  diff: string;
  filesTruncated?: boolean;
  diffTruncated?: boolean;
}

/** Splits `git diff` output into one chunk of lines per file, keyed by the new path. */
export function splitDiff(diff: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const line of diff.split("\n")) {
    const head = /^diff --git a\/(.+?) b\/(.+)$/.exec(line);
    if (head) {
      current = [];
      out.set(head[2], current);
      continue;
    }
    if (current && !/^(index |--- |\+\+\+ |new file mode|deleted file mode|similarity index|rename (from|to) )/.test(line)) current.push(line);
  }
  return out;
}

function useLoad<T>(url: string, version: number, ready: boolean): { data: T | null; error: string | null; loading: boolean } {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  useEffect(() => {
    if (!ready) return;
    let alive = true;
    setLoading(true);
    // Reloaded when the task changes (a turn ended, a push…), never on a timer.
    api<T>("GET", url).then(
      (d) => alive && (setData(d), setError(null)),
      (e) => alive && setError(errorText(e)),
    ).finally(() => alive && setLoading(false));
    return () => {
      alive = false;
    };
  }, [url, version, ready]);
  return { data, error, loading };
}

export function DiffView({ base, version, ready, archived = false }: { base: string; version: number; ready: boolean; archived?: boolean }) {
  const { data, error, loading } = useLoad<DiffAnswer>(`${base}/diff`, version, ready);
  if (archived) return <p class="muted pad">This task is archived: its sandbox is gone, and with it the working copy. Its pushed branch and pull request are on GitHub.</p>;
  if (!ready) return <p class="muted pad">Changes appear once the sandbox is ready.</p>;
  if (error) return <ErrorNote error={error} />;
  if (!data) return <p class="muted pad" aria-busy={loading}>Loading changes…</p>;
  if (data.files.length === 0) return <p class="muted pad" data-testid="no-changes">No changes yet.</p>;
  const byFile = splitDiff(data.diff);
  return (
    <div class="diff-view" data-testid="diff-view">
      <p class="muted small">{data.files.length} changed file{data.files.length === 1 ? "" : "s"}{data.filesTruncated ? " shown" : ""}</p>
      {(data.filesTruncated || data.diffTruncated) && (
        <p class="notice" role="status" data-testid="diff-truncated">
          {data.filesTruncated ? "There are more changed files than can be shown here" : "The changes are too large to show in full"}: this is not
          all of them. A pull request includes every change, so review it on GitHub or in the checkout.
        </p>
      )}
      {data.files.map((f) => {
        const lines = byFile.get(f.path);
        return (
          <section key={f.path} class="diff-file" aria-label={`Changes in ${f.path}`}>
            <div class="diff-file-head">
              <code>{f.origPath ? `${f.origPath} → ${f.path}` : f.path}</code>
              <span class={`badge kind-${f.kind}`}>{KIND_LABEL[f.kind] ?? f.kind}</span>
            </div>
            {lines && lines.length ? (
              <pre class="diff" tabIndex={0}>
                {lines.map((l, n) => (
                  <span key={n} class={l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : l.startsWith("@@") ? "hunk" : undefined}>
                    {l}
                    {"\n"}
                  </span>
                ))}
              </pre>
            ) : (
              <p class="muted small pad">No text diff (binary, or only a mode change).</p>
            )}
          </section>
        );
      })}
    </div>
  );
}

interface TreeNode {
  name: string;
  children: Map<string, TreeNode>;
}

function buildTree(paths: string[]): TreeNode {
  const root: TreeNode = { name: "", children: new Map() };
  for (const p of paths) {
    let node = root;
    for (const part of p.split("/")) {
      let next = node.children.get(part);
      if (!next) {
        next = { name: part, children: new Map() };
        node.children.set(part, next);
      }
      node = next;
    }
  }
  return root;
}

function TreeList({ node }: { node: TreeNode }) {
  const entries = [...node.children.values()].sort((a, b) => Number(b.children.size > 0) - Number(a.children.size > 0) || a.name.localeCompare(b.name));
  return (
    <ul class="tree">
      {entries.map((c) =>
        c.children.size ? (
          <li key={c.name}>
            <details open>
              <summary>{c.name}/</summary>
              <TreeList node={c} />
            </details>
          </li>
        ) : (
          <li key={c.name} class="tree-file">{c.name}</li>
        ),
      )}
    </ul>
  );
}

export function FilesView({ base, version, ready, archived = false }: { base: string; version: number; ready: boolean; archived?: boolean }) {
  const { data, error } = useLoad<{ paths: string[]; truncated?: boolean }>(`${base}/files`, version, ready);
  if (archived) return <p class="muted pad">This task is archived: its sandbox is gone, and with it the working copy.</p>;
  if (!ready) return <p class="muted pad">Files appear once the sandbox is ready.</p>;
  if (error) return <ErrorNote error={error} />;
  if (!data) return <p class="muted pad">Loading files…</p>;
  return (
    <div class="files-view" data-testid="files-view">
      <p class="muted small">{data.paths.length} files{data.truncated ? " shown" : ""}</p>
      {data.truncated && (
        <p class="notice" role="status" data-testid="files-truncated">
          There are more files than can be listed here: this is not all of them.
        </p>
      )}
      <TreeList node={buildTree(data.paths)} />
    </div>
  );
}
