"""The PyTorch classes with real DataLoaders and worker processes, against the test server."""

import json
import multiprocessing
import os

import pytest

torch = pytest.importorskip("torch")

import pai_mount as pm  # noqa: E402
from conftest import N_SAMPLES, body, index_of, run_python  # noqa: E402

BATCH = 4


def keys_and_check(batches):
    """The sample indices of delivered batches, in order; checks every byte."""
    out = []
    for batch in batches:
        assert isinstance(batch, list) and 1 <= len(batch) <= BATCH
        for s in batch:
            i = index_of(s.key)
            assert bytes(s.data) == body(i), s.key
            out.append(i)
    return out


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_arrives_once_per_epoch_with_any_start_method(server, dataset_url, context, workers):
    it = pm.IterableDataset(dataset_url, shuffle="global", seed=17, glob="**/*.jpg", **server.store())
    kw = {"multiprocessing_context": context} if workers else {}
    loader = pm.DataLoader(it, batch_size=BATCH, num_workers=workers, **kw)
    epochs = []
    for epoch in range(2):
        it.set_epoch(epoch)
        got = keys_and_check(loader)
        assert sorted(got) == list(range(N_SAMPLES))
        epochs.append(got)
    assert epochs[0] != epochs[1], "a new permutation each epoch"


def test_the_delivered_order_does_not_depend_on_num_workers(server, dataset_url):
    orders = []
    for workers in (0, 1, 3):
        it = pm.IterableDataset(dataset_url, shuffle="block", block_size=10, seed=5, glob="**/*.jpg", **server.store())
        loader = pm.DataLoader(it, batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0)
        it.set_epoch(3)
        orders.append(keys_and_check(loader))
    assert orders[0] == orders[1] == orders[2]


def test_persistent_workers_see_set_epoch(server, dataset_url):
    it = pm.IterableDataset(dataset_url, shuffle="global", seed=1, glob="**/*.jpg", **server.store())
    loader = pm.DataLoader(it, batch_size=BATCH, num_workers=2, persistent_workers=True)
    reference = pm.DataLoader(
        pm.IterableDataset(dataset_url, shuffle="global", seed=1, glob="**/*.jpg", **server.store()),
        batch_size=BATCH,
    )
    for epoch in range(3):
        it.set_epoch(epoch)
        reference.dataset.set_epoch(epoch)
        assert keys_and_check(loader) == keys_and_check(reference)


def test_a_parent_that_used_the_dataset_before_forking_workers(server, dataset_url):
    it = pm.IterableDataset(dataset_url, shuffle="none", glob="**/*.jpg", batch_size=BATCH, **server.store())
    first = next(iter(it))  # the parent reads: a runtime and connections exist before fork
    assert bytes(first.data) == body(index_of(first.key))
    assert len(it.dataset[0].data) > 0
    loader = pm.DataLoader(it, batch_size=BATCH, num_workers=2, multiprocessing_context="fork")
    assert sorted(keys_and_check(loader)) == list(range(N_SAMPLES))
    # And the parent still works after its children are gone.
    assert bytes(it.dataset[1].data) == body(index_of(it.dataset[1].key))


RANK_SCRIPT = """
import json, sys
import pai_mount as pm
sys.path.insert(0, {tests!r})
from conftest import index_of
it = pm.IterableDataset({url!r}, shuffle="global", seed=9, glob="**/*.jpg", **{store!r})
loader = pm.DataLoader(it, batch_size=4, num_workers={workers})
out = [[index_of(s.key) for s in b] for b in loader]
print(json.dumps(out))
"""


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_equal_batch_counts_and_together_the_whole_dataset(server, dataset_url, world):
    tests = os.path.dirname(__file__)
    per_rank = []
    for rank in range(world):
        code = RANK_SCRIPT.format(tests=tests, url=dataset_url, store=server.store(), workers=rank % 2 * 2)
        out = run_python(code, env={"RANK": str(rank), "WORLD_SIZE": str(world)})
        per_rank.append(json.loads(out.strip().splitlines()[-1]))
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1, f"equal batch counts: {[len(b) for b in per_rank]}"
    flat = [i for batches in per_rank for b in batches for i in b]
    assert set(flat) == set(range(N_SAMPLES))
    padding = len(flat) - N_SAMPLES
    assert 0 <= padding < world, "only the documented padding repeats"


RESUME_SCRIPT = """
import json, sys, torch
import pai_mount as pm
sys.path.insert(0, {tests!r})
from conftest import index_of
it = pm.IterableDataset({url!r}, shuffle="global", seed=23, glob="**/*.jpg", **{store!r})
loader = pm.DataLoader(it, batch_size=4, num_workers={workers}, persistent_workers={workers} > 0)
state = {state!r}
if state is not None:
    loader.load_state_dict(state)
out = []
for epoch in range(2, 4):
    it.set_epoch(epoch)
    for n, batch in enumerate(loader):
        out.append([index_of(s.key) for s in batch])
        if {stop!r} is not None and epoch == 2 and n + 1 == {stop!r}:
            print(json.dumps({{"batches": out, "state": loader.state_dict()}}))
            sys.exit(0)
print(json.dumps({{"batches": out, "state": loader.state_dict()}}))
"""


@pytest.mark.parametrize("workers,resumed_workers", [(2, 2), (2, 0), (0, 3)])
def test_a_state_saved_mid_epoch_resumes_exactly_in_a_new_process(server, dataset_url, workers, resumed_workers):
    tests = os.path.dirname(__file__)

    def run(workers, state, stop):
        code = RESUME_SCRIPT.format(
            tests=tests, url=dataset_url, store=server.store(), workers=workers, state=state, stop=stop
        )
        return json.loads(run_python(code).strip().splitlines()[-1])

    whole = run(workers, None, None)["batches"]
    first = run(workers, None, 7)
    assert first["state"]["consumed"] == 7 * BATCH and first["state"]["epoch"] == 2
    rest = run(resumed_workers, first["state"], None)["batches"]
    assert first["batches"] + rest == whole


STATEFUL_SCRIPT = """
import json, sys, torch
from torchdata.stateful_dataloader import StatefulDataLoader
import pai_mount as pm
sys.path.insert(0, {tests!r})
from conftest import index_of
it = pm.IterableDataset({url!r}, shuffle="global", seed=31, glob="**/*.jpg", batch_size=4, **{store!r})
loader = StatefulDataLoader(it, batch_size=4, num_workers={workers})
state = {state!r}
if state is not None:
    loader.load_state_dict(state)
it.set_epoch(1)
out = []
for n, batch in enumerate(loader):
    out.append([index_of(s.key) for s in batch])
    if {stop!r} is not None and n + 1 == {stop!r}:
        print(json.dumps({{"batches": out, "state": loader.state_dict()}}, default=str))
        sys.exit(0)
print(json.dumps({{"batches": out}}))
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_torchdata_stateful_dataloader_resumes_exactly(server, dataset_url, workers):
    tests = os.path.dirname(__file__)

    def run(state, stop):
        code = STATEFUL_SCRIPT.format(
            tests=tests, url=dataset_url, store=server.store(), workers=workers, state=state, stop=stop
        )
        return json.loads(run_python(code).strip().splitlines()[-1])

    whole = run(None, None)["batches"]
    first = run(None, 5)
    rest = run(first["state"], None)["batches"]
    assert first["batches"] + rest == whole
