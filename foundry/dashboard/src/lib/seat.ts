// A member's standing before they write a prompt: whether the server would refuse it (a full free
// plan, a canceled or long past-due subscription). Asked only when the organization's billing
// summary says prompts may be limited, and again at each billing change.
import { useEffect, useState } from "preact/hooks";
import type { BillingSummary } from "../org";
import { api, enc } from "./api";

interface SeatStanding {
  held: boolean;
  refusal: { error: string; detail: string } | null;
}

const OPEN_STATUSES = ["active", "trialing", "scheduled_cancel"];

/** The reason the caller's next prompt would be refused, or null when it would be accepted. */
export function useSeatNotice(orgId: string, billing: BillingSummary | undefined): string | null {
  const [notice, setNotice] = useState<string | null>(null);
  const limited = !!billing?.enabled && (billing.seatLimitReached || !OPEN_STATUSES.includes(billing.status));
  useEffect(() => {
    if (!limited) {
      setNotice(null);
      return;
    }
    let alive = true;
    api<SeatStanding>("GET", `/v1/organizations/${enc(orgId)}/billing/seat`).then(
      (s) => alive && setNotice(s.refusal ? s.refusal.detail : null),
      (e) => console.warn("could not read the seat standing", e),
    );
    return () => {
      alive = false;
    };
  }, [orgId, limited, billing?.updatedAt, billing?.status]);
  return notice;
}
