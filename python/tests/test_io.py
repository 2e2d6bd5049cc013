"""pai_mount.open: streamed uploads and pinned, read-ahead reads."""

import hashlib
import io
import os

import pytest

import pai_mount as pm


def test_a_small_object_round_trips_with_one_put(server):
    url = "s3://bkt/io/small.bin"
    before = int(server.counts()["put"])
    with pm.open(url, "wb", **server.store()) as f:
        f.write(b"hello ")
        f.write(bytearray(b"world"))
    assert int(server.counts()["put"]) == before + 1
    with pm.open(url, "rb", **server.store()) as f:
        assert f.size == 11
        assert f.read() == b"hello world"
        f.seek(-5, io.SEEK_END)
        assert f.read(100) == b"world"
        assert f.read(1) == b""


def test_a_large_object_streams_in_parts_and_reads_back_with_seeks(server):
    url = "s3://bkt/io/large.bin"
    data = os.urandom(1 << 20) * 21  # 21 MiB: two 8 MiB parts and a tail
    with pm.open(url, "wb", part_size=8 << 20, **server.store()) as f:
        for i in range(0, len(data), 3 << 20):
            f.write(data[i : i + (3 << 20)])
    with pm.open(url, "rb", chunk=1 << 20, ahead=4, **server.store()) as f:
        assert f.size == len(data)
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
        for pos, n in [(5, 10), (len(data) - 3, 10), (9 << 20, 3 << 20), (100, 1 << 20)]:
            f.seek(pos)
            assert f.read(n) == data[pos : pos + n]
        buf = bytearray(4096)
        f.seek(12345)
        assert f.readinto(buf) == 4096 and bytes(buf) == data[12345 : 12345 + 4096]


def test_an_exception_inside_with_leaves_no_object(server):
    url = "s3://bkt/io/aborted.bin"
    with pytest.raises(RuntimeError, match="training crashed"):
        with pm.open(url, "wb", part_size=5 << 20, **server.store()) as f:
            f.write(os.urandom(12 << 20))  # parts already sent
            raise RuntimeError("training crashed")
    assert server.keys("io/aborted") == 0
    with pytest.raises(pm.NotFoundError):
        pm.open(url, "rb", **server.store())


def test_a_writer_dropped_without_close_leaves_no_object(server):
    import gc
    import warnings

    f = pm.open("s3://bkt/io/dropped.bin", "wb", part_size=5 << 20, **server.store())
    f.write(os.urandom(7 << 20))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del f
        gc.collect()
    assert any(issubclass(x.category, ResourceWarning) for x in w)
    assert server.keys("io/dropped") == 0


def test_an_object_replaced_while_read_is_an_error_not_mixed_bytes(server):
    url = "s3://bkt/io/replaced.bin"
    server.put("io/replaced.bin", b"a" * (3 << 20))
    with pm.open(url, "rb", chunk=1 << 20, ahead=1, **server.store()) as f:
        assert f.read(1 << 20) == b"a" * (1 << 20)
        server.put("io/replaced.bin", b"b" * (3 << 20))
        with pytest.raises(pm.ObjectChangedError):
            f.seek(2 << 20)
            f.read(1 << 20)


def test_a_256_mib_state_dict_round_trips_through_torch_save_and_load(server):
    torch = pytest.importorskip("torch")
    url = "s3://bkt/ckpt/step-100.pt"
    g = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(1024, 4096, generator=g) for i in range(16)}  # 16 x 16 MiB
    with pm.open(url, "wb", **server.store()) as f:
        torch.save(state, f)
    with pm.open(url, "rb", **server.store()) as f:
        assert f.size > 256 << 20
        loaded = torch.load(f)
    assert loaded.keys() == state.keys()
    for k in state:
        assert torch.equal(loaded[k], state[k]), k


def test_copy_brings_a_prefix_to_local_disk_and_a_rerun_finishes_what_is_missing(server, dataset_url, tmp_path):
    from conftest import N_SAMPLES, body, index_of

    report = pm.copy(dataset_url, tmp_path / "ds", jobs=16, **server.store())
    assert (report["objects"], report["copied"], report["failed"]) == (2 * N_SAMPLES, 2 * N_SAMPLES, 0)
    files = sorted((tmp_path / "ds").rglob("*.jpg"))
    assert len(files) == N_SAMPLES
    for f in files[:10]:
        assert f.read_bytes() == body(index_of(f.name))
    files[0].unlink()
    again = pm.copy(dataset_url, tmp_path / "ds", **server.store())
    assert (again["copied"], again["skipped"]) == (1, 2 * N_SAMPLES - 1)


def test_a_copy_that_cannot_finish_raises_with_the_counts(server, tmp_path):
    server.put("cpfail/a.bin", b"a" * 1000)
    server.put("cpfail/b.bin", b"b" * 1000)
    pm.build_manifest("s3://bkt/cpfail", **server.store())
    server.delete("cpfail/b.bin")
    with pytest.raises(pm.IncompleteCopyError) as e:
        pm.copy("s3://bkt/cpfail", tmp_path / "out", **server.store())
    assert e.value.report["copied"] == 1 and e.value.report["failed"] == 1
    assert "b.bin" in str(e.value)
    report = pm.copy("s3://bkt/cpfail", tmp_path / "out", check=False, **server.store())
    assert report["skipped"] == 1 and report["failed"] == 1


def test_serve_metrics_exposes_the_process_loaders_to_prometheus(server, dataset_url):
    import urllib.request

    ds = pm.Dataset(dataset_url, **server.store())
    url = pm.serve_metrics("127.0.0.1:0")
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    for i in range(5):
        ds[i]
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    line = next(l for l in text.splitlines() if l.startswith("pai_mount_object_get_requests_total{"))
    assert 'command="loader"' in line and f'pid="{os.getpid()}"' in line
    assert int(line.rsplit(" ", 1)[1]) >= 5
    assert "pai_mount_object_get_first_byte_seconds_bucket" in text
    with pytest.raises(pm.InvalidArgumentError):
        pm.serve_metrics("not an address")


def test_a_damaged_read_front_to_back_raises_corrupt_at_the_end_and_a_reopen_reads_it(server):
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: several ranged GETs
    server.put("ckpt/damaged.pt", data)
    url = "s3://bkt/ckpt/damaged.pt"
    server.command("corrupt-gets 1")
    with pm.open(url, "rb", chunk=4 << 20, ahead=2, **server.store()) as f:
        with pytest.raises(pm.CorruptError):
            while f.read(1 << 20):
                pass
    with pm.open(url, "rb", **server.store()) as f:
        assert f.read() == data
