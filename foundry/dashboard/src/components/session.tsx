// One agent session: the live transcript, pending permission prompts, the composer and Stop.
import { Component } from "preact";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { api, enc, errorText, newIdempotencyKey, outcomeUnknown } from "../lib/api";
import { renderMarkdown } from "../lib/markdown";
import { realtime } from "../lib/realtime";
import { useStore } from "../lib/store";
import { Transcript, type Item } from "../lib/transcript";
import { useSeatNotice } from "../lib/seat";
import type { BillingSummary, Member } from "../org";
import type { SessionInfo } from "../pages/task";
import { appState, currentUserId } from "../session";
import { ErrorNote } from "./common";

const MIN_RENDER_MS = 80;

/** Follows `session:<org>:<task>:<sid>` and re-renders at most once per animation frame. */
function useTranscript(orgId: string, taskId: string, sessionId: string, onTurnEnd: () => void): Transcript {
  const model = useRef(new Transcript()).current;
  const [, setVersion] = useState(0);
  const ended = useRef(onTurnEnd);
  ended.current = onTurnEnd;
  useEffect(() => {
    let frame = 0;
    let timer: number | undefined;
    let last = 0;
    const flush = () => {
      frame = 0;
      last = performance.now();
      setVersion(model.version);
    };
    const schedule = () => {
      if (frame || timer !== undefined) return;
      // Many events per frame (a fast agent, or a replay) cost one render, not one each; and a
      // streaming reply re-renders at most every MIN_RENDER_MS (each render lays out its text).
      const wait = MIN_RENDER_MS - (performance.now() - last);
      if (wait <= 0) frame = requestAnimationFrame(flush);
      else
        timer = window.setTimeout(() => {
          timer = undefined;
          frame = requestAnimationFrame(flush);
        }, wait);
    };
    const stop = realtime.subscribe(`session:${orgId}:${taskId}:${sessionId}`, (e) => {
      model.apply(e);
      if (e.event === "turnEnded" || e.event === "turnFailed" || e.event === "turnCancelled") ended.current();
      schedule();
    });
    return () => {
      stop();
      if (frame) cancelAnimationFrame(frame);
      window.clearTimeout(timer);
    };
  }, [orgId, taskId, sessionId]);
  return model;
}

/** Mark-read requests, sent one after another: each also makes its session the one a reload opens,
 * so the read of a session left a moment ago must not land after the read of the one now shown. */
let reads: Promise<unknown> = Promise.resolve();

function postRead(url: string): void {
  reads = reads.then(() => api("POST", url)).catch((e) => console.warn("mark read", e));
}

export function SessionPane({ orgId, taskId, session, base, draft, archived, taskStatus, members, billing }: { orgId: string; taskId: string; session: SessionInfo; base: string; draft: string; archived: boolean; taskStatus: string; members: Map<string, Member> | null; billing?: BillingSummary }) {
  const sbase = `${base}/sessions/${enc(session.sessionId)}`;
  const markRead = () => {
    if (document.visibilityState === "visible") postRead(`${sbase}/read`);
  };
  const model = useTranscript(orgId, taskId, session.sessionId, markRead);
  const seatNotice = useSeatNotice(orgId, billing);
  useEffect(markRead, [session.sessionId]);
  // The session is on screen: whenever this user's state says it is unread (a turn ended, and the
  // task's note may land after the turnEnded event this page already saw), or the tab comes back
  // into view, it is read.
  const app = useStore(appState);
  const unread = (app.snapshot?.unread ?? []).some((u) => u.organizationId === orgId && u.taskId === taskId && u.sessionId === session.sessionId);
  useEffect(() => {
    if (unread) markRead();
  }, [unread, session.sessionId]);
  useEffect(() => {
    const onVisible = () => {
      if (unread) markRead();
    };
    document.addEventListener("visibilitychange", onVisible);
    return () => document.removeEventListener("visibilitychange", onVisible);
  }, [unread, session.sessionId]);
  const running = session.status === "running";
  const me = app.snapshot?.auth.currentUserId ?? null;
  // "You" for this viewer's own messages; everyone else's by their login.
  const author = (userId: string | null): string =>
    userId === null ? "Someone" : userId === me ? "You" : members === null ? "A member" : members.get(userId)?.login ?? "A former member";
  return (
    <div class="session-pane">
      <TranscriptView model={model} sbase={sbase} author={author} />
      <div class="session-foot">
        <span class="muted small" data-testid="session-info">
          {session.agent} · {session.model}
          {model.usage && ` · context ${model.usage.used.toLocaleString()} / ${model.usage.size.toLocaleString()} tokens`}
          {session.queuedMessages > 0 && ` · ${session.queuedMessages} queued`}
        </span>
      </div>
      <Composer sbase={sbase} initialDraft={draft} session={session} archived={archived} taskStatus={taskStatus} running={running} seatNotice={seatNotice} />
    </div>
  );
}

