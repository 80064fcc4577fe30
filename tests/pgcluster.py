"""A throwaway PostgreSQL cluster on loopback for the relay's tests (initdb + start: about a second).

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` system user
(``runuser``). The binaries come from ``pg_config --bindir`` or Debian's ``/usr/lib/postgresql/<v>/bin``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def bindir() -> Path | None:
    config = shutil.which("pg_config")
    if config:
        found = Path(subprocess.run([config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip())
        if (found / "initdb").exists():
            return found
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, root: Path, port: int, run_as: list[str], bins: Path) -> None:
        self.root, self.port, self.run_as, self.bins = root, port, run_as, bins

    def superuser(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=5"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        done = subprocess.run([str(self.bins / "psql"), "-v", "ON_ERROR_STOP=1", "-qAt", "-d",
                               self.superuser(dbname), "-c", sql], capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise RuntimeError(done.stderr)
        return done.stdout

    def new_database(self, owner: str = "relay_owner") -> str:
        """A fresh database owned by a CREATEROLE (not superuser) login role; its connection string."""
        name = "relay_" + uuid.uuid4().hex[:12]
        self.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{owner}') THEN "
                  f"CREATE ROLE {owner} LOGIN CREATEROLE; END IF; END $$;")
        self.psql(f"CREATE DATABASE {name} OWNER {owner}")
        self.psql(f"REVOKE ALL ON SCHEMA public FROM PUBLIC; ALTER SCHEMA public OWNER TO {owner}", dbname=name)
        return f"host=127.0.0.1 port={self.port} user={owner} dbname={name} connect_timeout=5"


@contextmanager
def cluster() -> Iterator[Cluster]:
    bins = bindir()
    if bins is None:
        raise FileNotFoundError("PostgreSQL's initdb was not found (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="ns-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        root.chmod(0o700)
    port = _free_port()
    data, log = root / "data", root / "log"
    try:
        subprocess.run([*run_as, str(bins / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=60"
                   " -c shared_buffers=32MB")
        subprocess.run([*run_as, str(bins / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w",
                        "-t", "60", "start"], check=True, capture_output=True, timeout=90)
        yield Cluster(root, port, run_as, bins)
    finally:
        subprocess.run([*run_as, str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A free TCP port on loopback (for a relay under test)."""
    return _free_port()
