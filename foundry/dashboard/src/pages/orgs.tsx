import { useState } from "preact/hooks";
import { Avatar } from "../components/common";
import { api, errorText } from "../lib/api";
import { linkClick } from "../lib/router";
import type { AppSnapshot } from "../session";

export function OrgPickerPage({ snap }: { snap: AppSnapshot }) {
  const [error, setError] = useState<string | null>(null);
  const sync = snap.organizationSync;
  return (
    <main class="page narrow">
      <h1>Choose an organization</h1>
      {snap.organizations.length === 0 ? (
        <p class="muted">
          {sync.status === "syncing" ? "Looking for your GitHub organizations…" : "You are not a member of any organization with the Foundry GitHub App installed."}
        </p>
      ) : (
        <ul class="org-list">
          {snap.organizations.map((o) => (
            <li key={o.id}>
              <a class="org-item" href={`/o/${encodeURIComponent(o.id)}`} onClick={linkClick}>
                <Avatar url={o.avatarUrl} login={o.displayName} size={28} />
                <span class="org-name">{o.displayName}</span>
                <span class="muted">{o.kind === "personal" ? "Personal" : o.role ?? "member"}</span>
              </a>
            </li>
          ))}
        </ul>
      )}
      {sync.error && <p class="error-note" role="alert">Organization discovery failed: {sync.error}</p>}
      <button
        class="btn"
        disabled={sync.status === "syncing"}
        onClick={() => api("POST", "/v1/app/organizations/refresh").catch((e) => setError(errorText(e)))}
      >
        {sync.status === "syncing" ? "Refreshing…" : "Refresh the list from GitHub"}
      </button>
      {error && <p class="error-note" role="alert">{error}</p>}
    </main>
  );
}