function TranscriptView({ model, sbase, author }: { model: Transcript; sbase: string; author: (userId: string | null) => string }) {
  const scroller = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && pinned.current) el.scrollTop = el.scrollHeight;
  });
  return (
    <div
      class="transcript"
      ref={scroller}
      tabIndex={0}
      role="log"
      aria-label="Transcript"
      aria-live="off"
      data-last-seq={model.lastSeq}
      data-running={model.running ? "true" : "false"}
      onScroll={(e) => {
        const el = e.currentTarget as HTMLDivElement;
        pinned.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
      }}
    >
      {model.items.length === 0 && <p class="muted">No messages yet.</p>}
      {model.items.map((it) => <ItemView key={it.key} item={it} rev={it.rev} sbase={sbase} author={it.kind === "user" ? author(it.userId) : ""} />)}
      {model.running && <p class="thinking muted" aria-live="polite">The agent is working…</p>}
      {model.queued.map((it) => <ItemView key={it.key} item={it} rev={it.rev} sbase={sbase} author={author(it.userId)} />)}
    </div>
  );
}

/** Re-renders only when the item changed (its rev): a long transcript costs one item per frame. */
class ItemView extends Component<{ item: Item; rev: number; sbase: string; author: string }> {
  shouldComponentUpdate(next: { item: Item; rev: number; author: string }): boolean {
    return next.item !== this.props.item || next.rev !== this.props.rev || next.author !== this.props.author;
  }
  render() {
    const { item, sbase, author } = this.props;
    switch (item.kind) {
      case "user":
        // What a person typed is shown as typed: `__init__` or `2*3*4` are not formatting.
        return (
          <div class={`msg msg-user msg-${item.state}`} data-kind="user" data-state={item.state}>
            <div class="msg-role">
              {author}
              {item.state === "queued" && <span class="badge">waiting: runs when the agent is free</span>}
              {item.state === "dropped" && <span class="badge badge-warn">not sent</span>}
            </div>
            <div class="msg-body plain">{item.text}</div>
          </div>
        );
      case "text":
        return (
          <div class={`msg msg-${item.role}`} data-kind={item.role}>
            <div class="msg-role">{item.role === "agent" ? "Agent" : "Thinking"}</div>
            <div class="msg-body prose" data-testid={item.role === "agent" ? "agent-text" : undefined}>{renderMarkdown(item.text)}</div>
          </div>
        );
      case "plan":
        return (
          <div class="plan" data-kind="plan">
            <div class="msg-role">Plan</div>
            <ol>
              {item.entries.map((p, n) => {
                // After its turn, a step left open is shown as not done rather than still running.
                const status = item.ended && p.status !== "completed" ? "not_done" : p.status;
                const label = { completed: "done", in_progress: "in progress", pending: "pending", not_done: "not done when the turn ended" }[status] ?? status;
                return (
                  <li key={n} class={`plan-${status}`}>
                    <span class="plan-mark" aria-hidden="true">{status === "completed" ? "✓" : status === "in_progress" ? "◐" : status === "not_done" ? "–" : "○"}</span>
                    {p.content} <span class="sr-only">({label})</span>
                  </li>
                );
              })}
            </ol>
          </div>
        );
      case "tool":
        return <ToolView item={item} />;
      case "permission":
        return <PermissionView item={item} sbase={sbase} />;
      case "notice":
        return <p class={`notice-line tone-${item.tone}`} role={item.tone === "error" ? "alert" : undefined}>{item.text}</p>;
    }
  }
}

