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

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const init: RequestInit = { method, credentials: "same-origin", headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers = { accept: "application/json", "content-type": "application/json" };
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
    const failure = new ApiError(res.status, err?.error ?? "error", err?.detail ?? `HTTP ${res.status}`, data);
    if (res.status === 401 && unauthorized && !path.startsWith("/v1/auth/mock")) unauthorized();
    throw failure;
  }
  return data as T;
}

export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.detail;
  return e instanceof Error ? e.message : String(e);
}
