// One websocket per tab for every live view (`WS /v1/realtime`).
//
// Subscriptions follow the views. The client remembers the last seq it applied per topic; after a
// drop it reconnects with backoff and subscribes again with `since`, so the server sends only what
// was missed (a replay, or a fresh snapshot). Anything at or below the last applied seq is dropped,
// so a view never sees an event twice, whatever the server resends.
import { Store } from "./store";

export interface RtEvent {
  topic: string;
  event: string;
  seq: number;
  data: any;
}

export type Connection = "connecting" | "open" | "reconnecting" | "unauthorized" | "closed";

interface Subscription {
  topic: string;
  onEvent: (e: RtEvent) => void;
  onError: (code: string, detail: string) => void;
  lastSeq: number | null;
}

const PING_EVERY_MS = 20_000;
const PONG_WITHIN_MS = 10_000;

export class Realtime {
  readonly connection = new Store<Connection>("closed");
  /** Topics whose owner does not answer right now (a `waiting` frame), until their next frame. */
  readonly waiting = new Store<string[]>([]);
  private ws: WebSocket | null = null;
  private subs = new Map<string, Subscription>();
  private attempt = 0;
  private retry: number | undefined;
  private pinger: number | undefined;
  private awaitingPong = 0;
  private stopped = true;

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.retry);
    window.clearInterval(this.pinger);
    this.subs.clear();
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000);
    this.connection.set("closed");
  }

  /** Follow a topic; returns the function that stops following it. One subscriber per topic. */
  subscribe(
    topic: string,
    onEvent: (e: RtEvent) => void,
    onError: (code: string, detail: string) => void = () => {},
  ): () => void {
    const sub: Subscription = { topic, onEvent, onError, lastSeq: null };
    const previous = this.subs.get(topic);
    this.subs.set(topic, sub);
    if (previous) this.send({ op: "unsubscribe", topic });
    this.send({ op: "subscribe", topic });
    return () => {
      if (this.subs.get(topic) !== sub) return;
      this.subs.delete(topic);
      this.heard(topic);
      this.send({ op: "unsubscribe", topic });
    };
  }

  private send(frame: object): void {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  private open(): void {
    if (this.stopped) return;
    this.connection.set(this.attempt === 0 ? "connecting" : "reconnecting");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(`${scheme}${location.host}/v1/realtime`);
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.connection.set("open");
      for (const sub of this.subs.values()) {
        const frame: Record<string, unknown> = { op: "subscribe", topic: sub.topic };
        if (sub.lastSeq !== null) frame.since = sub.lastSeq;
        ws.send(JSON.stringify(frame));
      }
      window.clearInterval(this.pinger);
      this.awaitingPong = 0;
      this.pinger = window.setInterval(() => this.ping(ws), PING_EVERY_MS);
    };
    ws.onmessage = (m) => {
      if (this.ws !== ws) return;
      let frame: any;
      try {
        frame = JSON.parse(String(m.data));
      } catch {
        console.error("realtime: a frame that is not JSON", m.data);
        return;
      }
      this.dispatch(frame, ws);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.waiting.set([]); // the reconnection banner says more
      window.clearInterval(this.pinger);
      if (this.stopped) return;
      if (ev.code === 4401) {
        this.connection.set("unauthorized");
        return;
      }
      this.connection.set("reconnecting");
      // Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s … capped at 10 s.
      const delay = Math.min(10_000, 250 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
      this.attempt += 1;
      this.retry = window.setTimeout(() => this.open(), delay);
    };
  }

  private ping(ws: WebSocket): void {
    if (this.awaitingPong && Date.now() - this.awaitingPong > PONG_WITHIN_MS) {
      ws.close(4000, "no pong"); // a silent connection: reconnect
      return;
    }
    if (!this.awaitingPong) this.awaitingPong = Date.now();
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ op: "ping" }));
  }

  /** ``topic``'s owner answered (or it is no longer followed): it no longer waits. */
  private heard(topic: string | undefined): void {
    const waiting = this.waiting.value;
    if (topic && waiting.includes(topic)) this.waiting.set(waiting.filter((t) => t !== topic));
  }

  private dispatch(frame: any, ws: WebSocket): void {
    if (frame.op) {
      if (frame.op === "pong") this.awaitingPong = 0;
      else if (frame.op === "waiting") {
        if (this.subs.has(frame.topic) && !this.waiting.value.includes(frame.topic)) {
          this.waiting.set([...this.waiting.value, frame.topic]);
        }
      } else if (frame.op === "error") {
        this.heard(frame.topic);
        const sub = frame.topic ? this.subs.get(frame.topic) : undefined;
        if (sub) sub.onError(frame.error, frame.detail);
        else if (frame.error === "unauthorized") this.connection.set("unauthorized");
        else console.warn("realtime error", frame);
      }
      return;
    }
    if (ws !== this.ws) return;
    this.heard(frame.topic);
    const sub = this.subs.get(frame.topic);
    if (!sub || typeof frame.seq !== "number") return;
    if (sub.lastSeq !== null) {
      // A snapshot may repeat the current seq (it re-confirms the state); events must move forward.
      if (frame.event === "snapshot" ? frame.seq < sub.lastSeq : frame.seq <= sub.lastSeq) return;
    }
    sub.lastSeq = frame.seq;
    sub.onEvent(frame as RtEvent);
  }
}

export const realtime = new Realtime();
