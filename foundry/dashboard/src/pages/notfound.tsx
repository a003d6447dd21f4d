import { linkClick } from "../lib/router";

/** One page for "does not exist" and "not yours": the two must be indistinguishable. */
export function NotFoundPage() {
  return (
    <main class="center-page" data-testid="not-found">
      <h1>Page not found</h1>
      <p class="muted">This page does not exist, or you do not have access to it.</p>
      <a class="btn" href="/" onClick={linkClick}>Go to your workspace</a>
    </main>
  );
}
