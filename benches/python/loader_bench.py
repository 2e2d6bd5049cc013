"""Python loaders against raw GETs, on the same server and the same bytes.

    python3 benches/python/loader_bench.py                    # 20 ms first-byte latency
    python3 benches/python/loader_bench.py --proxy-ms 15      # and a 30 ms round trip through a delaying TCP proxy

Workloads: N objects of SIZE bytes (default 20,000 x 100 KiB), and the same samples as tar
shards (pai_mount) and MDS shards (MosaicML Streaming). Columns:
- raw GETs at the same concurrency (pai-bench-raw-gets, Rust, nothing but GETs): the ceiling;
- pai_mount.IterableDataset through pai_mount.DataLoader, num_workers 0, 4, 8;
- s3torchconnector (S3IterableDataset.from_objects, force_path_style, enable_sharding);
- mosaicml-streaming (StreamingDataset over MDS shards, a cold local cache).
Every loader decodes the same way (the bytes as a uint8 tensor, batches of 256 stacked by the
default collate) and runs in a process of its own; reported: time to the first batch,
samples/s, MB/s, CPU seconds per GiB (the process and its workers) and the peak RSS of the
process tree. A loader is stopped after --max-seconds, and its rate is taken over what it read.

Peers are optional: they are run when importable (install them into a venv that sees the
system's torch: see docs/benchmarks.md). Needs pai_mount installed (pip install ./python).
"""

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACCESS, SECRET = "bench-access", "bench-secret"
BATCH = 256


