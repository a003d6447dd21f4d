// Billing. Admins: plan, status, seats, dates, payment method and invoices, live from the
// admins-only `billing:<org>` topic; they upgrade, open Stripe's portal, cancel, resume, switch to
// free and release seats. Members: the summary every member gets on `organization:<org>` (plan,
// status, whether the seats are all taken), read-only.
import { useEffect, useState } from "preact/hooks";
import { ErrorNote, Modal } from "../components/common";
import { api, enc, errorText } from "../lib/api";
import { dateTime, plural, safeUrl } from "../lib/format";
import { realtime } from "../lib/realtime";
import { navigate } from "../lib/router";
import type { Billing, BillingSummary, OrgSnapshot } from "../org";

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

type Details = { state: "loading" } | { state: "ready"; billing: Billing } | { state: "error"; detail: string };

/** The whole billing state, live on `billing:<org>` (subscribed only for admins; null otherwise). */
function useBillingDetails(orgId: string, admin: boolean): Details | null {
  const [details, setDetails] = useState<Details>({ state: "loading" });
  useEffect(() => {
    if (!admin) return undefined;
    setDetails({ state: "loading" });
    return realtime.subscribe(
      `billing:${orgId}`,
      (e) => {
        if (e.event === "snapshot" || e.event === "billingUpdated") setDetails({ state: "ready", billing: e.data as Billing });
      },
      (code, detail) =>
        setDetails({ state: "error", detail: code === "forbidden" ? "only admins see billing details; reload the page" : detail }),
    );
  }, [orgId, admin]);
  return admin ? details : null;
}

function seatsText(n: number): string {
  return `${n} seat${n === 1 ? "" : "s"}`;
}

function planName(plan: string, freeSeats: number): string {
  return plan === "team" ? "Team (per seat)" : `Free (${seatsText(freeSeats)})`;
}

export function BillingPage({ org, viewerRole, query }: { org: OrgSnapshot; viewerRole: string; query: URLSearchParams }) {
  const admin = viewerRole === "admin";
  const summary = org.billing;
  const details = useBillingDetails(org.organizationId, admin);

  if (!summary || !summary.enabled) {
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
  if (!details) return <MemberBilling org={org} summary={summary} />;
  if (details.state !== "ready") {
    return (
      <main class="page narrow">
        <h1>Billing</h1>
        {details.state === "loading" ? <p class="muted" role="status">Loading billing…</p> : <ErrorNote error={`Billing could not be read: ${details.detail}`} />}
      </main>
    );
  }
  return <AdminBilling org={org} billing={details.billing} query={query} />;
}

/** A member's read-only view: no seats, invoices, payment method or dates (those are for admins). */
function MemberBilling({ org, summary }: { org: OrgSnapshot; summary: BillingSummary }) {
  return (
    <main class="page narrow">
      <h1>Billing</h1>
      <section class="card" aria-labelledby="plan-heading" data-testid="billing-plan">
        <h2 id="plan-heading">Plan</h2>
        <dl class="facts">
          <dt>Plan</dt>
          <dd data-testid="billing-plan-name">{planName(summary.plan, summary.freeSeats)}</dd>
          <dt>Status</dt>
          <dd>
            <span class={`badge billing-${summary.status}`} data-testid="billing-status">{STATUS_TEXT[summary.status] ?? summary.status}</span>
          </dd>
        </dl>
        {summary.seatLimitReached && (
          <p class="muted" role="status" data-testid="seat-limit-note">
            Every seat of the {summary.plan} plan is taken: a member without a seat cannot send prompts until an admin upgrades or releases a seat.
          </p>
        )}
        {summary.status === "past_due" && <p class="error-note" role="alert">The last payment failed: new prompts stop after a grace period unless an admin updates the payment method.</p>}
        {summary.status === "canceled" && summary.plan === "team" && <p class="error-note" role="alert">The subscription is canceled: new prompts are paused until an admin subscribes again or switches to the free plan.</p>}
        <p class="muted small" data-testid="read-only-note">
          You are a member: only admins of {org.profile.displayName} see seats, invoices and the payment method, and change the plan. Ask an admin.
        </p>
      </section>
    </main>
  );
}

function AdminBilling({ org, billing, query }: { org: OrgSnapshot; billing: Billing; query: URLSearchParams }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [confirm, setConfirm] = useState<Confirm>(null);
  const base = `/v1/organizations/${enc(org.organizationId)}/billing`;
  const checkout = query.get("checkout");

  async function act(name: string, run: () => Promise<unknown>) {
    // The note about the checkout that brought the admin here is done with once they act again.
    if (checkout) navigate(location.pathname, true);
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

  const team = billing.plan === "team";
  const seats = billing.seats;
  const scheduled = billing.cancelAt !== null || billing.status === "scheduled_cancel";
  return (
    <main class="page narrow">
      <h1>Billing</h1>
      {checkout === "success" && (
        <p class="ok-note" role="status">
          {team && billing.status === "active" ? "Thank you: the team plan is active." : "Thank you: the team plan is active once Stripe confirms the payment."}
        </p>
      )}
      {checkout === "canceled" && <p class="muted" role="status">Checkout was canceled; nothing was charged.</p>}
      <ErrorNote error={error} />
      <section class="card" aria-labelledby="plan-heading" data-testid="billing-plan">
        <h2 id="plan-heading">Plan</h2>
        <dl class="facts">
          <dt>Plan</dt>
          <dd data-testid="billing-plan-name">{planName(billing.plan, billing.freeSeats)}</dd>
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
        {seats.limit !== null && seats.used > seats.limit && (
          <p class="notice" role="status" data-testid="over-limit">
            {seats.used} members hold seats, more than the {seatsText(seats.limit)} of this plan. They keep working; nobody else can
            take a seat until enough are released (under Seats) or the plan has more.
          </p>
        )}
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
                  text: `The plan stays active until the end of the current period, then the organization returns to the free plan (${seatsText(billing.freeSeats)}).`,
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
                  text:
                    `The team subscription ends now. The free plan has ${seatsText(billing.freeSeats)}; ${seats.used} ${seats.used === 1 ? "is" : "are"} held now. ` +
                    (seats.used >= billing.freeSeats
                      ? "Members who hold a seat keep it; nobody else can send prompts until seats are released."
                      : "Members who hold a seat keep it."),
                  action: "Switch to free",
                  run: () => api("POST", `${base}/plan`, { plan: "free" }),
                })
              }
            >
              Switch to free
            </button>
          )}
        </div>
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
                <th scope="col"><span class="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {seats.members.map((m) => (
                <tr key={m.userId} data-testid="seat-row">
                  <td>{m.login}</td>
                  <td>{dateTime(m.takenAt)}</td>
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
