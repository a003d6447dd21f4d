// The root: routes on the client and lays out the signed-in shell.
import { useEffect } from "preact/hooks";
import { Avatar, ConnectionBanner } from "./components/common";
import { linkClick, match, navigate, useLocation } from "./lib/router";
import { useStore } from "./lib/store";
import { useOrganization } from "./org";
import { BillingPage } from "./pages/billing";
import { NotFoundPage } from "./pages/notfound";
import { OrgPickerPage } from "./pages/orgs";
import { SettingsPage } from "./pages/settings";
import { SignInPage } from "./pages/signin";
import { Workspace } from "./pages/workspace";
import { appState, signOut, type AppSnapshot } from "./session";

export function App() {
  const state = useStore(appState);
  const loc = useLocation();
  useEffect(() => {
    document.documentElement.dataset.phase = state.phase;
  }, [state.phase]);

  if (state.phase === "loading") return <main class="center-page" aria-busy="true"><p class="muted">Loading Foundry…</p></main>;
  if (state.phase === "error")
    return (
      <main class="center-page">
        <h1>Foundry is not reachable</h1>
        <p role="alert">{state.message}</p>
        <button class="btn" onClick={() => location.reload()}>Try again</button>
      </main>
    );
  if (state.phase === "signed_out") return <SignInPage message={state.message} />;

  const snap = state.snapshot!;
  if (loc.path === "/" || loc.path === "/sign-in") {
    const discovering = !snap.organizations.length && ["idle", "syncing"].includes(snap.organizationSync.status);
    if (discovering && !loc.query.get("next")) {
      // Right after the first sign-in the organizations are still being read from GitHub; the app
      // snapshot arrives live and this page moves on by itself.
      return <main class="center-page" aria-busy="true"><p class="muted">Finding your organizations…</p></main>;
    }
    const next = loc.query.get("next");
    const target = next && next.startsWith("/") && !next.startsWith("//") ? next : snap.activeOrganizationId ? `/o/${encodeURIComponent(snap.activeOrganizationId)}` : "/orgs";
    navigate(target, true);
    return null;
  }
  if (loc.path === "/orgs") return <Shell snap={snap} org={null}><OrgPickerPage snap={snap} /></Shell>;
  const orgMatch = /^\/o\/([^/]+)(\/.*)?$/.exec(loc.path);
  if (orgMatch) {
    let orgId: string;
    try {
      orgId = decodeURIComponent(orgMatch[1]);
    } catch {
      return <Shell snap={snap} org={null}><NotFoundPage /></Shell>;
    }
    return <OrgLayout snap={snap} orgId={orgId} rest={orgMatch[2] ?? ""} query={loc.query} />;
  }
  return <Shell snap={snap} org={null}><NotFoundPage /></Shell>;
}

function OrgLayout({ snap, orgId, rest, query }: { snap: AppSnapshot; orgId: string; rest: string; query: URLSearchParams }) {
  const view = useOrganization(orgId);
  const listed = snap.organizations.some((o) => o.id === orgId);
  useEffect(() => {
    if (view.state === "ready" && snap.activeOrganizationId !== orgId) {
      // Remember the choice: the next visit to / opens this organization.
      void import("./lib/api").then(({ api }) =>
        api("POST", "/v1/app/active-organization", { organizationId: orgId }).catch((e) =>
          console.warn("could not remember the active organization", e),
        ),
      );
    }
  }, [view.state, orgId]);

  let body;
  if (view.state === "loading") body = <main class="center-page" aria-busy="true"><p class="muted">Loading organization…</p></main>;
  else if (view.state === "notfound") body = listed ? <SyncingOrg /> : <NotFoundPage />;
  else if (view.state === "error") body = <main class="center-page"><h1>Something went wrong</h1><p role="alert">{view.detail}</p></main>;
  else {
    const task = match("/t/:task", rest);
    if (rest === "" || rest === "/" || task) body = <Workspace org={view.org} viewerRole={view.viewerRole} taskId={task?.task ?? null} query={query} />;
    else if (rest === "/settings") body = <SettingsPage org={view.org} viewerRole={view.viewerRole} />;
    else if (rest === "/billing") body = <BillingPage org={view.org} viewerRole={view.viewerRole} query={query} />;
    else body = <NotFoundPage />;
  }
  return <Shell snap={snap} org={view.state === "ready" ? orgId : null} name={view.state === "ready" ? view.org.profile.displayName : undefined} section={rest.startsWith("/settings") ? "settings" : rest.startsWith("/billing") ? "billing" : "workspace"}>{body}</Shell>;
}

function SyncingOrg() {
  return (
    <main class="center-page">
      <h1>Setting up this organization</h1>
      <p class="muted">Foundry is reading its repositories and members from GitHub. This page updates by itself.</p>
    </main>
  );
}

function Shell({ snap, org, name, section, children }: { snap: AppSnapshot; org: string | null; name?: string; section?: string; children: any }) {
  const user = snap.user;
  const current = snap.organizations.find((o) => o.id === org);
  return (
    <div class="shell">
      <a class="skip-link" href="#main">Skip to content</a>
      <header class="topbar">
        <a class="brand" href="/" onClick={linkClick}>Foundry</a>
        <div class="org-switch">
          <label class="sr-only" for="org-select">Organization</label>
          <select
            id="org-select"
            value={org ?? ""}
            onChange={(e) => {
              const v = (e.currentTarget as HTMLSelectElement).value;
              navigate(v ? `/o/${encodeURIComponent(v)}` : "/orgs");
            }}
          >
            <option value="">Choose organization…</option>
            {/* The organization on screen by its live name (a rename in Settings shows at once). */}
            {snap.organizations.map((o) => <option key={o.id} value={o.id}>{o.id === org && name ? name : o.displayName}</option>)}
          </select>
        </div>
        {current && (
          <nav class="topnav" aria-label="Organization">
            <a href={`/o/${encodeURIComponent(current.id)}`} onClick={linkClick} aria-current={section === "workspace" ? "page" : undefined}>Workspace</a>
            <a href={`/o/${encodeURIComponent(current.id)}/settings`} onClick={linkClick} aria-current={section === "settings" ? "page" : undefined}>Settings</a>
            <a href={`/o/${encodeURIComponent(current.id)}/billing`} onClick={linkClick} aria-current={section === "billing" ? "page" : undefined}>Billing</a>
          </nav>
        )}
        <div class="spacer" />
        {user && (
          <div class="user-menu">
            <Avatar url={user.avatarUrl} login={user.githubLogin} />
            <span class="user-login" data-testid="current-user">{user.githubLogin}</span>
            <button class="btn btn-ghost" onClick={() => void signOut()}>Sign out</button>
          </div>
        )}
      </header>
      <ConnectionBanner />
      <div id="main" class="shell-body">{children}</div>
    </div>
  );
}
