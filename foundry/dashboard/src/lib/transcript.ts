// The transcript of one agent session, built from its append-only event log.
//
// Events are applied in seq order (the realtime client guarantees it). Consecutive text chunks are
// merged into one growing item, so a 2,000-chunk reply is one item whose text grows, not 2,000
// nodes; `rev` changes on every mutation so views re-render only the items that changed.
import type { RtEvent } from "./realtime";

export interface PermissionOption {
  optionId: string;
  name: string;
  kind?: string;
}

export type Item =
  | {
      kind: "user";
      key: string;
      rev: number;
      text: string;
      userId: string | null;
      messageId: number | null;
      /** sent: its turn ran (or runs); queued: waits for the agent; dropped: Stop or a close discarded it. */
      state: "sent" | "queued" | "dropped";
    }
  | { kind: "text"; key: string; rev: number; role: "agent" | "thought"; text: string }
  | { kind: "plan"; key: string; rev: number; entries: { content: string; status: string; priority?: string }[]; ended?: boolean }
  | {
      kind: "tool";
      key: string;
      rev: number;
      toolCallId: string;
      title: string;
      toolKind: string;
      status: string;
      content: any[];
      rawInput: unknown;
      rawOutput: unknown;
    }
  | {
      kind: "permission";
      key: string;
      rev: number;
      requestId: string;
      title: string;
      options: PermissionOption[];
      state: "pending" | "answered" | "cancelled";
      optionId: string | null;
      error: string | null;
    }
  | { kind: "notice"; key: string; rev: number; tone: "info" | "error" | "muted"; text: string };

type UserItem = Extract<Item, { kind: "user" }>;

export class Transcript {
  items: Item[] = [];
  /** Messages sent while a turn ran, waiting for theirs: shown after the running reply, not inside it. */
  queued: UserItem[] = [];
  version = 0;
  lastSeq = 0;
  usage: { used: number; size: number } | null = null;
  agentTitle: string | null = null;
  running = false;
  private lastTurnError: string | null = null;
  private tools = new Map<string, Extract<Item, { kind: "tool" }>>();
  private permissions = new Map<string, Extract<Item, { kind: "permission" }>>();

  apply(e: RtEvent): void {
    this.lastSeq = e.seq;
    this.version++;
    const d = e.data ?? {};
    const key = String(e.seq);
    switch (e.event) {
      case "sessionCreated":
        this.notice(key, "muted", `Session “${d.name ?? ""}” opened · ${d.agent ?? "agent"} / ${d.model ?? "model"}`);
        break;
      case "userMessage": {
        const waits = this.running || this.queued.length > 0;
        const item: UserItem = {
          kind: "user",
          key,
          rev: 0,
          text: String(d.text ?? ""),
          userId: d.userId ?? null,
          messageId: typeof d.messageId === "number" ? d.messageId : null,
          state: waits ? "queued" : "sent",
        };
        if (waits) this.queued.push(item);
        else this.items.push(item);
        break;
      }
      case "turnStarted": {
        this.running = true;
        const at = this.queued.findIndex((q) => q.messageId === d.messageId);
        if (at >= 0) {
          // Its turn starts now: the message takes its place in the conversation, before the reply.
          const [item] = this.queued.splice(at, 1);
          item.state = "sent";
          item.rev++;
          this.items.push(item);
        }
        break;
      }
      case "turnEnded":
        this.running = false;
        if (d.stopReason === "cancelled") this.notice(key, "info", d.forced ? "Stopped (the agent was shut down)." : "Stopped.");
        else if (d.stopReason && d.stopReason !== "end_turn") this.notice(key, "info", `Turn ended: ${d.stopReason}`);
        this.cancelPending();
        break;
      case "turnCancelled":
        this.running = false;
        if (d.stopReason === "archived") this.notice(key, "muted", "Stopped: the task was archived.");
        else if (d.stopReason === "closed") this.notice(key, "muted", "Stopped: the session was closed.");
        else this.notice(key, "info", d.forced ? "Stopped (the agent was shut down)." : "Stopped.");
        this.cancelPending();
        break;
      case "eventsLost": {
        if (d.reason === "stopped") {
          // Open-ended: Stop ended the turn, and what the agent sent from there on (if anything) was skipped.
          this.notice(key, "muted", "Anything the agent sent after Stop was not recorded.");
          break;
        }
        const range = d.to != null ? `#${d.from}–#${d.to}` : `after #${d.from}`;
        const why = d.reason ? String(d.reason) : "no longer available";
        this.notice(key, "error", `Agent events ${range} were not recorded (${why}).`);
        break;
      }
      case "agentRestarted":
        this.notice(key, d.loaded ? "muted" : "info", d.loaded ? "The agent restarted; its earlier context was restored." : "The agent restarted; earlier context was not restored.");
        break;
      case "turnFailed":
        this.running = false;
        this.notice(key, "error", `The turn failed: ${d.error ?? "unknown error"}`);
        this.lastTurnError = d.error ?? null;
        this.cancelPending();
        break;
      case "sessionStatus":
        this.running = d.status === "running";
        // The session's error is usually the failed turn's, just shown: say it once.
        if (d.status === "error" && d.error && d.error !== this.lastTurnError) this.notice(key, "error", `Session error: ${d.error}`);
        if (d.status !== "error") this.lastTurnError = null;
        break;
      case "stopRequested":
        this.notice(key, "muted", d.turnRunning ? "Stop requested…" : "Stop requested (no turn was running).");
        if (d.droppedQueued > 0) this.dropQueued(key, d.droppedQueued === 1 ? "Stop discarded the waiting message; it was not sent to the agent." : `Stop discarded ${d.droppedQueued} waiting messages; they were not sent to the agent.`);
        break;
      case "sessionRenamed":
        this.notice(key, "muted", `Renamed to “${d.name}”`);
        break;
      case "sessionClosed":
        this.running = false;
        this.notice(key, "muted", d.reason === "archived" ? "Session closed: the task was archived." : "Session closed.");
        this.dropQueued(`${key}-q`, "The waiting messages were not sent: the session was closed.");
        break;
      case "sandboxExited":
        this.notice(key, "error", `The sandbox stopped: ${d.reason ?? "unknown reason"}`);
        break;
      case "permissionRequested": {
        const item: Extract<Item, { kind: "permission" }> = {
          kind: "permission",
          key,
          rev: 0,
          requestId: String(d.requestId),
          title: d.toolCall?.title ?? "The agent asks for permission",
          options: Array.isArray(d.options) ? d.options : [],
          state: "pending",
          optionId: null,
          error: null,
        };
        this.permissions.set(item.requestId, item);
        this.items.push(item);
        break;
      }
      case "permissionAnswered": {
        const item = this.permissions.get(String(d.requestId));
        if (item) {
          item.state = d.optionId == null ? "cancelled" : "answered";
          item.optionId = d.optionId ?? null;
          item.rev++;
        }
        break;
      }
      case "permissionAnswerFailed": {
        const item = this.permissions.get(String(d.requestId));
        if (item) {
          item.error = String(d.error ?? "the answer could not be delivered");
          item.rev++;
        }
        break;
      }
      case "agentUpdate":
        this.agentUpdate(key, d.update ?? {});
        break;
      default:
        break;
    }
  }

