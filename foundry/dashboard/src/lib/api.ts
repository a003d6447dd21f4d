// JSON over fetch. Every failure becomes an ApiError carrying the server's {error, detail}.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly detail: string,
    readonly body: unknown,
  ) {
    super(detail);
  }
}

let unauthorized: (() => void) | null = null;

/** Called when any request answers 401: the session expired or was revoked. */
export function onUnauthorized(handler: () => void): void {
  unauthorized = handler;
}

export const enc = encodeURIComponent;

export async function api<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
  const init: RequestInit = { method, credentials: "same-origin", headers: { accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.headers = { accept: "application/json", "content-type": "application/json", ...headers };
    init.body = JSON.stringify(body);
  }
  let res: Response;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "Foundry could not be reached. Check the connection and try again.", null);
  }
  const text = await res.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = data as { error?: string; detail?: string } | null;
    let detail = typeof err?.detail === "string" && err.detail ? err.detail : statusText(res.status, res.statusText);
    if (err?.error === "actor_unavailable") {
      // A part of Foundry is restarting or not answering: its detail is for operators and API clients.
      console.warn(`${method} ${path}: ${detail}`);
      detail = statusText(res.status, res.statusText);
    }
    const failure = new ApiError(res.status, err?.error ?? "error", detail, data);
    if (res.status === 401 && unauthorized && !path.startsWith("/v1/auth/mock")) unauthorized();
    throw failure;
  }
  return data as T;
}

/** What a failure without Foundry's JSON body means to the person (a proxy's page, a crash). */
function statusText(status: number, reason: string): string {
  const code = `HTTP ${status}${reason ? ` ${reason}` : ""}`;
  if (status === 502 || status === 503 || status === 504) {
    return `Foundry is not answering right now (${code}). Nothing was lost; try again in a moment.`;
  }
  if (status >= 500) return `Foundry failed to answer (${code}). Try again; if it keeps failing, tell your administrator.`;
  if (status === 413) return `That is too large for Foundry to accept (${code}).`;
  if (status === 429) return `Too many requests (${code}). Wait a moment and try again.`;
  return `The request was refused (${code}).`;
}

export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.detail;
  return e instanceof Error ? e.message : String(e);
}

/** A fresh Idempotency-Key (random; works without a secure context, where randomUUID is missing). */
export function newIdempotencyKey(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Whether a failed write may still have been applied: sending it again must reuse its key. */
export function outcomeUnknown(e: unknown): boolean {
  return e instanceof ApiError && (e.status === 0 || e.status === 502 || e.status === 503 || e.status === 504);
}
