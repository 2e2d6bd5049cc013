"""Fixtures: the S3-protocol test server on loopback (SigV4 over HTTP), driven through its
control channel, and datasets written into it."""

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACCESS_KEY = "pai-test-access"
SECRET_KEY = "pai-test-secret"


def _server_binary() -> str:
    explicit = os.environ.get("PAI_TEST_S3")
    if explicit:
        return explicit
    binary = ROOT / "target" / "debug" / "pai-test-s3"
    if not binary.exists():
        subprocess.run(
            ["cargo", "build", "--quiet", "-p", "pai-test-s3"], cwd=ROOT, check=True
        )
    return str(binary)


class Server:
    """A running test server; ``command()`` sends one control line and returns the answer."""

    def __init__(self, latency_ms: int = 0) -> None:
        self.proc = subprocess.Popen(
            [
                _server_binary(),
                "--control",
                "--bucket",
                "bkt",
                "--latency-ms",
                str(latency_ms),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("endpoint="), line
        self.endpoint = line.split("=", 1)[1]
        self._tmp = tempfile.TemporaryDirectory()

    def command(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"test server: {line!r} -> {answer!r}")
        return answer[2:].strip()

    def put(self, key: str, data: bytes, bucket: str = "bkt") -> str:
        path = os.path.join(self._tmp.name, "obj")
        with open(path, "wb") as f:
            f.write(data)
        return self.command(f"put {bucket} {key} {path}")

    def delete(self, key: str, bucket: str = "bkt") -> None:
        self.command(f"delete {bucket} {key}")

    def keys(self, prefix: str = "", bucket: str = "bkt") -> int:
        return int(self.command(f"keys {bucket} {prefix}".rstrip()))

    def counts(self) -> dict:
        return dict(kv.split("=") for kv in self.command("counts").split())

    def store(self) -> dict:
        """The store keywords every pai_mount call takes."""
        return {
            "endpoint": self.endpoint,
            "path_style": True,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        }

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._tmp.cleanup()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.close()


def body(i: int) -> bytes:
    """Sample i's bytes: distinct, of varied length."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (40 + i % 23))[: 700 + (i * 37) % 1900]


N_SAMPLES = 103


@pytest.fixture(scope="session")
def dataset_url(server):
    """103 small samples under ds/, plus a label file per sample that the glob leaves out,
    and a stored manifest."""
    import pai_mount as pm

    for i in range(N_SAMPLES):
        server.put(f"ds/part{i % 4}/{i:05d}.jpg", body(i))
        server.put(f"ds/part{i % 4}/{i:05d}.txt", f"label {i}".encode())
    url = "s3://bkt/ds"
    pm.build_manifest(url, **server.store())
    return url


def index_of(key: str) -> int:
    return int(key.rsplit("/", 1)[-1][:5])


def run_python(code: str, env: dict = None, timeout: int = 300) -> str:
    """Runs ``code`` in a new interpreter; returns its stdout (fails the test on error)."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, "-c", code],
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout
