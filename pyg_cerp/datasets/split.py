r"""The LightGCN text format: every line of :obj:`train.txt`,
:obj:`test.txt` (or :obj:`valid.txt`) reads ``user_id item_id item_id ...``
(whitespace separated, integer ids from 0).  Parsing with errors that name
the file and line, checksums, the :class:`~torch_geometric.data.HeteroData`
of a split in the style of :class:`torch_geometric.datasets.AmazonBook`, and
seeded per-user hold-out splits.
"""
import hashlib
import os
import os.path as osp
import re
import warnings
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import coalesce, sort_edge_index

from pyg_cerp.metrics import isin_sorted

#: Edge type of the interactions (train pairs in :obj:`edge_index`, test
#: pairs in :obj:`edge_label_index`).
EDGE_TYPE = ('user', 'rates', 'item')
#: Reverse edge type, holding the flipped training pairs only.
REV_EDGE_TYPE = ('item', 'rated_by', 'user')
#: Ids must be below this (they index :obj:`torch.int32` adjacencies).
MAX_IDS = 2**31 - 1

#: Expected hashes per raw file name (see :func:`verify_file`).
Checksums = Mapping[str, Mapping[str, str]]


class ChecksumError(ValueError):
    r"""Raised when a raw file does not match its expected hash."""


def file_hashes(path: str) -> Dict[str, str]:
    r"""Returns the :obj:`'sha256'` and :obj:`'git_blob'` hashes of a file;
    the git blob id is :math:`\textrm{sha1}(\texttt{b"blob <size>\0"} \|
    \textrm{content})`, what :obj:`git hash-object` prints.

    Args:
        path (str): The file.
    """
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(b'blob %d\0' % os.path.getsize(path))
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            sha256.update(chunk)
            blob.update(chunk)
    return {'sha256': sha256.hexdigest(), 'git_blob': blob.hexdigest()}


def verify_file(path: str, expected: Mapping[str, str],
                name: Optional[str] = None,
                actual: Optional[Mapping[str, str]] = None) -> None:
    r"""Raises a :class:`ChecksumError` if a file differs from any of its
    expected hashes.

    Args:
        path (str): The file.
        expected (Mapping[str, str]): Hashes with keys :obj:`'sha256'` and/or
            :obj:`'git_blob'` (other keys raise a :class:`ValueError`).
        name (str, optional): The name in errors. (default: :obj:`path`)
        actual (Mapping[str, str], optional): The :func:`file_hashes` of the
            file, if already computed. (default: :obj:`None`)
    """
    unknown = set(expected) - {'sha256', 'git_blob'}
    if unknown:
        raise ValueError(f"Unknown checksum kind(s) {sorted(unknown)} for "
                         f"'{name or path}' (use 'sha256' or 'git_blob')")
    if not expected:
        return
    actual = file_hashes(path) if actual is None else actual
    for kind, value in expected.items():
        if actual[kind] != value.lower():
            raise ChecksumError(
                f"Checksum mismatch for '{name or path}': expected {kind} "
                f"{value.lower()}, got {actual[kind]}")


def verify_files(folder: str, checksums: Checksums,
                 hashes: Optional[Mapping[str, Mapping[str, str]]] = None
                 ) -> None:
    r"""Checks the files of :obj:`folder` named in :obj:`checksums` (with
    their :func:`file_hashes` in :obj:`hashes` if computed); a mismatch
    says how to skip the check."""
    for fname, expected in checksums.items():
        try:
            verify_file(osp.join(folder, fname), expected,
                        actual=(hashes or {}).get(fname))
        except ChecksumError as e:
            raise ChecksumError(f'{e}. Pass verify_checksums=False to use '
                                f'the file anyway.') from None


def _bad_token_error(path: str, raw: bytes, pos: int) -> ValueError:
    # The error for the invalid byte at `pos` (slow path, once).
    line = raw.count(b'\n', 0, pos) + 1
    lo = max(raw.rfind(b' ', 0, pos), raw.rfind(b'\t', 0, pos),
             raw.rfind(b'\n', 0, pos)) + 1
    m = re.match(rb'[^\s]*', raw[lo:])
    tok = m.group(0).decode('utf-8', 'replace') if m else ''
    if re.fullmatch(r'-[0-9]+', tok):
        return ValueError(f"'{path}', line {line}: negative id {tok}")
    return ValueError(f"'{path}', line {line}: token {tok!r} is not a "
                      f"non-negative integer id")


