"""Server options; passed to worker processes through the environment (`LEDGER_API_*`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerOptions:
    group_commit: bool = True
    group_max: int = 256
    group_wait_ms: float = 2.0
    sweep_every: float | None = 3600.0  # seconds; None: no sweeper in this process
    tick: float = 1.0  # seconds between rounds of after-write work (projections, sealing)
    body_limit: int = MiB
    token_cache_seconds: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerOptions:
        env = os.environ if environ is None else environ
        default = cls()
        sweep = env.get("LEDGER_API_SWEEP_EVERY")
        return cls(
            group_commit=env.get("LEDGER_API_GROUP_COMMIT", "1") not in ("0", "false", "no"),
            group_max=int(env.get("LEDGER_API_GROUP_MAX", default.group_max)),
            group_wait_ms=float(env.get("LEDGER_API_GROUP_WAIT_MS", default.group_wait_ms)),
            sweep_every=default.sweep_every
            if sweep is None
            else (None if sweep in ("", "off", "0") else float(sweep)),
            tick=float(env.get("LEDGER_API_TICK", default.tick)),
            body_limit=int(env.get("LEDGER_API_BODY_LIMIT", default.body_limit)),
            token_cache_seconds=float(
                env.get("LEDGER_API_TOKEN_CACHE_SECONDS", default.token_cache_seconds)
            ),
        )

    def to_env(self) -> dict[str, str]:
        return {
            "LEDGER_API_GROUP_COMMIT": "1" if self.group_commit else "0",
            "LEDGER_API_GROUP_MAX": str(self.group_max),
            "LEDGER_API_GROUP_WAIT_MS": str(self.group_wait_ms),
            "LEDGER_API_SWEEP_EVERY": "off" if self.sweep_every is None else str(self.sweep_every),
            "LEDGER_API_TICK": str(self.tick),
            "LEDGER_API_BODY_LIMIT": str(self.body_limit),
            "LEDGER_API_TOKEN_CACHE_SECONDS": str(self.token_cache_seconds),
        }
