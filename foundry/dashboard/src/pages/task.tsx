// One task: header and actions, session tabs with the live transcript, changes, files, activity.
import { useEffect, useRef, useState } from "preact/hooks";
import { Avatar, ErrorNote, Modal, PrBadge, StatusBadge } from "../components/common";
import { AuditList } from "../components/audit";
import { DiffView, FilesView } from "../components/diff";
import { SessionPane } from "../components/session";
import { api, ApiError, enc, errorText } from "../lib/api";
import { linkClick, navigate } from "../lib/router";
import { realtime } from "../lib/realtime";
import { useStore } from "../lib/store";
import type { BillingSummary, Member, OrgSnapshot } from "../org";
import { appState, unreadByTask } from "../session";
import { NotFoundPage } from "./notfound";

export interface SessionInfo {
  sessionId: string;
  name: string;
  agent: string;
  model: string;
  status: string;
  error: string | null;
  queuedMessages: number;
  lastSeq: number;
  pendingPermissions: { requestId: string; options: unknown[] }[];
  closedAt: number | null;
}

export interface TaskDetail {
  taskId: string;
  organizationId: string;
  repoId: string;
  repoFullName: string;
  title: string;
  status: string;
  error: string | null;
  branch: string | null;
  defaultBranch: string | null;
  owner: { userId: string | null; login: string | null };
  pullRequest: { number: number; url: string | null; state: string | null; title?: string | null } | null;
  /** Waiting for a sandbox slot: its place in the line (1 = next) and why it waits. */
  sandboxQueue?: { position: number; reason: string | null } | null;
  sessions: SessionInfo[];
  updatedAt: number;
  archivedAt: number | null;
}

interface Viewer {
  activeSessionId: string | null;
  drafts: Record<string, string>;
}

type TaskState = { state: "loading" } | { state: "notfound" } | { state: "error"; detail: string } | { state: "ready"; detail: TaskDetail; viewer: Viewer };

/**
 * The task's detail and this viewer's state, live. A pull request nobody has started yet has no
 * task of its own to follow (the server refuses its topic): `virtual` says so, from the
 * organization's live list, and when it turns false the task is read and followed afresh.
 */
function useTask(orgId: string, taskId: string, virtual: boolean): TaskState {
  const [st, setSt] = useState<TaskState>({ state: "loading" });
  useEffect(() => {
    let alive = true;
    let detail: TaskDetail | null = null;
    let viewer: Viewer | null = null;
    const publish = () => alive && detail && viewer && setSt({ state: "ready", detail, viewer });
    api<Omit<TaskDetail, "sessions"> & { activeSessionId: string | null; sessions: (SessionInfo & { unread: boolean; draft: { text: string } })[] }>(
      "GET",
      `/v1/organizations/${enc(orgId)}/tasks/${enc(taskId)}`,
    )
      .then((d) => {
        viewer = {
          activeSessionId: d.activeSessionId,
          drafts: Object.fromEntries(d.sessions.map((s) => [s.sessionId, s.draft?.text ?? ""])),
        };
        detail = detail ?? (d as TaskDetail);
        publish();
      })
      .catch((e) => {
        if (!alive) return;
        if (e instanceof ApiError && e.status === 404) setSt({ state: "notfound" });
        else setSt({ state: "error", detail: errorText(e) });
      });
    const stop = virtual
      ? () => {}
      : realtime.subscribe(`task:${orgId}:${taskId}`, (e) => {
          if (e.event === "snapshot" || e.event === "taskUpdated") {
            detail = e.data as TaskDetail;
            publish();
          }
        });
    return () => {
      alive = false;
      stop();
    };
  }, [orgId, taskId, virtual]);
  return st;
}