  /** The text of the last agent reply (for tests and accessibility announcements). */
  get lastAgentText(): string {
    for (let i = this.items.length - 1; i >= 0; i--) {
      const it = this.items[i];
      if (it.kind === "text" && it.role === "agent") return it.text;
    }
    return "";
  }

  /** Waiting messages that will never run: shown where they were discarded, marked not sent. */
  private dropQueued(key: string, why: string): void {
    if (this.queued.length === 0) return;
    for (const item of this.queued) {
      item.state = "dropped";
      item.rev++;
      this.items.push(item);
    }
    this.queued = [];
    this.notice(`${key}-dropped`, "info", why);
  }

  private notice(key: string, tone: "info" | "error" | "muted", text: string): void {
    this.items.push({ kind: "notice", key, rev: 0, tone, text });
  }

  private cancelPending(): void {
    // The turn is over: a plan's steps still "in progress" or "pending" will not move any more.
    for (const item of this.items) {
      if (item.kind === "plan" && !item.ended) {
        item.ended = true;
        item.rev++;
      }
    }
    for (const p of this.permissions.values()) {
      if (p.state === "pending") {
        p.state = "cancelled";
        p.rev++;
      }
    }
  }

  private appendText(key: string, role: "agent" | "thought", text: string): void {
    const last = this.items[this.items.length - 1];
    if (last && last.kind === "text" && last.role === role) {
      last.text += text;
      last.rev++;
    } else {
      this.items.push({ kind: "text", key, rev: 0, role, text });
    }
  }

  private agentUpdate(key: string, u: any): void {
    switch (u.sessionUpdate) {
      case "agent_message_chunk":
        this.appendText(key, "agent", contentText(u.content));
        break;
      case "agent_thought_chunk":
        this.appendText(key, "thought", contentText(u.content));
        break;
      case "user_message_chunk":
        break; // the user's own message is already shown from `userMessage`
      case "plan": {
        const entries = Array.isArray(u.entries) ? u.entries : [];
        const last = this.items[this.items.length - 1];
        if (last && last.kind === "plan") {
          last.entries = entries;
          last.rev++;
        } else this.items.push({ kind: "plan", key, rev: 0, entries });
        break;
      }
      case "tool_call": {
        const item: Extract<Item, { kind: "tool" }> = {
          kind: "tool",
          key,
          rev: 0,
          toolCallId: String(u.toolCallId),
          title: String(u.title ?? "Tool call"),
          toolKind: String(u.kind ?? "other"),
          status: String(u.status ?? "pending"),
          content: Array.isArray(u.content) ? u.content : [],
          rawInput: u.rawInput,
          rawOutput: u.rawOutput,
        };
        this.tools.set(item.toolCallId, item);
        this.items.push(item);
        break;
      }
      case "tool_call_update": {
        const item = this.tools.get(String(u.toolCallId));
        if (!item) break;
        if (u.title) item.title = String(u.title);
        if (u.status) item.status = String(u.status);
        if (Array.isArray(u.content)) item.content = u.content;
        if (u.rawOutput !== undefined && u.rawOutput !== null) item.rawOutput = u.rawOutput;
        item.rev++;
        break;
      }
      case "usage_update":
        if (typeof u.used === "number") this.usage = { used: u.used, size: Number(u.size) || 0 };
        break;
      case "session_info_update":
        if (u.title) this.agentTitle = String(u.title);
        break;
      default:
        break;
    }
  }
}

function contentText(c: any): string {
  if (!c) return "";
  if (c.type === "text") return String(c.text ?? "");
  if (c.type === "resource_link") return `[${c.name ?? c.uri}]`;
  return "";
}