def sample_bytes(i: int, size: int) -> bytes:
    data = bytearray((j * 7 + i) & 0xFF for j in range(size)) if size < 4096 else None
    if data is None:
        pattern = bytes((j * 7) & 0xFF for j in range(256))
        shifted = bytes((b + i) & 0xFF for b in pattern)
        data = bytearray((shifted * (size // 256 + 1))[:size])
    head = i.to_bytes(8, "little")
    data[: min(8, size)] = head[: min(8, size)]
    return bytes(data)


class Server:
    def __init__(self, latency_ms: int, proxy_ms: int) -> None:
        args = [str(ROOT / "target/release/pai-test-s3"), "--control", "--bucket", "bench",
                "--latency-ms", str(latency_ms), "--access-key", ACCESS, "--secret-key", SECRET]
        if proxy_ms:
            args += ["--proxy-delay-ms", str(proxy_ms)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.endpoint = self.proc.stdout.readline().strip().split("=", 1)[1]
        if proxy_ms:
            self.proc.stdout.readline()

    def command(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer.startswith("ok"), (line, answer)
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def write_mds(out: str, n: int, size: int) -> None:
    from streaming import MDSWriter

    with MDSWriter(out=out, columns={"key": "str", "data": "bytes"}, size_limit=1 << 27, compression=None) as w:
        for i in range(n):
            w.write({"key": f"{i:06d}", "data": sample_bytes(i, size)})


def setup(server: Server, n: int, size: int, tmp: str, peer_python) -> None:
    import pai_mount as pm

    store = dict(endpoint=server.endpoint, path_style=True, access_key_id=ACCESS, secret_access_key=SECRET)
    server.command(f"fill bench flat/ {n} {size}")
    pm.build_manifest("s3://bench/flat", **store)
    per_shard = 1000
    path = os.path.join(tmp, "shard")
    for k in range((n + per_shard - 1) // per_shard):
        with tarfile.open(path, "w") as t:
            for i in range(k * per_shard, min(n, (k + 1) * per_shard)):
                data = sample_bytes(i, size)
                info = tarfile.TarInfo(f"s/{i:06d}.bin")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        server.command(f"put bench tars/shard-{k:04d}.tar {path}")
    pm.build_manifest("s3://bench/tars", **store)
    pm.build_tar_index("s3://bench/tars", **store)
    if peer_python:
        out = os.path.join(tmp, "mds")
        subprocess.run([peer_python, "-W", "ignore", __file__, "--write-mds", out, "--samples", str(n), "--size", str(size)],
                       check=True)
        for name in os.listdir(out):
            server.command(f"put bench mds/{name} {os.path.join(out, name)}")


# ---- the child: one loader, measured ---------------------------------------------------


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except OSError:
                pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def to_tensor(data):
    import torch

    return torch.frombuffer(data, dtype=torch.uint8)


def pm_transform(sample):
    return to_tensor(sample.data)


def s3_transform(reader):
    return to_tensor(bytearray(reader.read()))


def make_loader(kind: str, workers: int, endpoint: str, n: int, tmp: str):
    import torch.utils.data

    store = dict(endpoint=endpoint, path_style=True, access_key_id=ACCESS, secret_access_key=SECRET)
    if kind in ("pai_mount", "pai_mount-tar"):
        import pai_mount as pm

        if kind == "pai_mount":
            ds = pm.IterableDataset("s3://bench/flat", shuffle="global", seed=1, transform=pm_transform, **store)
        else:
            ds = pm.IterableDataset("s3://bench/tars", tar=True, shuffle="block", block_size=1000, seed=1,
                                    transform=lambda s: to_tensor(s.members["bin"]), **store)
        return pm.DataLoader(ds, batch_size=BATCH, num_workers=workers)
    if kind == "s3torchconnector":
        from s3torchconnector import S3ClientConfig, S3IterableDataset

        uris = [f"s3://bench/flat/{i:06d}.bin" for i in range(n)]
        ds = S3IterableDataset.from_objects(uris, region="us-east-1", endpoint=endpoint, transform=s3_transform,
                                            s3client_config=S3ClientConfig(force_path_style=True), enable_sharding=True)
        return torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=workers)
    if kind == "streaming":
        from streaming import StreamingDataset

        class Decoded(StreamingDataset):
            def __getitem__(self, i):
                return to_tensor(bytearray(super().__getitem__(i)["data"]))

        ds = Decoded(remote="s3://bench/mds", local=os.path.join(tmp, "cache"), shuffle=True, shuffle_seed=1,
                     batch_size=BATCH)
        return torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=workers)
    raise ValueError(kind)


def child(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET, S3_ENDPOINT_URL=args.endpoint,
                      AWS_REGION="us-east-1")
    cfg = os.path.join(args.tmp, "aws-config")
    with open(cfg, "w") as f:
        f.write("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    os.environ["AWS_CONFIG_FILE"] = cfg
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(os.getpid()))
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    # Imports are not the loader's time.
    import torch.utils.data  # noqa: F401

    if args.child.startswith("pai_mount"):
        import pai_mount  # noqa: F401
    elif args.child == "s3torchconnector":
        import s3torchconnector  # noqa: F401
    else:
        import streaming  # noqa: F401
    t0 = time.perf_counter()
    args.workers = int(args.workers)
    loader = make_loader(args.child, args.workers, args.endpoint, args.samples, args.tmp)
    first = None
    samples = nbytes = 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0
        samples += batch.shape[0]
        nbytes += batch.numel()
        if time.perf_counter() - t0 > args.max_seconds:
            break
    secs = time.perf_counter() - t0
    del loader
    stop.set()
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime + ru_kids.ru_stime
    print(json.dumps({
        "loader": args.child, "workers": args.workers, "samples": samples, "seconds": secs,
        "first_batch_s": first, "samples_per_s": samples / secs, "mb_per_s": nbytes / secs / 1e6,
        "cpu_s_per_gib": cpu / (nbytes / (1 << 30)) if nbytes else None, "peak_rss_mib": peak[0] / (1 << 20),
    }))


# ---- the driver ------------------------------------------------------------------------------


def raw(endpoint: str, n: int, concurrency: int) -> dict:
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)
    out = subprocess.run([str(ROOT / "target/release/pai-bench-raw-gets"), "--endpoint", endpoint, "--bucket", "bench",
                          "--prefix", "flat/", "--count", str(n), "--concurrency", str(concurrency)],
                         env=env, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return {"loader": f"raw GETs ({concurrency} in flight)", "workers": "-", "samples_per_s": r["samples_per_s"],
            "mb_per_s": r["mb_per_s"], "first_batch_s": None, "cpu_s_per_gib": None, "peak_rss_mib": None}


def importable(name: str, python: str) -> bool:
    return subprocess.run([python, "-c", f"import {name}"], capture_output=True).returncode == 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--size", type=int, default=100 * 1024)
    p.add_argument("--latency-ms", type=int, default=20)
    p.add_argument("--proxy-ms", type=int, default=0, help="one-way delay of a TCP proxy in front of the server")
    p.add_argument("--workers", default="0,4,8")
    p.add_argument("--loaders", default="pai_mount,pai_mount-tar,s3torchconnector,streaming")
    p.add_argument("--max-seconds", type=float, default=60)
    p.add_argument("--peer-python", default=sys.executable, help="the interpreter that has the peers installed")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--child")
    p.add_argument("--write-mds")
    p.add_argument("--endpoint")
    p.add_argument("--tmp")
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.write_mds:
        return write_mds(args.write_mds, args.samples, args.size)

    subprocess.run(["cargo", "build", "--release", "-q", "-p", "pai-test-s3", "-p", "pai-mount-benches",
                    "--bin", "pai-test-s3", "--bin", "pai-bench-raw-gets"], cwd=ROOT, check=True)
    loaders = args.loaders.split(",")
    workers = [int(w) for w in args.workers.split(",")]
    peers = {k: importable(m, args.peer_python) for k, m in [("s3torchconnector", "s3torchconnector"), ("streaming", "streaming")]}
    server = Server(args.latency_ms, args.proxy_ms)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        setup(server, args.samples, args.size, tmp,
              args.peer_python if "streaming" in loaders and peers["streaming"] else None)
        print(f"setup {time.perf_counter() - t:.0f} s; endpoint {server.endpoint}", file=sys.stderr)
        for c in (64, 256):
            rows.append(raw(server.endpoint, args.samples, c))
            print(json.dumps(rows[-1]), file=sys.stderr)
        for kind in loaders:
            python = sys.executable if kind.startswith("pai_mount") else args.peer_python
            if kind in peers and not peers[kind]:
                print(f"skipping {kind}: not importable by {python}", file=sys.stderr)
                continue
            for w in workers:
                run_tmp = tempfile.mkdtemp(dir=tmp)
                out = subprocess.run([python, __file__, "--child", kind, "--workers", str(w), "--endpoint", server.endpoint,
                                      "--samples", str(args.samples), "--tmp", run_tmp, "--max-seconds", str(args.max_seconds)],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{kind} with {w} workers failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                    why = [line for line in out.stderr.strip().splitlines() if line.strip()][-1]
                    rows.append({"loader": kind, "workers": w, "failed": why[:200]})
                    continue
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr)
    server.close()
    cond = f"{args.samples} x {args.size // 1024} KiB, first-byte latency {args.latency_ms} ms" + (
        f", TCP proxy {args.proxy_ms} ms each way" if args.proxy_ms else "")
    print(f"\n{cond}\n")
    print("| loader | num_workers | first batch (s) | samples/s | MB/s | CPU s/GiB | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        if "failed" in r:
            print(f"| {r['loader']} | {r['workers']} | failed: {r['failed']} | | | | |")
            continue
        print(f"| {r['loader']} | {r['workers']} | {fmt(r['first_batch_s'], '.2f')} | {r['samples_per_s']:,.0f} | "
              f"{r['mb_per_s']:,.0f} | {fmt(r['cpu_s_per_gib'], '.1f')} | {fmt(r['peak_rss_mib'], ',.0f')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"conditions": cond, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