/** Members by user id, for the author of each message and the owner picker. */
function useMembers(orgId: string, memberCount: number): Map<string, Member> | null {
  const [members, setMembers] = useState<Map<string, Member> | null>(null);
  useEffect(() => {
    api<Member[]>("GET", `/v1/organizations/${enc(orgId)}/members`).then(
      (list) => setMembers(new Map(list.map((m) => [m.userId, m]))),
      (e) => console.warn("members", e),
    );
  }, [orgId, memberCount]);
  return members;
}

type Tab = "agent" | "changes" | "files" | "activity";
const TABS: Tab[] = ["agent", "changes", "files", "activity"];

export function TaskView({ org, taskId, query }: { org: OrgSnapshot; viewerRole: string; taskId: string; query: URLSearchParams }) {
  const virtual = org.taskSummaries.find((t) => t.taskId === taskId)?.isVirtual ?? false;
  const st = useTask(org.organizationId, taskId, virtual);
  const members = useMembers(org.organizationId, org.memberCount);
  const asked = query.get("tab") as Tab | null;
  const [tab, setTabState] = useState<Tab>(asked && TABS.includes(asked) ? asked : "agent");
  useEffect(() => {
    // A view that does not exist (an old or mistyped link) opens the agent view: say so in the address.
    if (asked !== null && !TABS.includes(asked)) navigate(location.pathname, true);
  }, [asked]);
  // The view is in the address (a link or a reload opens it); the agent view is the plain URL.
  const setTab = (t: Tab) => {
    setTabState(t);
    navigate(`${location.pathname}${t === "agent" ? "" : `?tab=${t}`}`, true);
  };
  const [picked, setPicked] = useState<string | null>(null);
  const shown = useRef<string | null>(null);
  if (st.state === "loading") return <p class="muted pad" aria-busy="true">Loading task…</p>;
  if (st.state === "notfound") return <NotFoundPage />;
  if (st.state === "error") return <p class="error-note pad" role="alert">{st.detail}</p>;
  const { detail, viewer } = st;
  const open = detail.sessions.filter((s) => s.status !== "closed");
  // A closed session stays on screen for whoever had it open (read-only, their unsent text kept),
  // and any closed session can be opened again to read; an archived task shows its last session.
  // The session on screen stays there when it closes, however the viewer came to it.
  const active =
    detail.sessions.find((s) => s.sessionId === picked) ??
    detail.sessions.find((s) => s.sessionId === shown.current) ??
    open.find((s) => s.sessionId === viewer.activeSessionId) ??
    open[0] ??
    (detail.archivedAt !== null ? detail.sessions[detail.sessions.length - 1] : undefined) ??
    null;
  shown.current = active?.sessionId ?? null;
  const base = `/v1/organizations/${enc(org.organizationId)}/tasks/${enc(taskId)}`;
  return (
    <article class="task" aria-labelledby="task-title" data-status={detail.status}>
      <a class="back-link" href={`/o/${enc(org.organizationId)}`} onClick={linkClick}>← Tasks</a>
      <TaskHeader org={org} detail={detail} base={base} members={members} />
      <div
        class="tabs"
        role="tablist"
        aria-label="Task views"
        onKeyDown={(e) => {
          // The tabs pattern: arrows move between tabs, Home and End to the first and last.
          const at = TABS.indexOf(tab);
          const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: TABS.length - 1 }[e.key];
          if (next === undefined) return;
          e.preventDefault();
          const t = TABS[(next + TABS.length) % TABS.length];
          setTab(t);
          document.getElementById(`tab-${t}`)?.focus();
        }}
      >
        {TABS.map((t) => (
          <button key={t} role="tab" id={`tab-${t}`} aria-selected={tab === t} aria-controls={`panel-${t}`} tabIndex={tab === t ? 0 : -1} class="tab" onClick={() => setTab(t)}>
            {{ agent: "Agent", changes: "Changes", files: "Files", activity: "Activity" }[t]}
          </button>
        ))}
      </div>
      <section role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`} class="tab-panel">
        {tab === "agent" && (
          <SessionTabs detail={detail} viewer={viewer} active={active} base={base} onPick={setPicked} orgId={org.organizationId} members={members} billing={org.billing} />
        )}
        {tab === "changes" && <DiffView base={base} version={detail.updatedAt} ready={detail.status !== "provisioning" && !detail.archivedAt} archived={detail.archivedAt !== null} />}
        {tab === "files" && <FilesView base={base} version={detail.updatedAt} ready={detail.status !== "provisioning" && !detail.archivedAt} archived={detail.archivedAt !== null} />}
        {tab === "activity" && <AuditList orgId={org.organizationId} filters={{ taskId }} version={detail.updatedAt} compact />}
      </section>
    </article>
  );
}

function TaskHeader({ org, detail, base, members: byId }: { org: OrgSnapshot; detail: TaskDetail; base: string; members: Map<string, Member> | null }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [archiveConflict, setArchiveConflict] = useState<string | null>(null);
  const [confirmArchive, setConfirmArchive] = useState(false);
  const [renaming, setRenaming] = useState<string | null>(null);
  const members = byId ? [...byId.values()] : null;
  const archived = detail.archivedAt !== null;

  async function run(label: string, fn: () => Promise<unknown>) {
    setBusy(label);
    setError(null);
    try {
      await fn();
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(null);
    }
  }

  async function archive(force: boolean) {
    setBusy("archive");
    setError(null);
    try {
      await api("POST", `${base}/archive`, { force });
      setArchiveConflict(null);
      setConfirmArchive(false);
      navigate(`/o/${enc(org.organizationId)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        setConfirmArchive(false);
        setArchiveConflict(e.detail);
      } else setError(errorText(e));
    } finally {
      setBusy(null);
    }
  }

  async function rename(title: string) {
    setBusy("rename");
    try {
      await api("PATCH", base, { title });
      setRenaming(null);
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(null);
    }
  }

  return (
    <header class="task-head">
      <div class="task-title-row">
        <h1 id="task-title" class="task-title">{detail.title}</h1>
        {!archived && detail.status !== "virtual" && (
          <button class="icon-btn" aria-label="Rename task" onClick={() => { setError(null); setRenaming(detail.title); }}>✎</button>
        )}
        <StatusBadge status={detail.status} />
      </div>
      <p class="task-meta">
        <span>{detail.repoFullName}</span>
        {detail.branch && <> · <code>{detail.branch}</code></>}
        {detail.pullRequest && <> · <PrBadge pr={detail.pullRequest} /></>}
      </p>
      {detail.error && <p class="error-note" role="alert" data-testid="task-error">{detail.error}</p>}
      {detail.sandboxQueue && !archived && (
        <p class="muted" role="status" data-testid="sandbox-queue">
          In line for a sandbox ({detail.sandboxQueue.position <= 1 ? "next" : `number ${detail.sandboxQueue.position}`})
          {detail.sandboxQueue.reason ? `: ${detail.sandboxQueue.reason}` : ""}. It starts on its own when one is free.
        </p>
      )}
      <div class="task-actions">
        <div class="owner-field">
          <Avatar url={members?.find((m) => m.userId === detail.owner.userId)?.avatarUrl} login={detail.owner.login} />
          <label for="owner-select">Owner</label>
          <select
            id="owner-select"
            value={detail.owner.userId ?? ""}
            disabled={archived || !members || busy !== null}
            onChange={(e) => {
              const userId = (e.currentTarget as HTMLSelectElement).value;
              void run("owner", () => api("POST", `${base}/owner`, { userId }));
            }}
          >
            {!detail.owner.userId && <option value="">No owner</option>}
            {(members ?? (detail.owner.userId ? [{ userId: detail.owner.userId, login: detail.owner.login ?? "" } as Member] : [])).map((m) => (
              <option key={m.userId} value={m.userId}>{m.login}</option>
            ))}
          </select>
        </div>
        {!detail.pullRequest && !archived && (
          <button class="btn" disabled={busy !== null || detail.status === "provisioning"} onClick={() => void run("pr", () => api("POST", `${base}/pull-request`, {}))}>
            {busy === "pr" ? "Creating pull request…" : "Create pull request"}
          </button>
        )}
        {!archived && (
          <button class="btn btn-danger" disabled={busy !== null} onClick={() => setConfirmArchive(true)}>Archive</button>
        )}
      </div>
      {renaming === null && <ErrorNote error={error} />}
      {confirmArchive && (
        <Modal title="Archive this task?" onClose={() => setConfirmArchive(false)}>
          <p>The sandbox is destroyed and running agents stop. The transcript stays readable.</p>
          <div class="actions">
            <button class="btn" onClick={() => setConfirmArchive(false)}>Cancel</button>
            <button class="btn btn-danger" disabled={busy !== null} onClick={() => void archive(false)}>{busy === "archive" ? "Archiving…" : "Archive"}</button>
          </div>
        </Modal>
      )}
      {renaming !== null && (
        <Modal title="Rename task" onClose={() => { setRenaming(null); setError(null); }}>
          <form
            class="form"
            onSubmit={(e) => {
              e.preventDefault();
              void rename(renaming.trim());
            }}
          >
            <div class="field">
              <label for="task-title-input">Title</label>
              <input id="task-title-input" class="input" value={renaming} maxLength={300} required onInput={(e) => setRenaming((e.currentTarget as HTMLInputElement).value)} />
            </div>
            <ErrorNote error={error} />
            <div class="actions">
              <button type="button" class="btn" onClick={() => { setRenaming(null); setError(null); }}>Cancel</button>
              <button type="submit" class="btn btn-primary" disabled={!renaming.trim() || busy !== null}>{busy === "rename" ? "Renaming…" : "Rename"}</button>
            </div>
          </form>
        </Modal>
      )}
      {archiveConflict && (
        <Modal title="Unpushed work would be lost" onClose={() => setArchiveConflict(null)}>
          <p data-testid="archive-conflict">{archiveConflict}</p>
          <p>Foundry can push this work to a rescue branch first, then archive.</p>
          <div class="actions">
            <button class="btn" onClick={() => setArchiveConflict(null)}>Keep the task</button>
            <button class="btn btn-danger" disabled={busy !== null} onClick={() => void archive(true)}>{busy === "archive" ? "Pushing…" : "Push to a rescue branch and archive"}</button>
          </div>
        </Modal>
      )}
    </header>
  );
}

