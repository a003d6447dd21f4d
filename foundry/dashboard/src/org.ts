// The organization summary (`organization:<org>`), live: header, repositories and open tasks.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, enc } from "./lib/api";
import { realtime } from "./lib/realtime";

export interface PullRequestRef {
  number: number;
  state: string | null;
  url: string | null;
  title?: string | null;
}

export interface TaskSummary {
  taskId: string;
  repoId: string;
  repoFullName: string;
  title: string;
  status: string;
  isVirtual: boolean;
  branch: string | null;
  pullRequest: PullRequestRef | null;
  ciState: string | null;
  ownerUserId: string | null;
  ownerLogin: string | null;
  sessions: { sessionId: string; name: string; status: string }[];
  error: string | null;
  updatedAt: number;
}

export interface Repo {
  id: string;
  fullName: string;
  defaultBranch: string;
  /** Archived on GitHub: read-only, no task can push to it. */
  archived: boolean;
  taskCount: number;
}

export interface OrgSnapshot {
  organizationId: string;
  profile: { kind: string; githubLogin: string; displayName: string; avatarUrl: string | null };
  settings: { displayName: string; defaultModel: string };
  github: {
    installationId: number | null;
    installationStatus: string;
    syncStatus: string;
    syncPhase: string | null;
    processedCount: number | null;
    totalCount: number | null;
    syncError: string | null;
    lastSyncAt: number | null;
  };
  repos: Repo[];
  memberCount: number;
  taskSummaries: TaskSummary[];
  /** What every member sees of billing (the whole state is on `billing:<org>`, admins only). */
  billing?: BillingSummary;
}

/** The member-safe billing summary carried by `organization:<org>`. */
export interface BillingSummary {
  enabled: boolean;
  plan: "free" | "team";
  status: string;
  /** A member without a seat cannot send a first prompt until an admin upgrades or frees a seat. */
  seatLimitReached: boolean;
  /** The seats of the free plan (this server's setting). */
  freeSeats: number;
  updatedAt: number | null;
}

export interface Invoice {
  id: string;
  number: string | null;
  status: string;
  amountDue: number | null;
  amountPaid: number | null;
  currency: string | null;
  hostedInvoiceUrl: string | null;
  createdAt: number;
  periodEnd: number | null;
}

/** The whole billing state (`billing:<org>` and `GET …/billing`), for admins. */
export interface Billing {
  enabled: boolean;
  plan: "free" | "team";
  status: string;
  seats: { used: number; paid: number | null; limit: number | null; members: { userId: string; login: string; takenAt: number }[] };
  currentPeriodEnd: number | null;
  trialEnd: number | null;
  cancelAt: number | null;
  pastDueSince: number | null;
  graceEndsAt: number | null;
  paymentMethod: string | null;
  hasCustomer: boolean;
  /** The seats of the free plan (this server's setting). */
  freeSeats: number;
  sync: { pending: number; lastError: string | null };
  invoices: Invoice[];
  updatedAt: number | null;
}

export interface Member {
  userId: string;
  login: string;
  avatarUrl: string | null;
  role: string;
}

export type OrgView =
  | { state: "loading" }
  | { state: "notfound" }
  | { state: "error"; detail: string }
  | { state: "ready"; org: OrgSnapshot; viewerRole: string };

function applyEvent(org: OrgSnapshot, event: string, data: any): OrgSnapshot {
  if (event === "snapshot") return data as OrgSnapshot;
  if (event === "organizationUpdated") return { ...org, ...data, taskSummaries: org.taskSummaries };
  if (event === "taskSummariesUpdated") {
    const removed = new Set<string>(data.removed ?? []);
    const byId = new Map(org.taskSummaries.map((t) => [t.taskId, t]));
    for (const t of data.upserted ?? []) byId.set(t.taskId, t);
    for (const id of removed) byId.delete(id);
    const tasks = [...byId.values()].sort((a, b) => b.updatedAt - a.updatedAt);
    return { ...org, taskSummaries: tasks };
  }
  if (event === "billingUpdated") return { ...org, billing: data as BillingSummary };
  return org;
}

export function useOrganization(orgId: string): OrgView {
  const [view, setView] = useState<OrgView>({ state: "loading" });
  useEffect(() => {
    let alive = true;
    let role: string | null = null;
    let org: OrgSnapshot | null = null;
    const publish = () => {
      if (alive && role && org) setView({ state: "ready", org, viewerRole: role });
    };
    setView({ state: "loading" });
    // The GET is the membership check (404 for non-members, exactly as for made-up names) and
    // gives the viewer's role; the topic carries the data from then on.
    api<OrgSnapshot & { viewerRole: string }>("GET", `/v1/organizations/${enc(orgId)}`)
      .then((snap) => {
        role = snap.viewerRole;
        org = org ?? snap;
        publish();
      })
      .catch((e) => {
        if (!alive) return;
        if (e instanceof ApiError && (e.status === 404 || e.status === 403)) setView({ state: "notfound" });
        else setView({ state: "error", detail: (e as Error).message });
      });
    const stop = realtime.subscribe(
      `organization:${orgId}`,
      (e) => {
        org = org || e.event === "snapshot" ? applyEvent(org ?? (e.data as OrgSnapshot), e.event, e.data) : org;
        publish();
      },
      (code) => {
        if (alive && (code === "forbidden" || code === "not_found")) setView({ state: "notfound" });
      },
    );
    return () => {
      alive = false;
      stop();
    };
  }, [orgId]);
  return view;
}
