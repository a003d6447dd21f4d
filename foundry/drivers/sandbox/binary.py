"""Locate the ``sandbox-agent`` binary that local sandboxes run.

Search order: an explicit path (from settings) → ``<repo>/.tools/node_modules/.bin/sandbox-agent``
(installed by ``scripts/bootstrap.sh``) → ``sandbox-agent`` on ``PATH``.

The npm ``.bin/sandbox-agent`` entry is a Node.js wrapper that runs the platform binary with
``execFileSync``. Running the wrapper would cost a Node process per sandbox and, worse, signals sent to
it do not reach the real server (killing the wrapper orphans the server and its port). So when the
located file is that wrapper, the native binary of the matching ``@sandbox-agent/cli-<os>-<arch>``
package next to it is used instead.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
from pathlib import Path

from foundry.drivers.sandbox import SandboxBinaryNotFound

__all__ = [
    "BINARY_NAME",
    "INSTALL_HINT",
    "PINNED_VERSION",
    "check_binary",
    "find_binary",
    "repo_root",
]

log = logging.getLogger(__name__)

BINARY_NAME = "sandbox-agent"
PINNED_VERSION = "0.4.2"
INSTALL_HINT = (
    f"run scripts/bootstrap.sh (or `npm install @sandbox-agent/cli@{PINNED_VERSION}`), "
    "or set the sandbox-agent binary path in the settings"
)

_NPM_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def repo_root() -> Path:
    """The Foundry checkout this package runs from (where ``.tools/`` lives)."""
    return Path(__file__).resolve().parents[3]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _native_from_npm_wrapper(path: Path) -> Path | None:
    """If ``path`` is the npm Node.js wrapper, return the platform's native binary beside it."""
    real = path.resolve()
    # .../node_modules/@sandbox-agent/cli/bin/sandbox-agent → .../node_modules/@sandbox-agent/
    if real.parent.name != "bin" or real.parent.parent.name != "cli":
        return None
    scope = real.parent.parent.parent
    arch = _NPM_ARCH.get(platform.machine().lower(), platform.machine().lower())
    native = scope / f"cli-{sys.platform}-{arch}" / "bin" / BINARY_NAME
    return native if _is_executable(native) else None


def _usable(path: Path) -> Path | None:
    if not _is_executable(path):
        return None
    return _native_from_npm_wrapper(path) or path


def find_binary(explicit: str | os.PathLike[str] | None = None, *, root: Path | None = None) -> Path:
    """Return the path of the ``sandbox-agent`` executable to run.

    Pure filesystem lookups, cheap enough to call at startup; it does not run the binary.

    Args:
        explicit: a path configured in settings. When given it must work: there is no fallback, so a
            typo in the settings is reported instead of silently running another binary.
        root: the repository root holding ``.tools/`` (defaults to this checkout).

    Raises:
        SandboxBinaryNotFound: nothing usable was found; the message says how to install it.
    """
    if explicit is not None and str(explicit):
        candidate = Path(explicit).expanduser()
        found = _usable(candidate)
        if found is None:
            raise SandboxBinaryNotFound(
                f"the configured sandbox-agent binary {str(candidate)!r} does not exist or is not "
                f"executable; fix the setting or {INSTALL_HINT}"
            )
        return found
    bootstrap = (root or repo_root()) / ".tools" / "node_modules" / ".bin" / BINARY_NAME
    found = _usable(bootstrap)
    if found is not None:
        return found
    on_path = shutil.which(BINARY_NAME)
    if on_path is not None:
        found = _usable(Path(on_path))
        if found is not None:
            return found
    raise SandboxBinaryNotFound(
        f"the sandbox-agent binary was not found (looked in {bootstrap} and on PATH); {INSTALL_HINT}"
    )


def check_binary(
    explicit: str | os.PathLike[str] | None = None, *, root: Path | None = None
) -> tuple[bool, str]:
    """Readiness probe: ``(True, "sandbox-agent at <path>")`` or ``(False, <how to fix>)``. Never raises."""
    try:
        path = find_binary(explicit, root=root)
    except SandboxBinaryNotFound as exc:
        log.warning("sandbox-agent binary missing detail=%s", exc.detail)
        return False, exc.detail
    return True, f"sandbox-agent at {path}"
