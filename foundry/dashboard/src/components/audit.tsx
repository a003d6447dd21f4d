// Audit entries of an organization, newest first, with filters and paging (`beforeId`).
import { useEffect, useState } from "preact/hooks";
import { api, enc, errorText } from "../lib/api";
import { dateTime } from "../lib/format";
import { ErrorNote } from "./common";

export interface AuditEntry {
  id: number;
  kind: string;
  repoId: string | null;
  taskId: string | null;
  branchName: string | null;
  actorUserId: string | null;
  payload: Record<string, unknown>;
  createdAt: number;
}

const PAGE = 50;

export function AuditList({ orgId, filters, version, compact }: { orgId: string; filters: Record<string, string>; version?: number; compact?: boolean }) {
  const [entries, setEntries] = useState<AuditEntry[]>([]);
  const [more, setMore] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  const key = JSON.stringify(filters);

  async function load(beforeId: number | null) {
    setLoading(true);
    const q = new URLSearchParams({ limit: String(PAGE) });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (beforeId) q.set("beforeId", String(beforeId));
    try {
      const page = await api<AuditEntry[]>("GET", `/v1/organizations/${enc(orgId)}/audit-log?${q}`);
      setEntries((prev) => (beforeId ? [...prev, ...page] : page));
      setMore(page.length === PAGE);
      setError(null);
    } catch (e) {
      setError(errorText(e));
    } finally {
      setLoading(false);
    }
  }

  useEffect(() => {
    void load(null);
  }, [orgId, key, version]);

  return (
    <div class="audit" data-testid="audit-list">
      <ErrorNote error={error} />
      {entries.length === 0 && !loading && !error && <p class="muted pad">No audit entries.</p>}
      <table class="table audit-table">
        <caption class="sr-only">Audit entries, newest first</caption>
        <thead>
          <tr>
            <th scope="col">When</th>
            <th scope="col">Event</th>
            {!compact && <th scope="col">Task</th>}
            <th scope="col">Details</th>
          </tr>
        </thead>
        <tbody>
          {entries.map((e) => (
            <tr key={e.id}>
              <td class="nowrap">{dateTime(e.createdAt)}</td>
              <td><code>{e.kind}</code></td>
              {!compact && <td data-label="Task">{e.taskId ? <code>{e.taskId.slice(0, 12)}</code> : "—"}</td>}
              <td class="payload" data-label="Details">{summarize(e.payload)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {more && (
        <button class="btn" disabled={loading} onClick={() => void load(entries[entries.length - 1]?.id ?? null)}>
          {loading ? "Loading…" : "Older entries"}
        </button>
      )}
    </div>
  );
}

function summarize(payload: Record<string, unknown>): string {
  const parts = Object.entries(payload ?? {})
    .filter(([, v]) => v !== null && v !== undefined && typeof v !== "object")
    .slice(0, 4)
    .map(([k, v]) => `${k}: ${String(v).slice(0, 80)}`);
  return parts.join(" · ");
}
