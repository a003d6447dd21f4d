"""Inbound webhooks: verified at the edge, deduped by delivery id, handed to actors' mailboxes."""