def read_lightgcn_file(path: str) -> Tuple[Tensor, Tensor]:
    r"""Parses one LightGCN interaction file: non-blank lines
    ``user item item ...`` (spaces or tabs; LF, CRLF or CR line endings; a
    user without items is allowed).  The bytes are parsed vectorised (no
    Python work per token: a fraction of a second for Gowalla's 810k pairs).

    Args:
        path (str): The file.

    Returns:
        The :obj:`[2, num_pairs]` (user, item) pairs in file order
        (duplicates kept) and the user ids of all non-blank lines.

    Raises:
        ValueError: On an empty file, a non-integer token, a negative id or
            an id of :obj:`2**31 - 1` or more, naming the file and line.
    """
    with open(path, 'rb') as f:
        raw = f.read()
    if b'\r' in raw:  # Read CR-only (old Mac) endings as universal newlines.
        raw = raw.replace(b'\r\n', b'\n').replace(b'\r', b'\n')
    buf = np.frombuffer(raw, dtype=np.uint8)
    is_digit = (buf >= ord('0')) & (buf <= ord('9'))
    is_space = (buf == ord(' ')) | (buf == ord('\n')) | (buf == ord('\t'))
    bad = np.flatnonzero(~(is_digit | is_space))
    if len(bad) > 0:
        raise _bad_token_error(path, raw, int(bad[0]))

    # Token boundaries: a digit run is one token, [start, end).
    padded = np.concatenate([[False], is_digit, [False]])
    change = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = change[0::2], change[1::2]
    if len(starts) == 0:
        raise ValueError(f"'{path}' is empty (no 'user item ...' lines)")
    lengths = ends - starts
    if lengths.max() > 18:
        i = int(np.argmax(lengths))
        line = raw.count(b'\n', 0, int(starts[i])) + 1
        raise ValueError(f"'{path}', line {line}: id "
                         f"{raw[starts[i]:ends[i]].decode()} is too large")

    # Value of every token: sum of digit * 10^(position from token end).
    digit_pos = np.flatnonzero(is_digit)
    token_of_digit = np.repeat(np.arange(len(starts)), lengths)
    power = ends[token_of_digit] - 1 - digit_pos
    contrib = (buf[digit_pos].astype(np.int64) - ord('0')) * \
        (10**power.astype(np.int64))
    values = np.add.reduceat(contrib, np.cumsum(lengths) - lengths)
    if values.max() >= MAX_IDS:
        i = int(np.argmax(values))
        line = raw.count(b'\n', 0, int(starts[i])) + 1
        raise ValueError(f"'{path}', line {line}: id {int(values[i])} is too "
                         f"large (ids must be below {MAX_IDS} and should be "
                         f"dense, 0..N-1: remap them)")

    # Line of every token, and the first token (user id) of every line.
    token_line = np.concatenate([[0], np.cumsum(buf == ord('\n'))])[starts]
    is_first = np.ones(len(starts), dtype=bool)
    is_first[1:] = token_line[1:] != token_line[:-1]
    users = values[is_first]
    row = users[(np.cumsum(is_first) - 1)[~is_first]]
    edge_index = torch.from_numpy(np.stack([row, values[~is_first]]))
    return edge_index, torch.from_numpy(users)


def _line_of(path: str, value: int, as_user: bool) -> int:
    # For error messages only: the first 1-based line holding `value` as
    # its user id (`as_user`) or as an item id.
    with open(path, newline=None) as f:
        for i, line in enumerate(f):
            toks = [int(t) for t in line.split()]
            if value in (toks[:1] if as_user else toks[1:]):
                return i + 1
    return -1  # pragma: no cover


def _check_dense(path: str, kind: str, ids: Tensor, num: int) -> None:
    # An id space far larger than the ids in use (e.g. one id of 1e9 among a
    # thousand) would silently allocate a huge embedding table.
    distinct = int(torch.unique(ids).numel())
    if num > 1_000_000 and num > 10 * distinct:
        line = _line_of(path, num - 1, kind == 'user')
        raise ValueError(
            f"'{path}', line {line}: {kind} id {num - 1} makes {num} {kind}s, "
            f"but only {distinct} distinct {kind} ids occur: LightGCN-format "
            f"ids must be dense (0..N-1). Remap them.")


def _interaction_data(num_users: int, num_items: int, train: Tensor,
                      test: Tensor) -> HeteroData:
    data = HeteroData()
    data['user'].num_nodes = num_users
    data['item'].num_nodes = num_items
    data[EDGE_TYPE].edge_index = train
    data[EDGE_TYPE].edge_label_index = test
    data[REV_EDGE_TYPE].edge_index = train.flip([0])
    return data