/** A finished tool (completed, or cancelled by Stop) rests; a failed one is an error; else it runs. */
function toolDot(status: string): "idle" | "error" | "running" {
  if (status === "completed" || status === "cancelled") return "idle";
  return status === "failed" ? "error" : "running";
}

function ToolView({ item }: { item: Extract<Item, { kind: "tool" }> }) {
  return (
    <details class={`tool tool-${item.status}`} data-kind="tool" open={item.status === "failed" || undefined}>
      <summary>
        <span class={`dot status-${toolDot(item.status)}`} aria-hidden="true" />
        <span class="tool-title">{item.title}</span>
        <span class="badge" data-testid="tool-status">{item.status}</span>
      </summary>
      {item.content.map((c, n) => <ToolContent key={n} c={c} />)}
      {item.rawOutput != null && <pre class="code small">{JSON.stringify(item.rawOutput, null, 2)}</pre>}
    </details>
  );
}

function ToolContent({ c }: { c: any }) {
  if (c?.type === "diff") {
    const oldLines = String(c.oldText ?? "").split("\n");
    const newLines = String(c.newText ?? "").split("\n");
    let start = 0;
    while (start < oldLines.length && start < newLines.length && oldLines[start] === newLines[start]) start++;
    let endOld = oldLines.length;
    let endNew = newLines.length;
    while (endOld > start && endNew > start && oldLines[endOld - 1] === newLines[endNew - 1]) {
      endOld--;
      endNew--;
    }
    return (
      <div class="diff-file">
        <div class="diff-file-head"><code>{c.path}</code></div>
        <pre class="diff">
          {oldLines.slice(start, endOld).map((l, n) => <span key={`d${n}`} class="del">-{l}{"\n"}</span>)}
          {newLines.slice(start, endNew).map((l, n) => <span key={`a${n}`} class="add">+{l}{"\n"}</span>)}
        </pre>
      </div>
    );
  }
  if (c?.type === "content" && c.content?.type === "text") return <pre class="code small">{String(c.content.text)}</pre>;
  if (c?.type === "terminal") return <p class="muted small">Terminal {String(c.terminalId)}</p>;
  return null;
}

function PermissionView({ item, sbase }: { item: Extract<Item, { kind: "permission" }>; sbase: string }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const answer = async (optionId: string | null) => {
    setBusy(true);
    setError(null);
    try {
      await api("POST", `${sbase}/permissions/${enc(item.requestId)}`, { optionId });
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(false);
    }
  };
  const chosen = item.options.find((o) => o.optionId === item.optionId);
  return (
    <div class="permission" role="group" aria-label="Permission request" data-kind="permission" data-state={item.state}>
      <p><strong>Permission requested:</strong> {item.title}</p>
      {item.state === "pending" ? (
        <div class="actions left">
          {item.options.map((o) => (
            <button key={o.optionId} class={`btn ${o.kind?.startsWith("allow") ? "btn-primary" : ""}`} disabled={busy} onClick={() => void answer(o.optionId)}>{o.name}</button>
          ))}
          <button class="btn btn-ghost" disabled={busy} onClick={() => void answer(null)}>Dismiss</button>
        </div>
      ) : (
        <p class="muted small">{item.state === "answered" ? `Answered: ${chosen?.name ?? item.optionId}` : "No longer pending."}</p>
      )}
      <ErrorNote error={error ?? item.error} />
    </div>
  );
}

/**
 * What this person typed in each composer during this page's life, saved or not, by user and
 * session: switching session tabs or views remounts the composer, and the draft the task page read
 * at load is older than that.
 */
const typed = new Map<string, string>();

