// Organization settings (admins edit, members read), agent credentials, members, and the audit log.
import { useEffect, useState } from "preact/hooks";
import { AgentCredentials } from "../components/agentCredentials";
import { AuditList } from "../components/audit";
import { Avatar, ErrorNote } from "../components/common";
import { ModelSelect } from "../components/newTask";
import { api, enc, errorText } from "../lib/api";
import type { Member, OrgSnapshot } from "../org";

export function SettingsPage({ org, viewerRole }: { org: OrgSnapshot; viewerRole: string }) {
  const admin = viewerRole === "admin";
  const [displayName, setDisplayName] = useState(org.settings.displayName);
  const [model, setModel] = useState(org.settings.defaultModel);
  const [saved, setSaved] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [members, setMembers] = useState<Member[] | null>(null);
  const [filters, setFilters] = useState({ repoId: "", taskId: "", kind: "" });
  const [draftFilters, setDraftFilters] = useState(filters);

  // Another admin's change arrives live; a field follows it unless this form changed that field
  // and has not saved it (the last values this form showed from the server are the base).
  const [base, setBase] = useState(org.settings);
  useEffect(() => {
    setDisplayName((mine) => (mine === base.displayName ? org.settings.displayName : mine));
    setModel((mine) => (mine === base.defaultModel ? org.settings.defaultModel : mine));
    setBase(org.settings);
  }, [org.settings.displayName, org.settings.defaultModel]);
  useEffect(() => {
    api<Member[]>("GET", `/v1/organizations/${enc(org.organizationId)}/members`).then(setMembers, (e) => setError(errorText(e)));
  }, [org.organizationId, org.memberCount]);

  async function save(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setSaved(null);
    try {
      await api("PATCH", `/v1/organizations/${enc(org.organizationId)}/settings`, { displayName: displayName.trim(), defaultModel: model });
      setSaved("Settings saved.");
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="page">
      <h1>Organization settings</h1>
      <section class="card" aria-labelledby="general-heading">
        <h2 id="general-heading">General</h2>
        {!admin && <p class="muted small" data-testid="read-only-note">Only admins can change these settings. You are a member.</p>}
        <form class="form" onSubmit={save}>
          <div class="field">
            <label for="set-name">Display name</label>
            <input id="set-name" class="input" value={displayName} disabled={!admin} required onInput={(e) => setDisplayName((e.currentTarget as HTMLInputElement).value)} />
          </div>
          <div class="field">
            <label for="set-model">Default model</label>
            <ModelSelect id="set-model" value={model} onChange={setModel} allowDefault={false} disabled={!admin} />
          </div>
          {admin && (
            <div class="actions left">
              <button type="submit" class="btn btn-primary" disabled={busy || !displayName.trim()}>{busy ? "Saving…" : "Save"}</button>
            </div>
          )}
          {saved && <p class="ok-note" role="status">{saved}</p>}
          <ErrorNote error={error} />
        </form>
      </section>

      <AgentCredentials orgId={org.organizationId} admin={admin} />

      <section class="card" aria-labelledby="members-heading">
        <h2 id="members-heading">Members</h2>
        <p class="muted small">Membership and roles come from GitHub.</p>
        {!members ? (
          <p class="muted">Loading members…</p>
        ) : (
          <table class="table">
            <thead>
              <tr><th scope="col">Member</th><th scope="col">Role</th></tr>
            </thead>
            <tbody>
              {members.map((m) => (
                <tr key={m.userId}>
                  <td><span class="member"><Avatar url={m.avatarUrl} login={m.login} />{m.login}</span></td>
                  <td>{m.role}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section class="card" aria-labelledby="audit-heading">
        <h2 id="audit-heading">Audit log</h2>
        <form
          class="filters"
          onSubmit={(e) => {
            e.preventDefault();
            setFilters(draftFilters);
          }}
        >
          <div class="field">
            <label for="f-repo">Repository</label>
            <select id="f-repo" value={draftFilters.repoId} onChange={(e) => setDraftFilters({ ...draftFilters, repoId: (e.currentTarget as HTMLSelectElement).value })}>
              <option value="">All repositories</option>
              {org.repos.map((r) => <option key={r.id} value={r.id}>{r.fullName}</option>)}
            </select>
          </div>
          <div class="field">
            <label for="f-task">Task id</label>
            <input id="f-task" class="input" value={draftFilters.taskId} onInput={(e) => setDraftFilters({ ...draftFilters, taskId: (e.currentTarget as HTMLInputElement).value.trim() })} />
          </div>
          <div class="field">
            <label for="f-kind">Kind</label>
            <input id="f-kind" class="input" placeholder="e.g. task.created, or billing for every billing entry" value={draftFilters.kind} onInput={(e) => setDraftFilters({ ...draftFilters, kind: (e.currentTarget as HTMLInputElement).value.trim() })} />
          </div>
          <button type="submit" class="btn">Apply filters</button>
        </form>
        <AuditList orgId={org.organizationId} filters={filters} />
      </section>
    </main>
  );
}