function SessionTabs({ detail, viewer, active, base, onPick, orgId, members, billing }: { detail: TaskDetail; viewer: Viewer; active: SessionInfo | null; base: string; onPick: (id: string) => void; orgId: string; members: Map<string, Member> | null; billing?: BillingSummary }) {
  const [error, setError] = useState<string | null>(null);
  const [renaming, setRenaming] = useState<SessionInfo | null>(null);
  const [closing, setClosing] = useState<SessionInfo | null>(null);
  const [name, setName] = useState("");
  const [opening, setOpening] = useState(false);
  const archived = detail.archivedAt !== null;
  // An archived task's sessions are all closed: they are its tabs, to read.
  const open = archived ? detail.sessions : detail.sessions.filter((s) => s.status !== "closed");
  const closed = archived ? [] : detail.sessions.filter((s) => s.status === "closed");
  // Unread flags come live with this user's app snapshot (a turn ending elsewhere shows at once).
  const app = useStore(appState);
  const unread = unreadByTask(app.snapshot, orgId).get(detail.taskId);

  async function newSession() {
    if (opening) return; // one session per click, however fast the second click comes
    setOpening(true);
    setError(null);
    try {
      const s = await api<{ sessionId: string }>("POST", `${base}/sessions`, {});
      onPick(s.sessionId);
    } catch (e) {
      setError(errorText(e));
    } finally {
      setOpening(false);
    }
  }

  async function closeSession(s: SessionInfo) {
    setClosing(null);
    try {
      await api("DELETE", `${base}/sessions/${enc(s.sessionId)}`);
    } catch (e) {
      setError(errorText(e));
    }
  }

  return (
    <div class="sessions">
      <div class="session-tabs" role="group" aria-label="Agent sessions">
        {open.map((s) => (
          <div key={s.sessionId} class={`session-tab${active?.sessionId === s.sessionId ? " active" : ""}`}>
            <button aria-pressed={active?.sessionId === s.sessionId} class="session-tab-main" onClick={() => onPick(s.sessionId)} data-session-id={s.sessionId}>
              <span class={`dot status-${s.status}`} aria-hidden="true" />
              <span class="session-tab-name" title={s.name}>{s.name}</span>
              {unread?.has(s.sessionId) && active?.sessionId !== s.sessionId && <span class="unread-dot" title="Unread"><span class="sr-only">(unread)</span></span>}
            </button>
            {!archived && (
              <>
                <button class="icon-btn" aria-label={`Rename session ${s.name}`} onClick={() => { setRenaming(s); setName(s.name); }}>✎</button>
                <button class="icon-btn" aria-label={`Close session ${s.name}`} onClick={() => setClosing(s)}>✕</button>
              </>
            )}
          </div>
        ))}
        {!archived && (
          <button class="btn btn-small" disabled={opening} onClick={() => void newSession()}>{opening ? "Opening…" : "+ New session"}</button>
        )}
      </div>
      {closed.length > 0 && (
        <details class="closed-sessions">
          <summary class="muted small">Closed sessions ({closed.length})</summary>
          <div class="session-tabs" role="group" aria-label="Closed sessions">
            {closed.map((s) => (
              <button key={s.sessionId} class={`btn btn-small btn-ghost${active?.sessionId === s.sessionId ? " active" : ""}`} aria-pressed={active?.sessionId === s.sessionId} onClick={() => onPick(s.sessionId)} data-session-id={s.sessionId}>
                <span class="session-tab-name" title={s.name}>{s.name}</span>
              </button>
            ))}
          </div>
        </details>
      )}
      {!renaming && <ErrorNote error={error} />}
      {active ? (
        <SessionPane key={active.sessionId} orgId={orgId} taskId={detail.taskId} session={active} base={base} draft={viewer.drafts[active.sessionId] ?? ""} archived={archived} taskStatus={detail.status} members={members} billing={billing} />
      ) : (
        <p class="muted pad">{archived ? "This task is archived and has no session to show." : "No open session. Start one with “New session”."}</p>
      )}
      {closing && (
        <Modal title="Close this session?" onClose={() => setClosing(null)}>
          <p>
            “{closing.name}” stops its agent{closing.status === "running" ? " and the turn it is running" : ""}. Its transcript stays readable under
            Closed sessions; no one can send it messages any more.
          </p>
          <div class="actions">
            <button class="btn" onClick={() => setClosing(null)}>Keep it open</button>
            <button class="btn btn-danger" onClick={() => void closeSession(closing)}>Close session</button>
          </div>
        </Modal>
      )}
      {renaming && (
        <Modal title="Rename session" onClose={() => setRenaming(null)}>
          <form
            class="form"
            onSubmit={(e) => {
              e.preventDefault();
              api("PATCH", `${base}/sessions/${enc(renaming.sessionId)}`, { name: name.trim() }).then(() => setRenaming(null), (err) => setError(errorText(err)));
            }}
          >
            <div class="field">
              <label for="session-name">Session name</label>
              <input id="session-name" class="input" value={name} maxLength={200} required onInput={(e) => setName((e.currentTarget as HTMLInputElement).value)} />
            </div>
            <ErrorNote error={error} />
            <div class="actions">
              <button type="button" class="btn" onClick={() => { setRenaming(null); setError(null); }}>Cancel</button>
              <button type="submit" class="btn btn-primary" disabled={!name.trim()}>Rename</button>
            </div>
          </form>
        </Modal>
      )}
    </div>
  );
}