function Composer({ sbase, initialDraft, session, archived, taskStatus, running, seatNotice }: { sbase: string; initialDraft: string; session: SessionInfo; archived: boolean; taskStatus: string; running: boolean; seatNotice: string | null }) {
  const slot = `${currentUserId() ?? ""}:${sbase}`;
  const start = typed.get(slot) ?? initialDraft;
  const [text, setText] = useState(start);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [info, setInfo] = useState<string | null>(null);
  const timer = useRef<number | undefined>(undefined);
  const saved = useRef(initialDraft);
  const recovery = useRef<number | undefined>(undefined);
  // After a send that failed because Foundry did not answer, look every 3 s whether it answers
  // again: its error would otherwise stay on screen long after it does.
  const watchRecovery = () => {
    window.clearTimeout(recovery.current);
    recovery.current = window.setTimeout(() => {
      api("GET", `${sbase}/events?limit=1`)
        .then(() => {
          setError(null);
          setInfo("Foundry answers again. Press Send to make sure your message went through: it is never sent twice.");
        })
        .catch(() => watchRecovery());
    }, 3000);
  };
  useEffect(() => () => window.clearTimeout(recovery.current), []);

  const latest = useRef(start);
  const saveDraft = (value: string, delay = 500) => {
    latest.current = value;
    typed.set(slot, value);
    window.clearTimeout(timer.current);
    timer.current = window.setTimeout(() => {
      if (value === saved.current) return;
      const before = saved.current;
      saved.current = value;
      api("PUT", `${sbase}/draft`, { text: value }).catch((e) => {
        // Offline, or the server restarting: try again until it is stored (the newest text only).
        console.warn("draft not saved yet; retrying", e);
        if (saved.current === value) saved.current = before;
        if (latest.current === value) saveDraft(value, 3000);
      });
    }, delay);
  };
  useEffect(() => {
    if (start !== initialDraft) saveDraft(start); // typed here before, not saved yet
    return () => {
      // Leaving (another session tab, another view): what was typed is saved now, not dropped.
      window.clearTimeout(timer.current);
      if (latest.current !== saved.current) {
        const value = latest.current;
        api("PUT", `${sbase}/draft`, { text: value }).catch((e) => console.warn("draft not saved on leaving", e));
      }
    };
  }, []);

  const reason = archived
    ? "This task is archived."
    : session.status === "closed"
      ? "This session is closed."
      : taskStatus === "error" && session.status === "error"
        ? null
        : null;
  const canSend = !reason && !busy && text.trim().length > 0;
  const pendingSend = useRef<{ text: string; key: string } | null>(null);

  async function send() {
    if (!canSend) return;
    setBusy(true);
    setError(null);
    setInfo(null);
    window.clearTimeout(recovery.current);
    window.clearTimeout(timer.current);
    // The same text sent again after an answer that never came keeps its key: queued at most once.
    const key = pendingSend.current?.text === text ? pendingSend.current.key : newIdempotencyKey();
    pendingSend.current = { text, key };
    try {
      await api("POST", `${sbase}/messages`, { text }, { "Idempotency-Key": key });
      pendingSend.current = null;
      setText("");
      saved.current = "";
      latest.current = ""; // a draft save still retrying must not bring the sent text back
      typed.set(slot, "");
    } catch (e) {
      if (!outcomeUnknown(e)) pendingSend.current = null; // refused: a new send is a new message
      else watchRecovery();
      setError(errorText(e));
      saveDraft(text, 0); // refused: the text stays, in the draft too (a reload keeps it)
    } finally {
      setBusy(false);
    }
  }

  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        void send();
      }}
    >
      {seatNotice && !reason && (
        <p class="notice" role="status" data-testid="seat-notice">Your messages are not accepted yet: {seatNotice}.</p>
      )}
      <label for="composer-text" class="sr-only">Message to the agent</label>
      <textarea
        id="composer-text"
        rows={3}
        value={text}
        disabled={!!reason}
        placeholder={reason ?? (running ? "The agent is working; your message runs when it is free. Ctrl+Enter to send" : "Message the agent… Ctrl+Enter to send")}
        onInput={(e) => {
          const v = (e.currentTarget as HTMLTextAreaElement).value;
          setText(v);
          saveDraft(v);
        }}
        onKeyDown={(e) => {
          if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
            e.preventDefault();
            void send();
          }
        }}
      />
      <div class="composer-actions">
        <span class="muted small" id="composer-hint">{reason ?? (text.trim() ? "" : "Write a message to send.")}</span>
        {running && (
          <button type="button" class="btn" onClick={() => api("POST", `${sbase}/stop`).catch((e) => setError(errorText(e)))}>Stop</button>
        )}
        <button type="submit" class="btn btn-primary" disabled={!canSend} aria-describedby="composer-hint">{busy ? "Sending…" : "Send"}</button>
      </div>
      <ErrorNote error={error} />
      {info && <p class="notice" role="status" data-testid="composer-info">{info}</p>}
    </form>
  );
}
