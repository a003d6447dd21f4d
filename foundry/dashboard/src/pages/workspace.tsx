// The workspace: the live task sidebar (grouped by repository) and the selected task.
import { memo } from "preact/compat";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { Avatar, StatusBadge } from "../components/common";
import { NewTaskDialog } from "../components/newTask";
import { api, enc, errorText } from "../lib/api";
import { linkClick } from "../lib/router";
import { useStore } from "../lib/store";
import type { Member, OrgSnapshot, TaskSummary } from "../org";
import { appState, unreadByTask } from "../session";
import { TaskView } from "./task";

export function Workspace({ org, viewerRole, taskId, query }: { org: OrgSnapshot; viewerRole: string; taskId: string | null; query: URLSearchParams }) {
  const [filter, setFilter] = useState("");
  const [creating, setCreating] = useState(false);
  const [showAll, setShowAll] = useState(false);
  // The list follows the filter a moment after typing stops: with a thousand tasks, filtering at
  // every keystroke made typing itself lag.
  const applied = useSettled(filter, 150);
  const { groups, hidden } = useMemo(
    () => group(org.taskSummaries, applied, showAll ? Infinity : LIST_CAP),
    [org.taskSummaries, applied, showAll],
  );
  const base = `/o/${encodeURIComponent(org.organizationId)}`;
  const app = useStore(appState);
  const avatars = useMemberAvatars(org);
  const unread = useMemo(() => unreadByTask(app.snapshot, org.organizationId), [app.snapshot, org.organizationId]);
  useEffect(() => {
    // Load time as a person sees it (read by the browser tests and bench/dashboard.py).
    if (!performance.getEntriesByName("foundry:workspace-ready").length) performance.mark("foundry:workspace-ready");
  }, []);
  return (
    <div class={`workspace${taskId ? " has-task" : ""}`}>
      <nav class="sidebar" aria-label="Tasks">
        <div class="sidebar-head">
          <h1 class="sidebar-title">{org.profile.displayName}</h1>
          <button class="btn btn-primary" onClick={() => setCreating(true)}>New task</button>
        </div>
        <label class="sr-only" for="task-filter">Filter tasks</label>
        <input id="task-filter" class="input" type="search" placeholder="Filter tasks…" value={filter} onInput={(e) => setFilter((e.currentTarget as HTMLInputElement).value)} />
        <SyncStatus org={org} />
        {groups.length === 0 && <p class="muted small">{filter ? "No task matches the filter." : "No tasks yet. Start one with “New task”."}</p>}
        {groups.map(([repo, tasks]) => (
          <section key={repo} class="repo-group" aria-label={repo}>
            <h2 class="repo-name">{repo}</h2>
            <ul class="task-list">
              {tasks.map((t) => (
                <TaskRow
                  key={t.taskId}
                  t={t}
                  href={`${base}/t/${encodeURIComponent(t.taskId)}`}
                  selected={t.taskId === taskId}
                  unread={hasUnread(t, unread.get(t.taskId))}
                  avatar={t.ownerUserId ? (avatars.get(t.ownerUserId) ?? null) : null}
                />
              ))}
            </ul>
          </section>
        ))}
        {hidden > 0 && (
          <button class="btn btn-small" data-testid="show-all-tasks" onClick={() => setShowAll(true)}>
            Show {hidden} more task{hidden === 1 ? "" : "s"}
          </button>
        )}
        <ArchivedTasks org={org} base={base} taskId={taskId} />
      </nav>
      <main class="task-pane" id="task-pane">
        {taskId ? (
          <TaskView key={taskId} org={org} viewerRole={viewerRole} taskId={taskId} query={query} />
        ) : (
          <div class="empty-state">
            <h2>Select a task</h2>
            <p class="muted">Pick a task on the left, or start a new one: Foundry opens a sandbox, clones the repository and runs the agent.</p>
          </div>
        )}
      </main>
      {creating && <NewTaskDialog org={org} onClose={() => setCreating(false)} />}
    </div>
  );
}

/** Rows drawn before "Show N more": a thousand rows at once made every live update slow to draw. */
const LIST_CAP = 300;

