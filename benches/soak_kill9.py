"""Soak: kill -9 the daemon again and again with uploads in flight; no acknowledged file is lost.

    python3 benches/soak_kill9.py [--cycles 100] [--files 6] [--max-size 6000000]

Each cycle mounts the same bucket with the same staging directory, writes FILES files of random
size (up to MAX_SIZE, seeded) and closes each one (a close that returned is an acknowledged
write), then kills the daemon with SIGKILL while their uploads are in flight, and cleans up the
dead mount with `pai-mount unmount`. The next mount resumes the journal's uploads. At the end a
last mount drains everything, and every acknowledged file (the last version of each name) is
read back through a fresh read-only mount and compared byte for byte. Prints one JSON line.
Needs root (FUSE) and a release build: cargo build --release -p pai-mount -p pai-test-s3
"""

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target/release/pai-mount"
SERVER = ROOT / "target/release/pai-test-s3"
ACCESS, SECRET = "soak-access", "soak-secret"


def run(args, env, check=True):
    r = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"pai-mount {' '.join(args)}: {r.stderr.strip()}")
    return r


def daemon_pid(mp: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"pai-mount mount .* {mp}"], capture_output=True, text=True).stdout
    return int(out.split()[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--files", type=int, default=6)
    p.add_argument("--max-size", type=int, default=6_000_000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    rng = random.Random(args.seed)
    server = subprocess.Popen([str(SERVER), "--control", "--bucket", "soak", "--latency-ms", "20",
                               "--access-key", ACCESS, "--secret-key", SECRET],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    endpoint = server.stdout.readline().strip().split("=", 1)[1]
    tmp = Path(tempfile.mkdtemp(prefix="pai-soak-"))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET,
               XDG_STATE_HOME=str(tmp / "state"), PAI_MOUNT_LOG="warn")
    store = ["--endpoint", endpoint, "--path-style"]
    staging = tmp / "staging"
    mp = tmp / "mnt"
    mp.mkdir()
    acknowledged = {}  # name -> sha256 of the last version whose close returned
    killed_with_pending = 0
    pending_total = 0
    t0 = time.time()
    for cycle in range(args.cycles):
        run(["mount", "s3://soak/data", str(mp), "--staging-dir", str(staging), *store], env)
        for i in range(args.files):
            name = f"f{rng.randrange(3 * args.files):03d}.bin"
            data = rng.randbytes(rng.randrange(1, args.max_size))
            with open(mp / name, "wb") as f:
                f.write(data)
            acknowledged[name] = hashlib.sha256(data).hexdigest()
        os.kill(daemon_pid(str(mp)), signal.SIGKILL)
        # Uploads the daemon had not finished: their journal records are still there.
        pending = len(list((staging / "journal").glob("*.rec")))
        killed_with_pending += bool(pending)
        pending_total += pending
        time.sleep(0.05)
        run(["unmount", str(mp)], env, check=False)
    # Drain: a last mount uploads what the journal holds; unmount waits for it.
    run(["mount", "s3://soak/data", str(mp), "--staging-dir", str(staging), *store], env)
    run(["unmount", str(mp)], env)
    # Check through a fresh read-only mount.
    run(["mount", "s3://soak/data", str(mp), "--read-only", *store], env)
    lost, wrong = [], []
    for name, want in sorted(acknowledged.items()):
        try:
            got = hashlib.sha256((mp / name).read_bytes()).hexdigest()
        except OSError:
            lost.append(name)
            continue
        if got != want:
            wrong.append(name)
    run(["unmount", str(mp)], env)
    server.stdin.close()
    server.wait(timeout=30)
    print(json.dumps({
        "cycles": args.cycles, "files_written": args.cycles * args.files, "names": len(acknowledged),
        "cycles_killed_with_uploads_pending": killed_with_pending,
        "uploads_pending_at_kills": pending_total, "lost": lost, "wrong": wrong,
        "seconds": round(time.time() - t0, 1),
    }))
    sys.exit(1 if lost or wrong else 0)


if __name__ == "__main__":
    main()
