// The signed-in user's app snapshot (`app:<userId>`), kept live, and the sign-in/out transitions.
import { api, onUnauthorized, outcomeUnknown } from "./lib/api";
import { realtime } from "./lib/realtime";
import { navigate } from "./lib/router";
import { Store } from "./lib/store";

export interface OrgRef {
  id: string;
  displayName: string;
  kind: string;
  role: string | null;
  avatarUrl: string | null;
}

export interface AppSnapshot {
  auth: { status: string; currentUserId: string | null };
  user: { id: string; githubLogin: string; name: string | null; avatarUrl: string | null } | null;
  activeOrganizationId: string | null;
  organizations: OrgRef[];
  organizationSync: { status: string; error: string | null; syncedAt: number | null };
  /** This user's unread sessions (their own per-user state, on their own topic). */
  unread?: UnreadRef[];
}

export interface UnreadRef {
  organizationId: string;
  taskId: string;
  sessionId: string;
}

export interface AppState {
  phase: "loading" | "signed_out" | "signed_in" | "error";
  snapshot: AppSnapshot | null;
  message: string | null;
}

export interface PageConfig {
  mockSignIn: boolean;
  githubSignIn: boolean;
  modelGroups: { provider: string; agent: string; models: string[] }[];
}

export const config: PageConfig = (() => {
  const el = document.getElementById("foundry-config");
  try {
    return JSON.parse(el?.textContent ?? "") as PageConfig;
  } catch {
    return { mockSignIn: false, githubSignIn: true, modelGroups: [] };
  }
})();

export const appState = new Store<AppState>({ phase: "loading", snapshot: null, message: null });

const EXPIRED = "Your session has ended. Sign in again to continue.";

/**
 * Back to the sign-in page. `returnHere`: after signing in again, come back to this page (the
 * session expired mid-work). Not after signing out on purpose: whoever signs in next may not be
 * allowed to see it.
 */
export function signedOut(message: string | null, returnHere = true): void {
  realtime.stop();
  appState.set({ phase: "signed_out", snapshot: null, message });
  if (!returnHere) {
    navigate("/sign-in", true);
    return;
  }
  if (!location.pathname.startsWith("/sign-in")) {
    const next = location.pathname + location.search;
    navigate(next && next !== "/" ? `/sign-in?next=${encodeURIComponent(next)}` : "/sign-in", true);
  }
}

onUnauthorized(() => {
  if (appState.value.phase === "signed_in") signedOut(EXPIRED);
});
realtime.connection.subscribe((c) => {
  if (c === "unauthorized" && appState.value.phase === "signed_in") signedOut(EXPIRED);
});

let unsubscribeApp: (() => void) | null = null;

/** How long the page waits before it loads again after Foundry did not answer. */
const BOOT_RETRY_MS = 3000;

export async function boot(): Promise<void> {
  let snapshot: AppSnapshot;
  try {
    snapshot = await api<AppSnapshot>("GET", "/v1/app");
  } catch (e) {
    const passing = outcomeUnknown(e); // unreachable, or a part restarting: it comes back by itself
    appState.set({ phase: "error", snapshot: null, message: (e as Error).message + (passing ? " Trying again…" : "") });
    if (passing) window.setTimeout(() => appState.value.phase === "error" && void boot(), BOOT_RETRY_MS);
    return;
  }
  if (snapshot.auth.status !== "signed_in" || !snapshot.auth.currentUserId) {
    signedOut(appState.value.message);
    return;
  }
  appState.set({ phase: "signed_in", snapshot, message: null });
  realtime.start();
  unsubscribeApp?.();
  unsubscribeApp = realtime.subscribe(`app:${snapshot.auth.currentUserId}`, (e) => {
    if (e.event === "snapshot" || e.event === "appUpdated") {
      appState.set({ phase: "signed_in", snapshot: e.data as AppSnapshot, message: null });
    }
  });
}

export async function signOut(): Promise<void> {
  try {
    await api("POST", "/v1/auth/sign-out");
  } finally {
    unsubscribeApp = null;
    signedOut("You have signed out.", false);
  }
}

export function currentUserId(): string | null {
  return appState.value.snapshot?.auth.currentUserId ?? null;
}

/** The ids of this user's unread sessions of one organization, keyed by task. */
export function unreadByTask(snapshot: AppSnapshot | null, orgId: string): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const u of snapshot?.unread ?? []) {
    if (u.organizationId !== orgId) continue;
    const set = out.get(u.taskId) ?? new Set<string>();
    set.add(u.sessionId);
    out.set(u.taskId, set);
  }
  return out;
}
