"""PyTorch classes: an iterable dataset that shards itself over ranks and workers, and a
DataLoader that counts what it handed to the training loop, so it resumes exactly.

Imported only when ``pai_mount.IterableDataset`` or ``pai_mount.DataLoader`` is first used.
"""

import multiprocessing
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.utils.data

from ._dataset import Dataset, Sample, reject_unknown, store_options
from ._torch_free import parse_bytes

try:  # default_collate keeps a batch of samples as a list (it has no rule for them)
    from torch.utils.data._utils.collate import default_collate_fn_map

    default_collate_fn_map[Sample] = lambda batch, *, collate_fn_map=None: list(batch)
except (ImportError, AttributeError):  # pragma: no cover - older torch
    pass

_STATE_VERSION = 1

# Slots of the control block a DataLoader shares with its workers.
_EPOCH, _BASE, _GENERATION = 0, 1, 2


def _rank_world(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover
        pass
    r = int(os.environ.get("RANK", "0")) if rank is None else rank
    w = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    return r, w


class IterableDataset(torch.utils.data.IterableDataset):
    """Samples under ``url`` for one rank, sharded over the DataLoader's workers.

    The order of an epoch is a pure function of (seed, epoch, dataset size, ranks, workers):
    ``shuffle="global"`` (a fresh permutation each epoch), ``"block"`` (blocks of
    ``block_size`` consecutive samples, such as a shard, in shuffled order) or ``"none"``.
    Ranks come from ``rank``/``world_size``, else ``torch.distributed``, else ``RANK`` and
    ``WORLD_SIZE``. Workers take runs of ``batch_size`` samples in turn, so batches arrive in
    the rank's order whatever ``num_workers`` is. At most ``in_flight`` GETs and
    ``max_bytes`` of fetched samples are ahead of the consumer per worker.
    """

    def __init__(
        self,
        url: str,
        *,
        shuffle: str = "none",
        seed: int = 0,
        block_size: Optional[int] = None,
        drop_last: bool = False,
        batch_size: Optional[int] = None,
        transform: Optional[Callable[[Sample], Any]] = None,
        in_flight: int = 64,
        max_bytes: Any = "256M",
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        glob: Optional[str] = None,
        suffixes: Any = None,
        tar: bool = False,
        **store: Any,
    ) -> None:
        super().__init__()
        store = dict(store)
        opts = store_options(store)
        reject_unknown("IterableDataset", store)
        if shuffle not in ("global", "block", "none"):
            from ._errors import InvalidArgumentError

            raise InvalidArgumentError(
                f'unknown shuffle {shuffle!r}; expected "global", "block" or "none"'
            )
        if shuffle == "block" and not block_size:
            from ._errors import InvalidArgumentError

            raise InvalidArgumentError('shuffle="block" needs block_size=N (N > 0)')
        self.dataset = Dataset(url, glob=glob, suffixes=suffixes, tar=tar, **opts)
        self.shuffle, self.seed, self.block_size = shuffle, int(seed), block_size
        self.drop_last = bool(drop_last)
        self.batch_size = batch_size
        self.transform = transform
        self.in_flight, self.max_bytes = int(in_flight), parse_bytes(max_bytes)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        # Rank-level samples already consumed this epoch (a resume point).
        self._base = 0
        # A worker-level resume point (StatefulDataLoader): (epoch, base, position).
        self._resume: Optional[Tuple[int, int, int]] = None
        # The epoch of a state just loaded (``set_epoch`` of that epoch keeps it).
        self._loaded_epoch: Optional[int] = None
        # Shared with DataLoader workers (created by pai_mount.DataLoader).
        self._control: Any = None
        # This copy's place (set while iterating, for state_dict()).
        self._pos: Optional[Tuple[int, int, int]] = None

    # -- configuration -----------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Starts ``epoch`` from its beginning at the next iteration, unless a loaded state is
        in that same epoch: then it continues where the state stopped (so a training loop
        that calls ``set_epoch`` at every epoch resumes without special cases)."""
        epoch = int(epoch)
        if self._loaded_epoch is not None and self._loaded_epoch == epoch:
            self._loaded_epoch = None
            return
        self._loaded_epoch = None
        self.epoch = epoch
        self._base = 0
        self._resume = None

    def rank_world(self) -> Tuple[int, int]:
        return _rank_world(self.rank, self.world_size)

    def __len__(self) -> int:
        """Samples this rank reads per epoch (with padding, see docs/PYTHON.md)."""
        _, world = self.rank_world()
        return self.dataset._ds().per_rank(world, self.drop_last)

    def _share_control(self, context: Any) -> None:
        if self._control is None:
            ctx = context or multiprocessing.get_context()
            if isinstance(ctx, str):
                ctx = multiprocessing.get_context(ctx)
            self._control = ctx.RawArray("q", 3)
        self._publish()

    def _publish(self) -> None:
        if self._control is not None:
            self._control[_EPOCH] = self.epoch
            self._control[_BASE] = self._base
            self._control[_GENERATION] += 1

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        # The shared block crosses only into DataLoader workers as they start.
        from multiprocessing import context

        if context.get_spawning_popen() is None:
            state["_control"] = None
        return state

    # -- iteration ---------------------------------------------------------------------

    def _where(self) -> Tuple[int, int]:
        if self._control is not None:
            return int(self._control[_EPOCH]), int(self._control[_BASE])
        return self.epoch, self._base

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        rank, world = self.rank_world()
        epoch, base = self._where()
        position = 0
        if self._resume is not None and self._resume[0] == epoch:
            epoch, base, position = self._resume
        self._resume = None
        native = self.dataset._ds().loader(
            world_size=world,
            rank=rank,
            workers=workers,
            worker=worker,
            seed=self.seed,
            shuffle=self.shuffle,
            block_size=self.block_size,
            drop_last=self.drop_last,
            interleave=self.batch_size or 1,
            epoch=epoch,
            base=base,
            position=position,
            in_flight=self.in_flight,
            max_bytes=self.max_bytes,
        )
        self._pos = (epoch, base, position)
        transform = self.transform
        try:
            for s in native:
                sample = Sample(s)
                position += 1
                self._pos = (epoch, base, position)
                yield transform(sample) if transform is not None else sample
        finally:
            native.close()

    # -- per-worker state (torchdata's StatefulDataLoader) ------------------------------

    def state_dict(self) -> Dict[str, int]:
        """Where this copy stands: enough for ``load_state_dict`` to continue it exactly."""
        epoch, base, position = self._pos if self._pos is not None else (*self._where(), 0)
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "epoch": epoch,
            "base": base,
            "position": position,
        }

    def load_state_dict(self, state: Dict[str, int]) -> None:
        _check_state(state, self.seed)
        self.epoch = int(state["epoch"])
        self._base = int(state["base"])
        self._resume = (self.epoch, self._base, int(state["position"]))
        self._loaded_epoch = self.epoch


def _check_state(state: Dict[str, Any], seed: int) -> None:
    from ._errors import InvalidArgumentError

    if state.get("version") != _STATE_VERSION:
        raise InvalidArgumentError(
            f"loader state version {state.get('version')!r} is not supported (this build reads {_STATE_VERSION})"
        )
    if int(state["seed"]) != seed:
        raise InvalidArgumentError(
            f"the state was saved with seed {state['seed']}, this dataset has seed {seed}: the order would differ"
        )


class DataLoader(torch.utils.data.DataLoader):
    """A ``torch.utils.data.DataLoader`` that counts, in the main process, the samples it has
    handed to the training loop. ``state_dict()`` is a few integers; ``load_state_dict()``
    continues the epoch exactly, in O(1) and without reading anything twice, with any
    ``num_workers``. The dataset's ``batch_size`` is set to the loader's (they must agree)."""

    def __init__(self, dataset: Any, batch_size: Optional[int] = 1, **kwargs: Any) -> None:
        if isinstance(dataset, IterableDataset):
            b = batch_size or 1
            if dataset.batch_size is None:
                dataset.batch_size = b
            elif dataset.batch_size != b:
                from ._errors import InvalidArgumentError

                raise InvalidArgumentError(
                    f"the dataset's batch_size ({dataset.batch_size}) differs from the DataLoader's ({b}): "
                    "workers deal batches of the dataset's size, so they must agree for an exact resume"
                )
            if kwargs.get("num_workers", 0) > 0:
                dataset._share_control(kwargs.get("multiprocessing_context"))
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self._consumed = 0
        self._epoch_seen: Optional[int] = None

    def __iter__(self) -> Iterator[Any]:
        ds = self.dataset
        if not isinstance(ds, IterableDataset):
            yield from super().__iter__()
            return
        ds._publish()
        epoch, base = ds.epoch, ds._base
        per_rank = len(ds)
        step = self.batch_size or 1
        self._epoch_seen, self._consumed = epoch, base
        delivered = 0
        for batch in super().__iter__():
            delivered += 1
            self._consumed = min(base + delivered * step, per_rank)
            yield batch
        self._consumed = per_rank

    def state_dict(self) -> Dict[str, int]:
        ds = self.dataset
        epoch = self._epoch_seen if self._epoch_seen is not None else ds.epoch
        consumed = self._consumed if self._epoch_seen is not None else ds._base
        rank, world = ds.rank_world()
        return {
            "version": _STATE_VERSION,
            "seed": ds.seed,
            "epoch": epoch,
            "consumed": consumed,
            "batch_size": self.batch_size or 1,
            "rank": rank,
            "world_size": world,
        }

    def load_state_dict(self, state: Dict[str, int]) -> None:
        from ._errors import InvalidArgumentError

        ds = self.dataset
        _check_state(state, ds.seed)
        if int(state["batch_size"]) != (self.batch_size or 1):
            raise InvalidArgumentError(
                f"the state was saved with batch_size {state['batch_size']}, this loader has {self.batch_size}"
            )
        rank, world = ds.rank_world()
        if int(state["world_size"]) != world:
            raise InvalidArgumentError(
                f"the state was saved with {state['world_size']} ranks, this run has {world}"
            )
        ds.epoch, ds._base = int(state["epoch"]), int(state["consumed"])
        ds._resume = None
        ds._loaded_epoch = ds.epoch
        self._epoch_seen, self._consumed = None, ds._base
