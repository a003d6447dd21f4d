// Billing: plan, status, seats and invoices (live from the organization snapshot); admins upgrade,
// open Stripe's portal, cancel, resume, switch to free and release seats.
import { useState } from "preact/hooks";
import { ErrorNote, Modal } from "../components/common";
import { api, enc, errorText } from "../lib/api";
import { dateTime, plural, safeUrl } from "../lib/format";
import type { OrgSnapshot } from "../org";

const STATUS_TEXT: Record<string, string> = {
  active: "Active",
  trialing: "Trial",
  past_due: "Payment past due",
  scheduled_cancel: "Cancels at period end",
  canceled: "Canceled",
};

function money(cents: number | null | undefined, currency: string | null | undefined): string {
  if (cents === null || cents === undefined) return "—";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: (currency || "usd").toUpperCase() }).format(cents / 100);
  } catch {
    return `${(cents / 100).toFixed(2)} ${(currency || "").toUpperCase()}`;
  }
}

type Confirm = { title: string; text: string; action: string; run: () => Promise<unknown> } | null;

export function BillingPage({ org, viewerRole, query }: { org: OrgSnapshot; viewerRole: string; query: URLSearchParams }) {
  const admin = viewerRole === "admin";
  const billing = org.billing;
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [confirm, setConfirm] = useState<Confirm>(null);
  const base = `/v1/organizations/${enc(org.organizationId)}/billing`;
  const checkout = query.get("checkout");

  async function act(name: string, run: () => Promise<unknown>) {
    setBusy(name);
    setError(null);
    try {
      await run();
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(null);
    }
  }

  async function goTo(path: string, body?: unknown) {
    const { url } = await api<{ url: string }>("POST", path, body);
    const target = safeUrl(url);
    if (!target) throw new Error("the server answered an address this page will not open");
    location.assign(target);
  }

  if (!billing || !billing.enabled) {
    return (
      <main class="page narrow">
        <h1>Billing</h1>
        <section class="card" aria-labelledby="billing-off">
          <h2 id="billing-off">Billing is not set up on this server</h2>
          <p>
            <strong>{org.profile.displayName}</strong> is not charged: this Foundry server has no Stripe account configured, so every
            member can use it. {admin ? "To charge per seat, set the Stripe settings described in the README and restart the server." : ""}
          </p>
        </section>
      </main>
    );
  }

  const team = billing.plan === "team";
  const seats = billing.seats;
  const scheduled = billing.cancelAt !== null || billing.status === "scheduled_cancel";
  return (
    <main class="page narrow">
      <h1>Billing</h1>
      {checkout === "success" && <p class="note-ok" role="status">Thank you: the team plan is active once Stripe confirms the payment.</p>}
      {checkout === "canceled" && <p class="muted" role="status">Checkout was canceled; nothing was charged.</p>}
      <ErrorNote error={error} />
      <section class="card" aria-labelledby="plan-heading" data-testid="billing-plan">
        <h2 id="plan-heading">Plan</h2>
        <dl class="facts">
          <dt>Plan</dt>
          <dd data-testid="billing-plan-name">{team ? "Team (per seat)" : "Free (1 seat)"}</dd>
          <dt>Status</dt>
          <dd>
            <span class={`badge billing-${billing.status}`} data-testid="billing-status">{STATUS_TEXT[billing.status] ?? billing.status}</span>
          </dd>
          <dt>Seats</dt>
          <dd data-testid="billing-seats">
            {seats.used} in use
            {seats.paid !== null && ` · ${seats.paid} paid`}
            {seats.limit !== null && ` · limit ${seats.limit}`}
          </dd>
          {billing.trialEnd && (
            <>
              <dt>Trial ends</dt>
              <dd>{dateTime(billing.trialEnd)}</dd>
            </>
          )}
          {team && billing.currentPeriodEnd && (
            <>
              <dt>{scheduled ? "Ends" : "Renews"}</dt>
              <dd>{dateTime(billing.cancelAt ?? billing.currentPeriodEnd)}</dd>
            </>
          )}
          {billing.paymentMethod && (
            <>
              <dt>Payment method</dt>
              <dd>{billing.paymentMethod}</dd>
            </>
          )}
        </dl>
        {billing.status === "past_due" && (
          <p class="error-note" role="alert">
            The last payment failed.{" "}
            {billing.graceEndsAt ? `New prompts stop on ${dateTime(billing.graceEndsAt)} unless the payment method is updated.` : ""}
          </p>
        )}
        {billing.status === "canceled" && team && <p class="error-note" role="alert">The subscription is canceled: new prompts are paused until an admin subscribes again or switches to the free plan.</p>}
        {billing.sync.pending > 0 && (
          <p class="muted small" role="status">
            {plural(billing.sync.pending, "seat change")} waiting to reach Stripe{billing.sync.lastError ? ` (last error: ${billing.sync.lastError})` : ""}.
          </p>
        )}
        {!admin && <p class="muted small" data-testid="read-only-note">Only admins can change the plan. You are a member.</p>}
        {admin && (
          <div class="actions left">
            {(!team || billing.status === "canceled") && (
              <button class="btn btn-primary" disabled={busy !== null} onClick={() => void act("checkout", () => goTo(`${base}/checkout`, { plan: "team" }))}>
                {busy === "checkout" ? "Opening checkout…" : "Upgrade to Team"}
              </button>
            )}
            {billing.hasCustomer && (
              <button class="btn" disabled={busy !== null} onClick={() => void act("portal", () => goTo(`${base}/portal`))}>
                {busy === "portal" ? "Opening…" : "Payment method and invoices"}
              </button>
            )}
            {team && billing.status !== "canceled" && !scheduled && (
              <button
                class="btn"
                disabled={busy !== null}
                onClick={() =>
                  setConfirm({
                    title: "Cancel the team plan",
                    text: "The plan stays active until the end of the current period, then the organization returns to one seat.",
                    action: "Cancel at period end",
                    run: () => api("POST", `${base}/cancel`),
                  })
                }
              >
                Cancel plan
              </button>
            )}
            {team && scheduled && billing.status !== "canceled" && (
              <button class="btn" disabled={busy !== null} onClick={() => void act("resume", () => api("POST", `${base}/resume`))}>
                {busy === "resume" ? "Resuming…" : "Keep the team plan"}
              </button>
            )}
            {team && (
              <button
                class="btn btn-danger"
                disabled={busy !== null}
                onClick={() =>
                  setConfirm({
                    title: "Switch to the free plan",
                    text: "The team subscription ends now. The free plan has one seat: members beyond it cannot send new prompts.",
                    action: "Switch to free",
                    run: () => api("POST", `${base}/plan`, { plan: "free" }),
                  })
                }
              >
                Switch to free
              </button>
            )}
          </div>
        )}
      </section>

      <section class="card" aria-labelledby="seats-heading">
        <h2 id="seats-heading">Seats</h2>
        <p class="muted small">A member takes a seat when they first send a prompt in this organization.</p>
        {seats.members.length === 0 ? (
          <p class="muted">No seat taken yet.</p>
        ) : (
          <table class="table" aria-labelledby="seats-heading">
            <thead>
              <tr>
                <th scope="col">Member</th>
                <th scope="col">Since</th>
                {admin && <th scope="col"><span class="sr-only">Actions</span></th>}
              </tr>
            </thead>
            <tbody>
              {seats.members.map((m) => (
                <tr key={m.userId} data-testid="seat-row">
                  <td>{m.login}</td>
                  <td>{dateTime(m.takenAt)}</td>
                  {admin && (
                    <td>
                      <button
                        class="btn btn-small"
                        disabled={busy !== null}
                        aria-label={`Release the seat of ${m.login}`}
                        onClick={() =>
                          setConfirm({
                            title: `Release the seat of ${m.login}`,
                            text: `${m.login} gives up the seat; it is taken again at their next prompt.`,
                            action: "Release seat",
                            run: () => api("DELETE", `${base}/seats/${enc(m.login)}`),
                          })
                        }
                      >
                        Release
                      </button>
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section class="card" aria-labelledby="invoices-heading">
        <h2 id="invoices-heading">Invoices</h2>
        {billing.invoices.length === 0 ? (
          <p class="muted">No invoice yet.</p>
        ) : (
          <table class="table" aria-labelledby="invoices-heading">
            <thead>
              <tr>
                <th scope="col">Invoice</th>
                <th scope="col">Date</th>
                <th scope="col">Amount</th>
                <th scope="col">Status</th>
              </tr>
            </thead>
            <tbody>
              {billing.invoices.map((inv) => {
                const link = safeUrl(inv.hostedInvoiceUrl);
                return (
                  <tr key={inv.id} data-testid="invoice-row">
                    <td>{link ? <a href={link} target="_blank" rel="noopener noreferrer">{inv.number ?? inv.id}</a> : inv.number ?? inv.id}</td>
                    <td>{dateTime(inv.createdAt)}</td>
                    <td>{money(inv.status === "paid" ? inv.amountPaid : inv.amountDue, inv.currency)}</td>
                    <td>{inv.status}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </section>

      {confirm && (
        <Modal title={confirm.title} onClose={() => setConfirm(null)}>
          <p>{confirm.text}</p>
          <div class="actions">
            <button class="btn" onClick={() => setConfirm(null)}>Keep as is</button>
            <button
              class="btn btn-danger"
              disabled={busy !== null}
              onClick={() => {
                const c = confirm;
                setConfirm(null);
                void act(c.action, c.run);
              }}
            >
              {confirm.action}
            </button>
          </div>
        </Modal>
      )}
    </main>
  );
}
