import { useState } from "preact/hooks";
import { api, enc, errorText, newIdempotencyKey, outcomeUnknown } from "../lib/api";
import { navigate } from "../lib/router";
import { useSeatNotice } from "../lib/seat";
import type { OrgSnapshot } from "../org";
import { config, currentUserId } from "../session";
import { Modal } from "./common";

export function ModelSelect({ id, value, onChange, allowDefault, defaultLabel, disabled }: { id: string; value: string; onChange: (v: string) => void; allowDefault: boolean; defaultLabel?: string; disabled?: boolean }) {
  return (
    <select id={id} value={value} disabled={disabled} onChange={(e) => onChange((e.currentTarget as HTMLSelectElement).value)}>
      {allowDefault && <option value="">{defaultLabel ?? "Default"}</option>}
      {config.modelGroups.map((g) => (
        <optgroup key={g.provider} label={g.provider}>
          {g.models.map((m) => <option key={m} value={m}>{m}</option>)}
        </optgroup>
      ))}
    </select>
  );
}

export function agentOf(model: string): string | undefined {
  return config.modelGroups.find((g) => g.models.includes(model))?.agent;
}

/** What was typed into a dialog closed without creating (Escape, a stray click): kept per user and
 * organization for this tab, so reopening the dialog brings it back (to the same person only). */
const unsent = new Map<string, { repoId: string; prompt: string; model: string; title: string; branch: string }>();
/** The Idempotency-Key of a create whose answer never came (network, 503), per user and organization:
 * creating the same task again reuses it, so the server makes one task however often it is retried. */
const unanswered = new Map<string, { body: string; key: string }>();

export function NewTaskDialog({ org, onClose }: { org: OrgSnapshot; onClose: () => void }) {
  // Archived repositories are read-only on GitHub: listed last, not offered by default.
  const repos = [...org.repos.filter((r) => !r.archived), ...org.repos.filter((r) => r.archived)];
  const slot = `${currentUserId() ?? ""}:${org.organizationId}`;
  const kept = unsent.get(slot);
  const [repoId, setRepoId] = useState(kept?.repoId ?? repos.find((r) => !r.archived)?.id ?? "");
  const [prompt, setPrompt] = useState(kept?.prompt ?? "");
  const [model, setModel] = useState(kept?.model ?? "");
  const [title, setTitle] = useState(kept?.title ?? "");
  const [branch, setBranch] = useState(kept?.branch ?? "");
  const close = () => {
    if (prompt.trim() || title.trim() || branch.trim()) unsent.set(slot, { repoId, prompt, model, title, branch });
    else unsent.delete(slot);
    onClose();
  };
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const seatNotice = useSeatNotice(org.organizationId, org.billing);

  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    const body: Record<string, string> = { repoId, prompt };
    if (model) {
      body.model = model;
      const agent = agentOf(model);
      if (agent) body.agent = agent;
    }
    if (title.trim()) body.title = title.trim();
    if (branch.trim()) body.branch = branch.trim();
    const sig = JSON.stringify(body);
    const pending = unanswered.get(slot);
    const key = pending?.body === sig ? pending.key : newIdempotencyKey();
    unanswered.set(slot, { body: sig, key });
    try {
      const created = await api<{ taskId: string }>("POST", `/v1/organizations/${enc(org.organizationId)}/tasks`, body, { "Idempotency-Key": key });
      unanswered.delete(slot);
      unsent.delete(slot);
      onClose();
      navigate(`/o/${enc(org.organizationId)}/t/${enc(created.taskId)}`);
    } catch (err) {
      if (!outcomeUnknown(err)) unanswered.delete(slot); // refused: trying again is a new create
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Modal title="New task" onClose={close}>
      <form class="form" onSubmit={submit}>
        <div class="field">
          <label for="nt-repo">Repository</label>
          <select id="nt-repo" value={repoId} required onChange={(e) => setRepoId((e.currentTarget as HTMLSelectElement).value)}>
            {repos.map((r) => (
              <option key={r.id} value={r.id} disabled={r.archived}>
                {r.archived ? `${r.fullName} (archived on GitHub)` : r.fullName}
              </option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="nt-prompt">What should the agent do?</label>
          <textarea id="nt-prompt" rows={5} required value={prompt} onInput={(e) => setPrompt((e.currentTarget as HTMLTextAreaElement).value)} />
        </div>
        <div class="field">
          <label for="nt-model">Model</label>
          <ModelSelect id="nt-model" value={model} onChange={setModel} allowDefault defaultLabel="Default model" />
        </div>
        <div class="field-row">
          <div class="field">
            <label for="nt-title">Title <span class="muted">(optional)</span></label>
            <input id="nt-title" class="input" value={title} onInput={(e) => setTitle((e.currentTarget as HTMLInputElement).value)} />
          </div>
          <div class="field">
            <label for="nt-branch">Branch <span class="muted">(optional)</span></label>
            <input id="nt-branch" class="input" value={branch} onInput={(e) => setBranch((e.currentTarget as HTMLInputElement).value)} />
          </div>
        </div>
        {seatNotice && !error && (
          <p class="notice" role="status" data-testid="seat-notice">Your prompts are not accepted yet: {seatNotice}.</p>
        )}
        {error && <p class="error-note" role="alert">{error}</p>}
        <div class="actions">
          <button type="button" class="btn" onClick={close}>Cancel</button>
          <button type="submit" class="btn btn-primary" disabled={busy || !repoId || !prompt.trim()}>{busy ? "Creating…" : "Create task"}</button>
        </div>
      </form>
    </Modal>
  );
}
