#!/usr/bin/env python3
"""Extract the GitHub REST example responses the fake GitHub server templates from.

GitHub publishes its REST API description, with an example response for most operations, as the npm
package ``@octokit/openapi``. The package is 385 MB, so it is never vendored: install it into a scratch
directory, run this script, and commit the small ``foundry/drivers/github/examples.json`` it writes::

    mkdir -p /tmp/ghopenapi && cd /tmp/ghopenapi && npm install --no-audit --no-fund @octokit/openapi@23.0.2
    .venv/bin/python scripts/extract_github_examples.py \\
        --openapi /tmp/ghopenapi/node_modules/@octokit/openapi/generated/api.github.com.json

The output maps each operation id the fake serves to its method, path, success status and example body
(``$ref``s resolved), so every templated response can be traced back to GitHub's own example.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PACKAGE = "@octokit/openapi@23.0.2"
DEFAULT_OPENAPI = Path("/tmp/ghopenapi/node_modules/@octokit/openapi/generated/api.github.com.json")
OUTPUT = Path(__file__).resolve().parent.parent / "foundry" / "drivers" / "github" / "examples.json"

# The operations the fake implements (foundry/drivers/github/fake.py). Keep in sync with its routes.
OPERATIONS = (
    "apps/get-authenticated",
    "apps/list-installations",
    "apps/get-installation",
    "apps/create-installation-access-token",
    "apps/list-repos-accessible-to-installation",
    "apps/list-installations-for-authenticated-user",
    "orgs/get",
    "orgs/list-members",
    "orgs/list-for-authenticated-user",
    "repos/get",
    "pulls/list",
    "pulls/get",
    "pulls/create",
    "users/get-authenticated",
    "users/get-by-username",
    "users/list-emails-for-authenticated-user",
)


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow a local JSON ``$ref`` (``#/components/...``) until a concrete node is reached."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"source": ..., "operations": {operation_id: {method, path, status, example}}}``.

    Raises:
        KeyError: an operation is missing from the spec or has no example for its success response.
    """
    by_id: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                by_id[operation["operationId"]] = (method.upper(), path, operation)

    operations: dict[str, Any] = {}
    for operation_id in OPERATIONS:
        method, path, operation = by_id[operation_id]
        status = min(code for code in operation["responses"] if code.startswith("2"))
        response = _resolve(spec, operation["responses"][status])
        examples = response["content"]["application/json"]["examples"]
        # The first named example is GitHub's "default" one for every operation above.
        example = _resolve(spec, next(iter(examples.values())))["value"]
        operations[operation_id] = {"method": method, "path": path, "status": int(status), "example": example}
    return {"source": f"{PACKAGE} generated/api.github.com.json", "operations": operations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openapi", type=Path, default=DEFAULT_OPENAPI, help="path to api.github.com.json")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if not args.openapi.is_file():
        print(
            f"{args.openapi} not found; install {PACKAGE} with npm first (see this script's docstring)",
            file=sys.stderr,
        )
        return 1
    spec = json.loads(args.openapi.read_text(encoding="utf-8"))
    result = extract(spec)
    args.output.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(result['operations'])} examples to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
