"""Map-style datasets, samples and errors against the S3 test server."""

import io
import pickle
import tarfile

import pytest

import pai_mount as pm
from conftest import N_SAMPLES, body, index_of


def test_a_dataset_lists_only_the_globbed_samples_and_reads_them_byte_for_byte(server, dataset_url):
    ds = pm.Dataset(dataset_url, glob="**/*.jpg", **server.store())
    assert len(ds) == N_SAMPLES
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s.index == i
        assert s.key.endswith(".jpg")
        assert bytes(s.data) == body(index_of(s.key))
        seen.add(index_of(s.key))
    assert seen == set(range(N_SAMPLES))
    assert bytes(ds[-1].data) == bytes(ds[len(ds) - 1].data)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_sample_data_is_a_read_only_zero_copy_view_that_outlives_the_sample(server, dataset_url):
    ds = pm.Dataset(dataset_url, glob="**/*.jpg", **server.store())
    s = ds[3]
    view = s.data
    assert isinstance(view, memoryview) and view.readonly and view.format == "B"
    expected = body(index_of(s.key))
    del s  # the view keeps the bytes alive
    import gc

    gc.collect()
    assert bytes(view) == expected
    with pytest.raises(TypeError):
        view[0] = 1


def test_a_dataset_pickles_as_its_configuration_and_reopens(server, dataset_url):
    ds = pm.Dataset(dataset_url, suffixes=[".txt"], **server.store())
    blob = pickle.dumps(ds)
    assert len(blob) < 2000, "configuration only, not the sample table"
    again = pickle.loads(blob)
    assert len(again) == len(ds) == N_SAMPLES
    assert bytes(again[5].data) == bytes(ds[5].data)


def test_unknown_keywords_are_a_type_error():
    with pytest.raises(TypeError, match="regoin"):
        pm.Dataset("s3://bkt/ds", regoin="cn-hangzhou")


def _tar(samples):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_shards_give_samples_with_members(server):
    expected = {}
    for shard in range(3):
        samples = []
        for j in range(10):
            i = shard * 10 + j
            m = {"jpg": body(i), "cls": str(i).encode()}
            samples.append((f"s/{i:05d}", m))
            expected[f"s/{i:05d}"] = m
        server.put(f"tars/shard-{shard}.tar", _tar(samples))
    url = "s3://bkt/tars"
    pm.build_manifest(url, **server.store())
    with pytest.raises(pm.NotFoundError, match="tar-index"):
        pm.Dataset(url, tar=True, **server.store())
    assert pm.build_tar_index(url, **server.store()) == (3, 30)
    ds = pm.Dataset(url, tar=True, **server.store())
    assert len(ds) == 30
    for i in range(30):
        s = ds[i]
        assert {k: bytes(v) for k, v in s.members.items()} == expected[s.key]
    # A sample crossing processes keeps its members.
    s = pickle.loads(pickle.dumps(ds[4]))
    assert {k: bytes(v) for k, v in s.members.items()} == expected[s.key]


def test_importing_the_package_does_not_import_torch():
    from conftest import run_python

    out = run_python(
        "import sys, pai_mount as pm; print('torch' in sys.modules, 'IterableDataset' in dir(pm))"
    )
    assert out.split() == ["False", "True"]