/** One row of the task list; drawn again only when its own task (or its selection, unread dot or
 * owner's picture) changed, not at every change of another task. */
const TaskRow = memo(function TaskRow({ t, href, selected, unread, avatar }: { t: TaskSummary; href: string; selected: boolean; unread: boolean; avatar: string | null }) {
  return (
    <li>
      <a href={href} onClick={linkClick} class={`task-row${selected ? " selected" : ""}`} aria-current={selected ? "page" : undefined} data-task-id={t.taskId}>
        <span class="task-row-title">
          {unread && (
            <span class="unread-dot" data-testid="unread-dot" title="Unread">
              <span class="sr-only">Unread: </span>
            </span>
          )}
          {t.title}
        </span>
        <span class="task-row-meta">
          <StatusBadge status={t.isVirtual ? "pr" : t.status} />
          {t.pullRequest && <span class={`badge pr-${t.pullRequest.state ?? "unknown"}`}>#{t.pullRequest.number} {t.pullRequest.state}</span>}
          {t.ownerLogin && (
            <span class="owner" title={`Owner: ${t.ownerLogin}`}>
              <Avatar url={avatar} login={t.ownerLogin} size={16} />
              <span class="sr-only">Owner {t.ownerLogin}</span>
            </span>
          )}
        </span>
      </a>
    </li>
  );
});

/** ``value`` once it has not changed for ``ms`` milliseconds (the empty value at once). */
function useSettled(value: string, ms: number): string {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    if (value === "") {
      setSettled(value);
      return;
    }
    const timer = window.setTimeout(() => setSettled(value), ms);
    return () => window.clearTimeout(timer);
  }, [value, ms]);
  return settled;
}

/** Archived tasks, read when opened (they are not in the live list): each can be opened to read
 * its transcript. Pages of 50, newest first. */
