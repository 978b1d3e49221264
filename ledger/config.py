"""Settings from the environment (DESIGN 5.3): where the data lives and which keys guard it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed `LEDGER_DATABASE_URL`: `sqlite:///PATH` or `postgresql://...[?schema=NAME]`."""

    backend: str  # "sqlite" or "postgres"
    sqlite_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    dbname: str = "postgres"
    schema: str = ""

    @classmethod
    def parse(cls, url: str, variable: str = "LEDGER_DATABASE_URL") -> DatabaseURL:
        """Parse a URL; a malformed one is a ValueError naming `variable`, where it came from."""
        if url.startswith("sqlite:///"):
            return cls(backend="sqlite", sqlite_path=Path(url[len("sqlite:///") :]))
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"{variable} must start with sqlite:/// or postgresql://")
        query = parse_qs(parts.query)
        return cls(
            backend="postgres",
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            dbname=(parts.path or "/postgres").lstrip("/") or "postgres",
            schema=query.get("schema", [""])[0],
        )

    def conninfo(self) -> str:
        """A psycopg connection string (no schema: callers set search_path themselves)."""
        info = f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"
        if self.password:
            info += f" password={self.password}"
        return info


@dataclass(frozen=True)
class Settings:
    home: Path
    database: DatabaseURL
    keystore: DatabaseURL
    master_key: str | None
    policy_path: Path | None
    signing_key: str | None
    log_path: Path | None
    # processes that share the commands of one large atomic batch (`ledger.parallel`)
    batch_processes: int = 2

    @property
    def master_key_file(self) -> Path:
        return self.home / "master.key"

    @property
    def signing_key_file(self) -> Path:
        return self.home / "signing.key"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("LEDGER_HOME", "./.ledger")).expanduser().absolute()
        db_url = env.get("LEDGER_DATABASE_URL") or f"sqlite:///{home / 'ledger.db'}"
        database = DatabaseURL.parse(db_url)
        keystore_url = env.get("LEDGER_KEYSTORE_URL")
        if keystore_url:
            keystore = DatabaseURL.parse(keystore_url, "LEDGER_KEYSTORE_URL")
        elif database.backend == "postgres":
            keystore = database
        else:
            keystore = DatabaseURL.parse(f"sqlite:///{home / 'keys.db'}")
        policy = env.get("LEDGER_POLICY")
        log = env.get("LEDGER_LOG_FILE")
        processes = env.get("LEDGER_BATCH_PROCESSES", "2")
        if processes not in ("1", "2"):
            raise ValueError("LEDGER_BATCH_PROCESSES must be 1 or 2")
        return cls(
            home=home,
            database=database,
            keystore=keystore,
            master_key=env.get("LEDGER_MASTER_KEY") or None,
            policy_path=Path(policy) if policy else None,
            signing_key=env.get("LEDGER_SIGNING_KEY") or None,
            log_path=Path(log) if log else home / "ledger.log",
            batch_processes=int(processes),
        )
