"""The admin's config dir: identity files plus ``config.json`` naming the managers.

The manager writes both on ``warren cluster init``; the CLI only reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from warren.core.errors import FailedPrecondition, InvalidArgument
from warren.security.tls import IdentityFiles

DEFAULT_CONFIG_DIR = "~/.warren"
CONFIG_FILE = "config.json"


def split_managers(values: str | tuple[str, ...] | list[str]) -> list[str]:
    """``a:1,b:2`` (or several such values) as a list, blanks dropped."""
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def load_managers(config_dir: Path) -> list[str]:
    path = config_dir / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FailedPrecondition(
            f"no manager address: pass --manager HOST:PORT or set WARREN_MANAGER "
            f"({path} does not exist; 'warren cluster init' writes it)"
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from None
    managers = data.get("managers") if isinstance(data, dict) else None
    if not isinstance(managers, list) or not all(isinstance(m, str) for m in managers):
        raise InvalidArgument(f"{path}: 'managers' must be a list of HOST:PORT strings")
    return split_managers(managers)


def admin_identity(config_dir: Path) -> IdentityFiles:
    identity = IdentityFiles(config_dir)
    if not identity.exists():
        raise FailedPrecondition(
            f"no admin credentials in {config_dir}: run 'warren cluster init' on this host, "
            "or point --config-dir (WARREN_CONFIG_DIR) at a copy of them"
        )
    return identity


def expand(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser()
