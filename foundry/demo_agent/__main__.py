"""``python -m foundry.demo_agent``: serve the demo ACP agent on stdio."""

from __future__ import annotations

from foundry.demo_agent.agent import main

if __name__ == "__main__":
    main()
