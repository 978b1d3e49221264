"""HTTP appends: commands/s and latency with 1, 8 and 32 concurrent clients, on each backend.

    python -m benchmarks.bench_http [--seconds S] [--commands N] [--backends sqlite,postgres]
                                    [--client raw|httpx]

A real `ledger serve` on loopback; the load generator is ours, bounded both in commands and
in time: one keep-alive connection per client, a small asyncio HTTP/1.1 client (httpx costs
more CPU per request than the server on a two-core machine; `--client httpx` shows it).
Every command is a `collect` of a sealed value on one of 256 existing subjects. The
baseline, measured in the same run, is the same server with `--no-group-commit` (one
transaction per command) and one client; `ratio_to_baseline` divides each rate by it.
`server_cpu_ms_per_command` is the CPU time of the `serve` process and its children
(workers, background process) per command: steadier than rates on a shared machine.
On PostgreSQL a last row runs two server processes (`--workers 2`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.common import fresh_settings, postgres_reachable, report
from ledger.api.process import ServerProcess
from ledger.api.tokens import TokenStore
from ledger.facade import Ledger

SUBJECTS = 256
CLIENTS = (1, 8, 32)


@dataclass
class Run:
    commands: int
    seconds: float
    latencies: list[float]
    errors: int
    warm_up: int = 0  # commands sent before the measured part

    @property
    def rate(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def command(subject: str, n: int) -> dict[str, Any]:
    return {
        "type": "collect",
        "subject": subject,
        "category": "correspondence",
        "value": f"customer wrote about invoice {n}",
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "source": "subject",
    }


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator must not eat the CPU that
    the server needs (on two cores httpx spends more per request than the server does)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, path: str, token: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        response = await self.reader.readuntil(b"\r\n\r\n")
        status = int(response[9:12])
        length = 0
        for line in response.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def load_raw(
    port: int, token: str, subjects: list[str], clients: int, limit: int, seconds: float
) -> Run:
    """`clients` connections, each sending one command at a time until `limit` or `seconds`."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = 0.0
    connections = [await Connection.open(port) for _ in range(clients)]

    async def client(index: int, connection: Connection, warm_up: bool) -> None:
        nonlocal sent, errors
        n = 0
        while warm_up or (sent < limit and time.perf_counter() < deadline):
            subject = subjects[(index + clients * n) % len(subjects)]
            body = orjson.dumps(command(subject, n))
            if warm_up:  # every subject cached, every connection and code path hot
                for s in subjects[index::clients]:
                    await connection.post("/v1/commands", token, orjson.dumps(command(s, -1)))
                return
            sent += 1
            started = time.perf_counter()
            status, _ = await connection.post("/v1/commands", token, body)
            latencies.append(time.perf_counter() - started)
            errors += status != 200
            n += 1

    try:
        await asyncio.gather(*(client(i, c, True) for i, c in enumerate(connections)))
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client(i, c, False) for i, c in enumerate(connections)))
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()
    return Run(len(latencies), elapsed, latencies, errors, warm_up=len(subjects))


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (uvicorn workers, the background process):
    on a shared machine a steadier figure than a rate."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def load_httpx(
    url: str, token: str, subjects: list[str], clients: int, limit: int, seconds: float
) -> Run:
    """The same load through httpx (one client each), to show what the generator costs."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    deadline = started + seconds

    async def client(index: int) -> None:
        nonlocal sent, errors
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            n = 0
            while sent < limit and time.perf_counter() < deadline:
                sent += 1
                subject = subjects[(index + clients * n) % len(subjects)]
                t = time.perf_counter()
                answer = await http.post("/v1/commands", json=command(subject, n))
                latencies.append(time.perf_counter() - t)
                errors += answer.status_code != 200
                n += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return Run(len(latencies), time.perf_counter() - started, latencies, errors)


def bench_backend(
    backend: str, seconds: float, commands: int, client_kind: str
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with fresh_settings(backend) as (settings, env):
        subjects = [str(uuid.uuid4()) for _ in range(SUBJECTS)]
        with Ledger.open(settings) as ledger:
            ledger.execute_many(
                [
                    {
                        "type": "register_subject",
                        "subject": s,
                        "kind": "customer",
                        "purpose": "customer_administration",
                        "legal_basis": "contract",
                    }
                    for s in subjects
                ]
            )
        store = TokenStore.open(settings)
        token, _ = store.create("service", "bench")
        store.close()
        baseline = 0.0
        modes: list[tuple[str, list[str], tuple[int, ...]]] = [
            ("one transaction per command", ["--no-group-commit"], (1,)),
            ("group commit", [], CLIENTS),
        ]
        if backend == "postgres":  # several server processes need PostgreSQL
            modes.append(("group commit, 2 workers", ["--workers", "2"], (32,)))
        for mode, args, clients_list in modes:
            with ServerProcess(env, ["--no-sweep", *args]) as server:
                for clients in clients_list:
                    cpu_before = cpu_seconds(server.process.pid)
                    if client_kind == "httpx":
                        run = asyncio.run(
                            load_httpx(server.url, token, subjects, clients, commands, seconds)
                        )
                    else:
                        run = asyncio.run(
                            load_raw(server.port, token, subjects, clients, commands, seconds)
                        )
                    cpu = cpu_seconds(server.process.pid) - cpu_before
                    if not baseline:
                        baseline = run.rate
                    rows.append(
                        {
                            "backend": backend,
                            "mode": mode,
                            "clients": clients,
                            "commands": run.commands,
                            "errors": run.errors,
                            "seconds": round(run.seconds, 3),
                            "commands_per_s": round(run.rate, 1),
                            "p50_ms": round(run.percentile(50), 2),
                            "p99_ms": round(run.percentile(99), 2),
                            "mean_ms": round(statistics.fmean(run.latencies) * 1000, 2),
                            "ratio_to_baseline": round(run.rate / baseline, 2),
                            "server_cpu_ms_per_command": round(
                                cpu * 1000 / (run.commands + run.warm_up), 3
                            ),
                        }
                    )
                    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="time bound of each run")
    parser.add_argument("--commands", type=int, default=4000, help="count bound of each run")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="the load generator's client"
    )
    options = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for backend in options.backends.split(","):
        if backend == "postgres" and not postgres_reachable():
            print("PostgreSQL is not reachable: skipped")
            continue
        rows.extend(bench_backend(backend, options.seconds, options.commands, options.client))
    path = report(
        "http",
        "HTTP appends (ratio: against one client without group commit, same backend)",
        rows,
        [
            "backend",
            "mode",
            "clients",
            "commands",
            "errors",
            "commands_per_s",
            "p50_ms",
            "p99_ms",
            "ratio_to_baseline",
            "server_cpu_ms_per_command",
        ],
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
