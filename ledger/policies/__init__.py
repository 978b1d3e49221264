"""Policy catalogues as data files; `load_policy` reads and validates one."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ledger.domain.policy import PolicyCatalogue, PolicyError

DEFAULT_POLICY = Path(__file__).with_name("cekura.toml")


def load_policy(path: Path | None = None) -> PolicyCatalogue:
    """Read a catalogue (default: CEKURA's) and validate it; errors name the file and place."""
    source = path or DEFAULT_POLICY
    try:
        with source.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise PolicyError(f"{source}: no such policy catalogue") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    try:
        return PolicyCatalogue.from_mapping(data)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None


__all__ = ["DEFAULT_POLICY", "PolicyError", "load_policy"]
