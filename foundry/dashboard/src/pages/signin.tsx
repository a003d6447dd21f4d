import { useState } from "preact/hooks";
import { api, errorText } from "../lib/api";
import { boot, config } from "../session";

const SEEDED = [
  { login: "alice", note: "member of acme" },
  { login: "bob", note: "member of globex" },
  { login: "carol", note: "admin of acme, member of globex" },
];

export function SignInPage({ message }: { message: string | null }) {
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);

  async function mockSignIn(login: string) {
    setBusy(login);
    setError(null);
    try {
      await api("POST", "/v1/auth/mock/sign-in", { login });
      await boot();
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(null);
    }
  }

  return (
    <main class="center-page signin">
      <div class="card signin-card">
        <h1>Sign in to Foundry</h1>
        <p class="muted">Coding agents for your team, on your own infrastructure.</p>
        {message && <p class="notice" role="status" data-testid="signin-message">{message}</p>}
        {config.githubSignIn && (
          <a class="btn btn-primary btn-block" href="/v1/auth/sign-in/github">Sign in with GitHub</a>
        )}
        {config.mockSignIn && (
          <section aria-labelledby="mock-users">
            <h2 id="mock-users" class="small-heading">Mock mode: sign in as a seeded user</h2>
            <ul class="plain-list">
              {SEEDED.map((u) => (
                <li key={u.login}>
                  <button class="btn btn-block" disabled={busy !== null} onClick={() => void mockSignIn(u.login)}>
                    {busy === u.login ? "Signing in…" : `Continue as ${u.login}`}
                    <span class="muted"> · {u.note}</span>
                  </button>
                </li>
              ))}
            </ul>
          </section>
        )}
        {!config.githubSignIn && !config.mockSignIn && (
          <p role="alert">No sign-in method is configured on this server. Ask the operator to set up the GitHub App.</p>
        )}
        {error && <p class="error-note" role="alert">{error}</p>}
      </div>
    </main>
  );
}
