// The organization's agent credentials: provider API keys its sandboxes' agents receive. Admins
// list (names only), set, replace and remove them; members are told who can. Values are
// write-only: the server never returns one, and this component forgets a value once it is saved.
import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, enc, errorText } from "../lib/api";
import { dateTime, timeAgo } from "../lib/format";
import { ErrorNote, Modal } from "./common";

export interface AgentCredential {
  name: string;
  setAt: number;
  setBy: string | null;
  /** The value's last four characters; null for values too short to show any of. */
  last4: string | null;
}

/** The names the server accepts today, offered as suggestions. The server stays the authority:
 * any other name is sent, and its refusal (which lists the accepted names) is shown. */
export const SUGGESTED_NAMES = [
  "ANTHROPIC_API_KEY",
  "CLAUDE_CODE_OAUTH_TOKEN",
  "OPENAI_API_KEY",
  "CODEX_API_KEY",
  "OPENROUTER_API_KEY",
  "GEMINI_API_KEY",
  "GOOGLE_API_KEY",
  "GROQ_API_KEY",
  "XAI_API_KEY",
  "MISTRAL_API_KEY",
  "DEEPSEEK_API_KEY",
  "AMP_API_KEY",
  "CURSOR_API_KEY",
];

// The server's own bounds (its path parameter and its value check).
const MAX_NAME_CHARS = 100;
const MAX_VALUE_CHARS = 4096;

/** Why ``name`` cannot be sent, or null. Only the shape is checked here: which names are allowed
 * is the server's answer. */
export function nameProblem(name: string): string | null {
  if (!name) return "Enter the variable name, e.g. ANTHROPIC_API_KEY.";
  if (name.length > MAX_NAME_CHARS) return `The name must be at most ${MAX_NAME_CHARS} characters.`;
  if (!/^[A-Z][A-Z0-9_]*$/.test(name)) return "A name is an environment variable: capital letters, digits and underscores, e.g. ANTHROPIC_API_KEY.";
  return null;
}

/** Why ``value`` would be refused, or null (the same rules as the server; never quotes it). */
export function valueProblem(value: string): string | null {
  if (!value) return "Enter the value.";
  if (value.length > MAX_VALUE_CHARS) return `The value must be at most ${MAX_VALUE_CHARS} characters (this one has ${value.length}).`;
  if (/[\n\r\0]/.test(value)) return "The value must not contain line breaks or NUL characters.";
  return null;
}

type Confirm = { kind: "replace"; entry: AgentCredential } | { kind: "remove"; entry: AgentCredential };

export function AgentCredentials({ orgId, admin }: { orgId: string; admin: boolean }) {
  return (
    <section class="card" aria-labelledby="credentials-heading" data-testid="agent-credentials">
      <h2 id="credentials-heading" tabIndex={-1}>Agent credentials</h2>
      <p class="muted small">
        API keys the coding agents of this organization's sandboxes receive as environment variables. Values are write-only: once saved, nobody can read
        them back. A change applies to sandboxes started afterwards; running sandboxes keep their environment.
      </p>
      {admin ? (
        // Keyed by organization: a name or value typed for one organization is never saved to the
        // next one opened in this tab.
        <CredentialsEditor key={orgId} orgId={orgId} />
      ) : (
        <p class="muted" data-testid="credentials-admins-only">Only admins can see which credentials are set and change them. You are a member.</p>
      )}
    </section>
  );
}