function ArchivedTasks({ org, base, taskId }: { org: OrgSnapshot; base: string; taskId: string | null }) {
  const [open, setOpen] = useState(false);
  const [tasks, setTasks] = useState<TaskSummary[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const load = async (after: string | null) => {
    setBusy(true);
    setError(null);
    try {
      const page = await api<{ tasks: TaskSummary[]; nextCursor: string | null }>(
        "GET",
        `/v1/organizations/${enc(org.organizationId)}/tasks?status=archived&limit=50${after ? `&cursor=${enc(after)}` : ""}`,
      );
      setTasks((before) => (after ? [...before, ...page.tasks] : page.tasks));
      setCursor(page.nextCursor);
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(false);
    }
  };
  useEffect(() => {
    if (open) void load(null);
  }, [open, org.organizationId]);
  // A task leaving the live list (archived by anyone, or its PR closed) joins this one: read it again.
  const live = useRef<Set<string>>(new Set());
  useEffect(() => {
    const now = new Set(org.taskSummaries.map((t) => t.taskId));
    const left = [...live.current].some((id) => !now.has(id));
    live.current = now;
    if (open && left) void load(null);
  }, [org.taskSummaries]);
  return (
    <details class="archived-tasks" onToggle={(e) => setOpen((e.currentTarget as HTMLDetailsElement).open)}>
      <summary class="muted small">Archived tasks</summary>
      {error && <p class="error-note small" role="alert">{error}</p>}
      {open && !busy && tasks.length === 0 && !error && <p class="muted small">No archived task.</p>}
      <ul class="task-list">
        {tasks.map((t) => (
          <li key={t.taskId}>
            <a href={`${base}/t/${encodeURIComponent(t.taskId)}`} onClick={linkClick} class={`task-row${t.taskId === taskId ? " selected" : ""}`} data-task-id={t.taskId} data-archived="true">
              <span class="task-row-title">{t.title}</span>
              <span class="task-row-meta muted small">{t.repoFullName}</span>
            </a>
          </li>
        ))}
      </ul>
      {cursor && <button class="btn btn-small" disabled={busy} onClick={() => void load(cursor)}>{busy ? "Loading…" : "More"}</button>}
    </details>
  );
}

/** Owners' avatars: the member list, read again only when the organization's membership changes. */
function useMemberAvatars(org: OrgSnapshot): Map<string, string | null> {
  const [avatars, setAvatars] = useState<Map<string, string | null>>(new Map());
  useEffect(() => {
    api<Member[]>("GET", `/v1/organizations/${enc(org.organizationId)}/members`).then(
      (members) => setAvatars(new Map(members.map((m) => [m.userId, m.avatarUrl]))),
      (e) => console.warn("members (for avatars)", e),
    );
  }, [org.organizationId, org.memberCount]);
  return avatars;
}

/** A task has news for this user when one of its sessions that is still open is unread. */
function hasUnread(t: TaskSummary, sessions: Set<string> | undefined): boolean {
  if (!sessions) return false;
  const closed = new Set((t.sessions ?? []).filter((s) => s.status === "closed").map((s) => s.sessionId));
  for (const id of sessions) if (!closed.has(id)) return true;
  return false;
}

/** The tasks matching ``filter`` grouped by repository, at most ``cap`` of them (the most recently
 * changed: ``tasks`` is newest first), and how many more match. */
function group(tasks: TaskSummary[], filter: string, cap: number): { groups: [string, TaskSummary[]][]; hidden: number } {
  const f = filter.trim().toLowerCase();
  const out = new Map<string, TaskSummary[]>();
  let shown = 0;
  let hidden = 0;
  for (const t of tasks) {
    if (f && !`${t.title} ${t.repoFullName} ${t.branch ?? ""} ${t.ownerLogin ?? ""} ${t.pullRequest ? "#" + t.pullRequest.number : ""}`.toLowerCase().includes(f)) continue;
    if (shown >= cap) {
      hidden += 1;
      continue;
    }
    shown += 1;
    const list = out.get(t.repoFullName) ?? [];
    list.push(t);
    out.set(t.repoFullName, list);
  }
  return { groups: [...out.entries()].sort((a, b) => a[0].localeCompare(b[0])), hidden };
}

const PHASES: Record<string, [label: string, unit: string]> = {
  repositories: ["repositories", "repositories"],
  members: ["members", "members"],
  pull_requests: ["pull requests", "repositories"],
};

/** "Syncing pull requests: 2 of 5 repositories" (what the sync is doing and how far it is). */
function syncText(phase: string | null, processed: number | null, total: number | null): string {
  if (!phase) return "Syncing…";
  const [label, unit] = PHASES[phase] ?? [phase.replace(/_/g, " "), "items"];
  return total ? `Syncing ${label}: ${processed ?? 0} of ${total} ${unit}` : `Syncing ${label}…`;
}

function SyncStatus({ org }: { org: OrgSnapshot }) {
  const gh = org.github;
  const [error, setError] = useState<string | null>(null);
  const connected = gh.installationStatus === "connected" || gh.installationStatus === "installed";
  if (!connected) {
    return (
      <div class="sync-box" role="status" data-testid="github-not-connected">
        <strong>GitHub App not connected.</strong> Foundry reads repositories and pull requests through its GitHub App.
        An owner of {org.profile.githubLogin} can install it from{" "}
        <a href={`https://github.com/organizations/${encodeURIComponent(org.profile.githubLogin)}/settings/installations`} target="_blank" rel="noopener noreferrer">
          the organization’s GitHub App settings
        </a>
        ; then use Resync.
      </div>
    );
  }
  const syncing = gh.syncStatus === "syncing" || gh.syncStatus === "queued" || gh.syncStatus === "pending";
  return (
    <div class="sync-box" data-testid="sync-status">
      <span role="status">
        {syncing ? (
          syncText(gh.syncPhase, gh.processedCount, gh.totalCount)
        ) : gh.syncStatus === "error" ? (
          "GitHub sync failed"
        ) : (
          `Synced${gh.lastSyncAt ? " " + new Date(gh.lastSyncAt).toLocaleTimeString() : ""}`
        )}
      </span>
      <button class="btn btn-small" disabled={syncing} onClick={() => api("POST", `/v1/organizations/${encodeURIComponent(org.organizationId)}/sync`).then(() => setError(null), (e) => setError(errorText(e)))}>
        Resync
      </button>
      {gh.syncError && <p class="error-note" role="alert">{gh.syncError}</p>}
      {error && <p class="error-note" role="alert">{error}</p>}
    </div>
  );
}
