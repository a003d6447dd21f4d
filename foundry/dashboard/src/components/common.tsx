// Small shared pieces: avatars, status badges, the connection banner and a modal dialog.
import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { safeUrl } from "../lib/format";
import { realtime } from "../lib/realtime";
import { useStore } from "../lib/store";

export function Avatar({ url, login, size = 20 }: { url: string | null | undefined; login: string | null | undefined; size?: number }) {
  const [failed, setFailed] = useState(false);
  const src = failed ? null : safeUrl(url);
  const initial = (login ?? "?").slice(0, 1).toUpperCase();
  // Decorative: the login is always written next to it.
  return src ? (
    <img class="avatar" src={src} alt="" width={size} height={size} loading="lazy" referrerpolicy="no-referrer" onError={() => setFailed(true)} />
  ) : (
    <span class="avatar avatar-fallback" aria-hidden="true" style={{ width: `${size}px`, height: `${size}px` }}>{initial}</span>
  );
}

const STATUS_LABEL: Record<string, string> = {
  provisioning: "Provisioning",
  running: "Running",
  idle: "Idle",
  error: "Error",
  archived: "Archived",
  pending: "Starting",
  closed: "Closed",
  pr: "Pull request",
  virtual: "Pull request, not started",
  queued: "Waiting for a sandbox",
};

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge status-${status}`} data-status={status}>{STATUS_LABEL[status] ?? status}</span>;
}

export function PrBadge({ pr }: { pr: { number: number; state: string | null; url: string | null } }) {
  const href = safeUrl(pr.url);
  const label = `#${pr.number} ${pr.state ?? ""}`.trim();
  const cls = `badge pr-${pr.state ?? "unknown"}`;
  return href ? (
    <a class={cls} href={href} target="_blank" rel="noopener noreferrer" aria-label={`Pull request ${label}`}>{label}</a>
  ) : (
    <span class={cls}>{label}</span>
  );
}

export function ConnectionBanner() {
  const c = useStore(realtime.connection);
  const waiting = useStore(realtime.waiting);
  if (c === "reconnecting") {
    return (
      <div class="banner banner-warn" role="status" data-testid="reconnecting">
        Connection lost — reconnecting… Live updates resume automatically.
      </div>
    );
  }
  if (c !== "open" || waiting.length === 0) return null;
  return (
    <div class="banner banner-warn" role="status" data-testid="waiting">
      Part of Foundry is not answering right now: this page shows what it last heard and updates by
      itself once it answers.
    </div>
  );
}

export function ErrorNote({ error }: { error: string | null }) {
  if (!error) return null;
  return <p class="error-note" role="alert">{error}</p>;
}

export function Modal({ title, onClose, children }: { title: string; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current!;
    const previous = document.activeElement as HTMLElement | null;
    if (!d.open) d.showModal();
    // Start where the typing is (the first field), or on the first choice of a confirmation (the
    // safe one comes first), not on the dialog's close button.
    const first =
      d.querySelector<HTMLElement>(".modal-head ~ * input, .modal-head ~ * textarea, .modal-head ~ * select") ??
      d.querySelector<HTMLElement>(".actions button");
    first?.focus();
    return () => {
      // After the dialog has left the page (closing it moves focus to the body first).
      window.setTimeout(() => {
        if (previous?.isConnected) previous.focus();
      }, 0);
    };
  }, []);
  return (
    <dialog
      ref={ref}
      class="modal"
      aria-labelledby="modal-title"
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
    >
      <div class="modal-head">
        <h2 id="modal-title">{title}</h2>
        <button class="btn btn-ghost" aria-label="Close dialog" onClick={onClose}>✕</button>
      </div>
      {children}
    </dialog>
  );
}
