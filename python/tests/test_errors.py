"""Every exception class, each naming the URL (and the key where there is one)."""

import pytest

import pai_mount as pm


def test_the_exception_classes_are_also_the_builtin_ones():
    assert issubclass(pm.NotFoundError, FileNotFoundError)
    assert issubclass(pm.CredentialsError, PermissionError)
    assert issubclass(pm.InvalidArgumentError, ValueError)
    assert issubclass(pm.OutOfRangeError, IndexError)
    for cls in (
        pm.NotFoundError,
        pm.CredentialsError,
        pm.InvalidArgumentError,
        pm.ObjectChangedError,
        pm.CorruptError,
        pm.OutOfRangeError,
        pm.UnavailableError,
    ):
        assert issubclass(cls, pm.Error)


def test_a_bad_url_is_an_invalid_argument():
    with pytest.raises(pm.InvalidArgumentError, match="unknown scheme"):
        pm.Dataset("gs://bkt/x")
    with pytest.raises(pm.InvalidArgumentError, match="names no object"):
        pm.open("s3://bkt/", "rb")
    with pytest.raises(ValueError, match="mode"):
        pm.open("s3://bkt/x", "r+")


def test_a_missing_bucket_and_a_missing_object_are_not_found(server):
    with pytest.raises(pm.NotFoundError) as e:
        pm.Dataset("s3://nobucket/ds", **server.store())
    assert "nobucket" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        pm.open("s3://bkt/nothing/here.pt", "rb", **server.store())
    assert e.value.url == "s3://bkt/nothing/here.pt"
    assert e.value.key == "here.pt"


def test_wrong_credentials_are_a_credentials_error(server):
    store = dict(server.store(), secret_access_key="wrong")
    with pytest.raises(pm.CredentialsError) as e:
        pm.Dataset("s3://bkt/ds", **store)
    assert "s3://bkt/ds" in str(e.value)
    assert "wrong" not in str(e.value), "secrets never appear in messages"


def test_an_object_changed_after_the_manifest_is_an_object_changed_error(server):
    server.put("chg/a.bin", b"one" * 100)
    server.put("chg/b.bin", b"two" * 100)
    pm.build_manifest("s3://bkt/chg", **server.store())
    ds = pm.Dataset("s3://bkt/chg", **server.store())
    server.put("chg/a.bin", b"three" * 100)
    with pytest.raises(pm.ObjectChangedError) as e:
        ds[0]
    assert e.value.key == "a.bin" and "s3://bkt/chg" in str(e.value)
    server.delete("chg/b.bin")
    with pytest.raises(pm.NotFoundError) as e:
        ds[1]
    assert e.value.key == "b.bin"


def test_a_corrupt_tar_index_is_a_corrupt_error(server):
    server.put("badtar/x.tar", b"\0" * 1024)
    pm.build_manifest("s3://bkt/badtar", **server.store())
    server.put("badtar/.pai-mount/tar-index.v1", b"PAITARIX garbage")
    with pytest.raises(pm.CorruptError) as e:
        pm.Dataset("s3://bkt/badtar", tar=True, **server.store())
    assert "tar-index" in str(e.value)


def test_an_unreachable_store_is_unavailable():
    with pytest.raises(pm.UnavailableError):
        pm.open(
            "s3://bkt/x.bin",
            "rb",
            endpoint="http://127.0.0.1:9",
            path_style=True,
            access_key_id="a",
            secret_access_key="b",
        )


def test_a_stalled_request_is_retried_within_the_first_byte_bound(server):
    import time

    server.put("stall/x.bin", b"y" * 5000)
    store = dict(server.store(), first_byte_timeout=0.5, idle_timeout=0.5, connect_timeout=1)
    server.command("stall 1")
    t = time.monotonic()
    with pm.open("s3://bkt/stall/x.bin", "rb", **store) as f:
        assert f.read() == b"y" * 5000
    assert time.monotonic() - t < 3


def test_request_bounds_must_be_positive_seconds(server):
    with pytest.raises(pm.InvalidArgumentError, match="first_byte_timeout"):
        pm.open("s3://bkt/stall/x.bin", "rb", first_byte_timeout=0, **server.store())
    with pytest.raises(pm.InvalidArgumentError, match="max_concurrency"):
        pm.open("s3://bkt/stall/x.bin", "rb", max_concurrency=0, **server.store())