def load_lightgcn_split(train_path: str, test_path: str) -> HeteroData:
    r"""Reads a LightGCN train/test pair into a
    :class:`~torch_geometric.data.HeteroData` object:

    * :obj:`data['user'].num_nodes` is one more than the largest user id of
      :obj:`train.txt` (lines without items included); an unknown test user
      is an error;
    * :obj:`data['item'].num_nodes` is one more than the largest item id of
      either file (cold test items exist as nodes);
    * :obj:`data['user', 'rates', 'item']` holds the training pairs in
      :obj:`edge_index` and the test pairs in :obj:`edge_label_index`, both
      sorted by (user, item), duplicates within a file removed (with a
      warning); :obj:`data['item', 'rated_by', 'user'].edge_index` holds the
      flipped training pairs.

    Pairs in both files are kept, with a warning.  Users without test items
    have no test edges (the metrics skip them).

    Args:
        train_path (str): Path to :obj:`train.txt`.
        test_path (str): Path to :obj:`test.txt`.
    """
    train, train_users = read_lightgcn_file(train_path)
    test, test_users = read_lightgcn_file(test_path)
    if train.size(1) == 0:
        raise ValueError(f"'{train_path}' has no (user, item) pairs")
    num_users = int(train_users.max()) + 1
    if int(test_users.max()) >= num_users:
        bad = int(test_users[test_users >= num_users][0])
        raise ValueError(
            f"'{test_path}', line {_line_of(test_path, bad, True)}: test "
            f"user {bad} is unknown to the training file '{train_path}' "
            f"(train users are 0..{num_users - 1}). If the training file is "
            f"truncated or incomplete, restore it; otherwise remove the user "
            f"from the test file.")
    num_train_items = int(train[1].max()) + 1
    num_items = num_train_items if test.numel() == 0 else \
        max(num_train_items, int(test[1].max()) + 1)
    _check_dense(train_path, 'user', train_users, num_users)
    _check_dense(test_path if num_train_items < num_items else train_path,
                 'item', torch.cat([train[1], test[1]]), num_items)
    for path in (train_path, test_path):
        with open(path, 'rb') as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) not in (b'\n', b'\r'):
                warnings.warn(
                    f"'{path}' does not end with a line break: it may be "
                    f"truncated (its last line is read as it is). Check the "
                    f"file against its source.", stacklevel=2)

    out = []
    for path, ei in ((train_path, train), (test_path, test)):
        coalesced = coalesce(ei, num_nodes=max(num_users, num_items))
        if coalesced.size(1) != ei.size(1):
            warnings.warn(f"'{path}': removed {ei.size(1) - coalesced.size(1)}"
                          f" duplicate (user, item) pair(s)", stacklevel=2)
        out.append(coalesced)
    data = _interaction_data(num_users, num_items, *out)
    overlap = count_train_test_overlap(data)
    if overlap > 0:
        warnings.warn(f"{overlap} (user, item) pair(s) of '{test_path}' "
                      f"also appear in '{train_path}'", stacklevel=2)
    return data


def count_train_test_overlap(data: HeteroData) -> int:
    r"""The number of test pairs that are also training pairs of a
    :class:`LightGCNDataset` data object.

    Args:
        data (HeteroData): The data object.
    """
    store, num_items = data[EDGE_TYPE], data['item'].num_nodes
    train, test = store.edge_index, store.edge_label_index
    key_train = (train[0] * num_items + train[1]).sort()[0]
    return int(isin_sorted(test[0] * num_items + test[1], key_train).sum())


def user_holdout_split(edge_index: Tensor, num_users: int,
                       ratio: float = 0.1,
                       seed: int = 0) -> Tuple[Tensor, Tensor]:
    r"""Splits (user, item) pairs into training and validation pairs: for
    every user with :math:`n_u \geq 2` pairs, a seeded random
    :math:`\max(1, \lfloor \textrm{ratio} \cdot n_u \rceil)` of them (at most
    :math:`n_u - 1`) are held out, so every user keeps a training pair.

    Args:
        edge_index (torch.Tensor): The pairs :obj:`[2, E]` (local ids).
        num_users (int): :math:`N_U`.
        ratio (float, optional): The held-out fraction per user, in
            :math:`(0, 1)`. (default: :obj:`0.1`)
        seed (int, optional): The seed. (default: :obj:`0`)

    Returns:
        The training and the validation pairs, both sorted by (user, item).
    """
    if not 0. < float(ratio) < 1.:
        raise ValueError(f"'ratio' must be in (0, 1) (got {ratio})")
    gen = torch.Generator().manual_seed(int(seed))
    user = edge_index[0]
    # Random order within each user: sort by (user, random key).
    key = torch.rand(user.numel(), generator=gen, dtype=torch.double)
    order = torch.argsort(user.double() * 2. + key)
    counts = torch.bincount(user, minlength=num_users)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(user.numel()) - start[user[order]]
    held = (counts.double() * ratio).round().clamp_min(1).long()
    held = torch.minimum(held, counts - 1)
    valid = torch.zeros(user.numel(), dtype=torch.bool)
    valid[order] = rank < held[user[order]]

    return (sort_edge_index(edge_index[:, ~valid]),
            sort_edge_index(edge_index[:, valid]))


