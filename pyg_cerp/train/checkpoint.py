r"""The runner's checkpoint: one atomic, checksummed file tied to the data
and the configuration it was written with."""
import os
from typing import Any, Dict, Optional, Union

from pyg_cerp.distributed import DistContext
from pyg_cerp.train.config import CERPConfig
from pyg_cerp.train.data import Interactions, Split
from pyg_cerp.utils.io import (CheckpointError, atomic_save, content_digest,
                               safe_load)

#: The :func:`data_identity` entries that must agree for a resume (the others
#: only describe the data and are reported in the error).
DATA_KEYS = ('num_users', 'num_items', 'num_train', 'num_test',
             'train_sha256', 'test_sha256')


class ResumeError(ValueError):
    r"""A checkpoint of another configuration or of other data."""


def data_identity(data: Union[Interactions, Split],
                  **info: Any) -> Dict[str, Any]:
    r"""What identifies the data in a checkpoint: the counts, a SHA-256 of
    the training and test pairs, and descriptive :obj:`info` (*e.g.* the
    dataset name and raw-file checksums).

    Args:
        data (Interactions or Split): The split (its training and test
            pairs are hashed).
        **info: Extra entries (plain python values).
    """
    return dict(
        num_users=int(data.num_users), num_items=int(data.num_items),
        num_train=int(data.train.size(1)), num_test=int(data.test.size(1)),
        train_sha256=content_digest(data.train.long()),
        test_sha256=content_digest(data.test.long()), **info)


class Checkpoint:
    r"""A state dictionary (plain tensors and python values) at
    :obj:`path`, written atomically with a SHA-256 and read with
    :obj:`weights_only=True`; :meth:`load` refuses a corrupted file, other
    data or another configuration.

    Args:
        path (str, optional): The file (:obj:`None`: nothing is written).
        data (Dict[str, Any]): The :func:`data_identity` of the run.
        config (CERPConfig): The configuration of the run.
        world (pyg_cerp.distributed.DistContext): The ranks.
    """
    def __init__(self, path: Optional[str], data: Dict[str, Any],
                 config: CERPConfig, world: DistContext) -> None:
        self.path, self.data, self.config, self.world = (path, data, config,
                                                         world)

    def save(self, state: Dict[str, Any]) -> None:
        r"""Writes :obj:`state` (no-op without a path; call it on one rank
        only)."""
        if self.path is not None:
            atomic_save(state, self.path, checksum=True)

    def load(self) -> Optional[Dict[str, Any]]:
        r"""The stored state (:obj:`None` if there is no file). On several
        ranks rank 0 reads it and broadcasts it, or its error."""
        if not self.world.is_distributed:
            return self._load()
        payload: Any = None
        if self.world.is_main:
            try:
                payload = ('ok', self._load())
            except Exception as e:  # raised on every rank below
                payload = ('error', type(e).__name__, str(e))
        payload = self.world.broadcast_object(payload)
        if payload[0] == 'error':
            error = {'ResumeError': ResumeError,
                     'CheckpointError': CheckpointError}.get(payload[1],
                                                             RuntimeError)
            raise error(f'Rank 0 could not load the checkpoint: '
                        f'{payload[2]}')
        return payload[1]

    def _load(self) -> Optional[Dict[str, Any]]:
        path = self.path
        if path is None or not os.path.isfile(path):
            return None
        state = safe_load(path, require_checksum=True)
        stored = state.get('data') if isinstance(state, dict) else None
        if not isinstance(stored, dict):
            raise ResumeError(
                f"Cannot resume from '{path}': it does not record the data "
                f"it was trained on (written by an older pyg_cerp). Start "
                f"again without resuming or use another output folder.")
        now = self.data
        if any(stored.get(k) != now.get(k) for k in DATA_KEYS):
            diff = {k: (stored.get(k), now.get(k))
                    for k in sorted(set(stored) | set(now))
                    if stored.get(k) != now.get(k)}
            raise ResumeError(
                f"Cannot resume from '{path}': it was trained on other data "
                f"(differences as (checkpoint, now): {diff}). Resume with "
                f"the same dataset and subset, or use another output "
                f"folder.")
        # Keys added to the config later take their defaults:
        old = CERPConfig.from_dict(state.get('config', {})).to_dict()
        new = self.config.to_dict()
        if old != new:
            diff = {k: (old.get(k), new[k]) for k in new
                    if old.get(k) != new[k]}
            raise ResumeError(
                f"Cannot resume from '{path}': it was written with another "
                f"configuration (differences as (checkpoint, now): {diff})")
        return state

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.path!r})'
