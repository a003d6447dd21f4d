import type { OrgSnapshot } from "../org";

/** Billing is designed (per-seat Stripe) but not wired to a server route yet: no invented data here. */
export function BillingPage({ org }: { org: OrgSnapshot }) {
  return (
    <main class="page narrow">
      <h1>Billing</h1>
      <section class="card" aria-labelledby="billing-soon">
        <h2 id="billing-soon">Not available yet</h2>
        <p>
          Per-seat billing for <strong>{org.profile.displayName}</strong> will appear here once this Foundry
          server connects to Stripe. Nothing is charged today.
        </p>
      </section>
    </main>
  );
}