function CredentialsEditor({ orgId }: { orgId: string }) {
  const base = `/v1/organizations/${enc(orgId)}/agent-credentials`;
  const [entries, setEntries] = useState<AgentCredential[] | null>(null);
  const [forbidden, setForbidden] = useState(false);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [reveal, setReveal] = useState(false);
  const [attempted, setAttempted] = useState(false);
  const [serverError, setServerError] = useState<{ text: string; fields: string[] } | null>(null);
  const [status, setStatus] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [confirm, setConfirm] = useState<Confirm | null>(null);
  const nameRef = useRef<HTMLInputElement>(null);
  const valueRef = useRef<HTMLInputElement>(null);
  const headingFocus = () => document.getElementById("credentials-heading")?.focus();

  function failed(e: unknown): string {
    // A 403 means this viewer is no longer an admin (GitHub roles change): say so once, no form.
    if (e instanceof ApiError && e.status === 403) setForbidden(true);
    return errorText(e);
  }

  async function load(): Promise<void> {
    try {
      setEntries(await api<AgentCredential[]>("GET", base));
      setLoadError(null);
    } catch (e) {
      setLoadError(failed(e));
    }
  }

  useEffect(() => {
    void load();
    // Changes are not pushed live (the organization's topic does not carry credentials): another
    // admin's change shows when this tab regains focus or after this admin's own actions.
    const onFocus = () => {
      if (document.visibilityState === "visible") void load();
    };
    window.addEventListener("focus", onFocus);
    document.addEventListener("visibilitychange", onFocus);
    return () => {
      window.removeEventListener("focus", onFocus);
      document.removeEventListener("visibilitychange", onFocus);
    };
  }, [base]);

  const trimmedName = name.trim();
  const nameIssue = attempted ? nameProblem(trimmedName) : null;
  const valueIssue = attempted ? valueProblem(value) : null;
  const nameInvalid = !!nameIssue || !!serverError?.fields.includes("name");
  const valueInvalid = !!valueIssue || !!serverError?.fields.includes("value");

  function submit(e: Event) {
    e.preventDefault();
    setAttempted(true);
    setServerError(null);
    setStatus(null);
    if (nameProblem(trimmedName)) return nameRef.current?.focus();
    if (valueProblem(value)) return valueRef.current?.focus();
    const existing = entries?.find((c) => c.name === trimmedName);
    if (existing) setConfirm({ kind: "replace", entry: existing });
    else void save(trimmedName);
  }

  async function save(target: string) {
    setBusy(true);
    try {
      await api("PUT", `${base}/${enc(target)}`, { value });
      // The value is not kept once the server has it.
      setValue("");
      setReveal(false);
      setName("");
      setAttempted(false);
      setStatus(`${target} saved. Sandboxes started from now on get it.`);
      await load();
      nameRef.current?.focus();
    } catch (err) {
      const fields = err instanceof ApiError && Array.isArray((err.body as { fields?: unknown } | null)?.fields) ? ((err.body as { fields: string[] }).fields) : [];
      setServerError({ text: failed(err), fields });
      (fields.includes("value") ? valueRef : nameRef).current?.focus();
    } finally {
      setBusy(false);
    }
  }

  async function remove(target: string) {
    setBusy(true);
    setServerError(null);
    setStatus(null);
    try {
      await api("DELETE", `${base}/${enc(target)}`);
      setStatus(`${target} removed.`);
    } catch (err) {
      // Someone else removed it first: the outcome the admin wanted, said plainly.
      if (err instanceof ApiError && err.status === 404 && err.code === "not_found") setStatus(`${target} was already removed.`);
      else setServerError({ text: failed(err), fields: [] });
    } finally {
      setBusy(false);
    }
    await load();
    // The row's button is gone: focus moves to the section, not to the page's start.
    headingFocus();
  }

  if (forbidden) {
    return (
      <p class="error-note" role="alert" data-testid="credentials-forbidden">
        Only admins can see and change agent credentials, and GitHub no longer lists you as an admin of this organization. Reload the page to see your current role.
      </p>
    );
  }

  return (
    <div class="credentials">
      {loadError && <ErrorNote error={`Could not load the credentials: ${loadError}`} />}
      {entries === null && !loadError && <p class="muted">Loading credentials…</p>}
      {entries !== null && entries.length === 0 && <p class="muted" data-testid="credentials-empty">No credentials are set: agents get only the keys this Foundry deployment provides to every organization.</p>}
      {entries !== null && entries.length > 0 && (
        <ul class="cred-list" aria-label="Credentials set" data-testid="credential-list">
          {entries.map((c) => (
            <li key={c.name} class="cred-row" data-name={c.name}>
              <div class="cred-main">
                <code class="cred-name">{c.name}</code>
                <span class="muted small">
                  {c.last4 ? <>ends in <code>…{c.last4}</code> · </> : null}
                  changed <time dateTime={new Date(c.setAt).toISOString()} title={dateTime(c.setAt)}>{timeAgo(c.setAt)}</time>
                  {c.setBy ? ` by ${c.setBy}` : ""}
                </span>
              </div>
              <div class="cred-actions">
                <button
                  type="button"
                  class="btn btn-small"
                  aria-label={`Replace ${c.name}`}
                  disabled={busy}
                  onClick={() => {
                    setName(c.name);
                    setServerError(null);
                    setStatus(null);
                    valueRef.current?.focus();
                  }}
                >
                  Replace
                </button>
                <button type="button" class="btn btn-small btn-danger" aria-label={`Remove ${c.name}`} disabled={busy} onClick={() => setConfirm({ kind: "remove", entry: c })}>
                  Remove
                </button>
              </div>
            </li>
          ))}
        </ul>
      )}

      <form class="form cred-form" onSubmit={submit} noValidate aria-labelledby="cred-form-heading">
        <h3 id="cred-form-heading" class="small-heading">Add or replace a credential</h3>
        <div class="field-row">
          <div class="field">
            <label for="cred-name">Name</label>
            <input
              id="cred-name"
              ref={nameRef}
              class="input mono-input"
              list="cred-name-options"
              autocomplete="off"
              autocapitalize="characters"
              spellcheck={false}
              placeholder="ANTHROPIC_API_KEY"
              value={name}
              aria-invalid={nameInvalid ? "true" : undefined}
              aria-describedby={nameIssue ? "cred-name-problem" : undefined}
              onInput={(e) => {
                setName((e.currentTarget as HTMLInputElement).value);
                setServerError(null);
              }}
            />
            <datalist id="cred-name-options">
              {SUGGESTED_NAMES.map((n) => <option key={n} value={n} />)}
            </datalist>
            {nameIssue && <p id="cred-name-problem" class="error-note small">{nameIssue}</p>}
          </div>
          <div class="field">
            <label for="cred-value">Value</label>
            <div class="secret-input">
              <input
                id="cred-value"
                ref={valueRef}
                class="input mono-input"
                type={reveal ? "text" : "password"}
                // Not a sign-in password: browsers must neither fill nor offer to remember it.
                autocomplete="new-password"
                spellcheck={false}
                value={value}
                aria-invalid={valueInvalid ? "true" : undefined}
                aria-describedby={valueIssue ? "cred-value-problem" : undefined}
                onInput={(e) => {
                  setValue((e.currentTarget as HTMLInputElement).value);
                  setServerError(null);
                }}
              />
              <button type="button" class="btn" aria-label={reveal ? "Hide value" : "Show value"} aria-controls="cred-value" onClick={() => setReveal(!reveal)}>
                {reveal ? "Hide" : "Show"}
              </button>
            </div>
            {valueIssue && <p id="cred-value-problem" class="error-note small">{valueIssue}</p>}
          </div>
        </div>
        <div class="actions left">
          <button type="submit" class="btn btn-primary" disabled={busy}>{busy ? "Saving…" : "Save credential"}</button>
        </div>
        {status && <p class="ok-note" role="status">{status}</p>}
        <ErrorNote error={serverError?.text ?? null} />
      </form>

      {confirm && (
        <Modal title={confirm.kind === "replace" ? `Replace ${confirm.entry.name}?` : `Remove ${confirm.entry.name}?`} onClose={() => setConfirm(null)}>
          <p>
            {confirm.kind === "replace"
              ? `The value set${confirm.entry.setBy ? ` by ${confirm.entry.setBy}` : ""} ${timeAgo(confirm.entry.setAt)} is overwritten and cannot be recovered. Sandboxes started from now on get the new value.`
              : "Sandboxes started from now on no longer get this organization's value; running sandboxes keep theirs. The value cannot be recovered."}
          </p>
          <div class="actions">
            <button type="button" class="btn" onClick={() => setConfirm(null)}>Cancel</button>
            <button
              type="button"
              class={confirm.kind === "replace" ? "btn btn-primary" : "btn btn-danger"}
              disabled={busy}
              onClick={() => {
                const c = confirm;
                setConfirm(null);
                void (c.kind === "replace" ? save(c.entry.name) : remove(c.entry.name));
              }}
            >
              {confirm.kind === "replace" ? "Replace" : "Remove"}
            </button>
          </div>
        </Modal>
      )}
    </div>
  );
}
