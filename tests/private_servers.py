"""Private PostgreSQL and Redis servers for tests that stop, kill and restart them.

Such tests never touch the shared servers: each starts its own under a temporary
directory on a free port and stops it at the end. PostgreSQL runs as the ``postgres``
user (it refuses to run as root) from a fresh ``initdb`` cluster, or as a streaming
standby of one.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg

from tests.processes import free_port
from tests.tcp_proxy import TcpProxy


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PrivatePostgres:
    """A PostgreSQL cluster of its own: ``stop(mode)`` and ``start()`` as often as needed.

    Its directory is a fresh one under the system's temporary directory (not pytest's,
    which the ``postgres`` user cannot enter). ``settings`` are more server settings
    (``name=value``). With ``standby_of`` (a port on 127.0.0.1: a running server's, or a
    proxy's in front of it), the cluster is a streaming standby of that server: a copy of it
    taken by ``pg_basebackup -R``, which starts replicating from there when started.
    """

    def __init__(self, *settings: str, standby_of: int | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="reminders-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.settings = settings
        self.killed = False
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        if standby_of is None:
            make = ["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]
        else:
            source = ["-h", "127.0.0.1", "-p", str(standby_of), "-U", "postgres"]
            make = ["pg_basebackup", "-D", str(self.data), *source, "-R", "-X", "stream"]
            make += ["--checkpoint=fast", "--no-sync"]
        subprocess.run(
            _as_postgres([_postgres_bin(make[0]), *make[1:]]),
            check=True,
            capture_output=True,
            timeout=120,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *arguments: str) -> None:
        subprocess.run(
            _as_postgres([_postgres_bin("pg_ctl"), "-D", str(self.data), *arguments]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=60"
        )
        options += "".join(f" -c {setting}" for setting in self.settings)
        self._ctl("start", "-w", "-t", "30", "-o", options, "-l", str(self.root / "log"))

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean shutdown) or ``immediate`` (as a crash: recovery at next start)."""
        self._ctl("stop", "-w", "-t", "30", "-m", mode)

    def kill(self) -> None:
        """SIGKILL the server and every process of it, as when its host dies: no backend
        finishes what it was doing, no WAL goes out after this.

        Each of its processes is in a process group of its own (PostgreSQL's children call
        ``setsid``), and one left running would finish its statement, or stream WAL, after
        the postmaster died; so every one is stopped first (the postmaster first, so that it
        starts no more), then all are killed.
        """
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        postmaster.suspend()
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes[1:]:
            with suppress(psutil.NoSuchProcess):
                process.suspend()
        for process in processes:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        self.killed = True
        deadline = time.monotonic() + 10
        while any(_running(process) for process in processes):
            if time.monotonic() > deadline:
                raise RuntimeError("the killed PostgreSQL server is still running")
            time.sleep(0.01)

    def promote(self) -> None:
        """A standby becomes a primary (``pg_ctl promote``), taking writes when this returns."""
        self._ctl("promote", "-w", "-t", "30")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of one statement ([] if it returns none), on a connection of its own
        (autocommit)."""
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(sql)
            return cursor.fetchall() if cursor.description is not None else []

    def close(self) -> None:
        if not self.killed:
            with suppress(subprocess.CalledProcessError):  # already stopped
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` of its own on a free port, nothing kept on disk unless asked."""

    def __init__(self, *options: str, password: str = "", sentinel: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="reminders-redis-"))
        self.port = free_port()
        self.options = options  # more redis-server options, e.g. ("--replicaof", host, port)
        self.password = password
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _auth_options(self) -> list[str]:
        if not self.password:
            return []
        if self.sentinel:
            return ["--requirepass", self.password]
        # A replica authenticates to its primary with the same password (and the other way
        # round after a failover).
        return ["--requirepass", self.password, "--masterauth", self.password]

    def cli(self, *command: str) -> str:
        """One ``redis-cli`` command against this server; its output (errors included)."""
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        answer = subprocess.run(
            ["redis-cli", "-p", str(self.port), *auth, *command],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (answer.stdout + answer.stderr).strip()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                # A Sentinel keeps its state in a configuration file of its own, named first.
                *([str(self.root / "sentinel.conf"), "--sentinel"] if self.sentinel else []),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
                *self._auth_options(),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.cli("ping") == "PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("the private redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _running(process: psutil.Process) -> bool:
    try:
        # A zombie is dead, only not reaped yet by whoever adopted it.
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@dataclass
class ReplicatedPostgres:
    """A primary and its streaming standby; ``link``, if any, is the proxy the standby's
    replication connection goes through, which a test may cut."""

    primary: PrivatePostgres
    standby: PrivatePostgres
    link: TcpProxy | None


@contextmanager
def private_replicated_postgres(
    synchronous: bool, through_link: bool = False
) -> Iterator[ReplicatedPostgres]:
    """A primary and its streaming standby (``pg_basebackup -R``), both running.

    ``synchronous``: the primary's commits wait until the standby has flushed them
    (``synchronous_standby_names``); else replication is asynchronous, PostgreSQL's default.
    ``through_link``: the standby replicates through a `TcpProxy` (``link``), else straight
    from the primary's port.
    """
    primary = PrivatePostgres(*(["synchronous_standby_names='*'"] if synchronous else []))
    servers = [primary]
    link: TcpProxy | None = None
    try:
        primary.start()
        if through_link:
            link = TcpProxy(("127.0.0.1", primary.port))
        standby = PrivatePostgres(standby_of=link.port if link else primary.port)
        servers.append(standby)
        standby.start()
        wanted = "sync" if synchronous else "async"
        deadline = time.monotonic() + 30
        while primary.query("SELECT state, sync_state FROM pg_stat_replication") != [
            ("streaming", wanted)
        ]:
            if time.monotonic() > deadline:
                raise RuntimeError("the standby did not start streaming")
            time.sleep(0.1)
        yield ReplicatedPostgres(primary, standby, link)
    finally:
        for server in reversed(servers):
            server.close()
        if link is not None:
            link.close()


def multi_host_url(*servers: PrivatePostgres) -> str:
    """``DATABASE_URL`` naming ``servers`` in libpq's multi-host form, to the one that takes
    writes."""
    hosts = ",".join(f"127.0.0.1:{server.port}" for server in servers)
    return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()


SENTINEL_SERVICE = "reminders-primary"


class PrivateSentinelSet:
    """A Redis primary, its replica and three Sentinels watching them (quorum 2), each a
    ``redis-server`` of its own on a free loopback port.

    Failover is kept fast: a primary silent for `down_after_ms` is down, and a failover
    that stalls is tried again after twice `failover_timeout_ms`. ``url`` is the
    ``redis+sentinel://`` URL of the set; ``password`` (if any) is every server's and every
    Sentinel's.
    """

    def __init__(
        self, password: str = "", down_after_ms: int = 1000, failover_timeout_ms: int = 2000
    ) -> None:
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers = [PrivateRedis(password=password)]
        replica_of = ("--replicaof", "127.0.0.1", str(self.servers[0].port))
        self.servers.append(PrivateRedis(*replica_of, password=password))
        self.sentinels = [PrivateRedis(password=password, sentinel=True) for _ in range(3)]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{SENTINEL_SERVICE}/0"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            self._configure(sentinel)
            sentinel.start()
        self.wait_until_watched()

    def _configure(self, sentinel: PrivateRedis) -> None:
        # A Sentinel rewrites its configuration file: it must be one of its own.
        config = sentinel.root / "sentinel.conf"
        lines = [
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.servers[0].port} 2",
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SENTINEL_SERVICE} {self.failover_timeout_ms}",
            # Each knows its peers and the replica from the start, as after a first run,
            # instead of finding them out over a few seconds of hello messages.
            f"sentinel myid {_sentinel_id(sentinel)}",
            f"sentinel known-replica {SENTINEL_SERVICE} 127.0.0.1 {self.servers[1].port}",
            *(
                f"sentinel known-sentinel {SENTINEL_SERVICE} 127.0.0.1 {peer.port} "
                f"{_sentinel_id(peer)}"
                for peer in self.sentinels
                if peer is not sentinel
            ),
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SENTINEL_SERVICE} {self.password}")
        config.write_text("\n".join(lines) + "\n")

    def _master_state(self, sentinel: PrivateRedis) -> dict[str, str]:
        fields = sentinel.cli("sentinel", "master", SENTINEL_SERVICE).splitlines()
        return dict(zip(fields[::2], fields[1::2], strict=False))

    def wait_until_watched(self, timeout: float = 30) -> None:
        """Until every Sentinel knows the primary, its replica and the two other Sentinels
        (before that, a failover could not reach its quorum)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self._master_state(sentinel) for sentinel in self.sentinels]
            if all(
                state.get("num-other-sentinels") == "2"
                and state.get("num-slaves") == "1"
                and state.get("flags") == "master"
                for state in states
            ):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Sentinels did not see the whole set: {states}")

    def primary(self) -> PrivateRedis:
        """The server the Sentinels (the first that answers) name as the primary now."""
        for sentinel in self.sentinels:
            answer = sentinel.cli("sentinel", "get-master-addr-by-name", SENTINEL_SERVICE)
            lines = answer.splitlines()
            if len(lines) == 2:
                [server] = [s for s in self.servers if str(s.port) == lines[1]]
                return server
        raise RuntimeError("no Sentinel answered")

    def wait_for_new_primary(self, old: PrivateRedis, timeout: float = 30) -> PrivateRedis:
        """Until every Sentinel names another server than ``old`` and it serves as primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = {
                sentinel.cli("sentinel", "get-master-addr-by-name", SENTINEL_SERVICE)
                for sentinel in self.sentinels
            }
            if len(named) == 1:
                port = named.pop().splitlines()[-1]
                [server] = [s for s in self.servers if str(s.port) == port]
                if server is not old and "role:master" in server.cli("info", "replication"):
                    return server
            time.sleep(0.1)
        raise RuntimeError("no failover within the time allowed")

    def force_failover(self, timeout: float = 30) -> PrivateRedis:
        """A failover that leaves the primary running (``SENTINEL FAILOVER``); the new one.

        The old primary keeps serving as a primary until the Sentinels turn it into a
        replica, some seconds later.
        """
        old = self.primary()
        answer = self.sentinels[0].cli("sentinel", "failover", SENTINEL_SERVICE)
        if answer != "OK":
            raise RuntimeError(f"SENTINEL FAILOVER answered {answer}")
        return self.wait_for_new_primary(old, timeout)

    def wait_replicated(self, timeout: float = 10) -> None:
        """Until every replica has what the primary had written when this was called."""
        primary = self.primary()
        written = _info_number(primary, "master_repl_offset")
        deadline = time.monotonic() + timeout
        replicas = [server for server in self.servers if server is not primary]
        while time.monotonic() < deadline:
            if all(_info_number(replica, "slave_repl_offset") >= written for replica in replicas):
                return
            time.sleep(0.05)
        raise RuntimeError("the replica did not catch up")

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()


def _sentinel_id(sentinel: PrivateRedis) -> str:
    return f"{sentinel.port:040x}"  # 40 hex digits, unique among the set


def _info_number(server: PrivateRedis, name: str) -> int:
    for line in server.cli("info", "replication").splitlines():
        if line.startswith(f"{name}:"):
            return int(line.partition(":")[2])
    return -1


@contextmanager
def private_sentinel_set(password: str = "") -> Iterator[PrivateSentinelSet]:
    servers = PrivateSentinelSet(password)
    try:
        servers.start()
        yield servers
    finally:
        servers.close()
