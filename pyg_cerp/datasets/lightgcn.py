r"""Interaction datasets in the plain-text format of LightGCN.

Every line of :obj:`train.txt` and :obj:`test.txt` reads
``user_id item_id item_id ...`` (whitespace separated, integer ids starting
at 0).  The files are turned into a :class:`~torch_geometric.data.HeteroData`
object in the style of :class:`torch_geometric.datasets.AmazonBook`.
"""
import hashlib
import json
import os
import os.path as osp
import re
import shutil
import tempfile
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset, download_url
from torch_geometric.utils import coalesce

#: Edge type of the user-item interactions (train edges in ``edge_index``,
#: test edges in ``edge_label_index``).
EDGE_TYPE = ('user', 'rates', 'item')
#: Reverse edge type, holding the flipped training edges only.
REV_EDGE_TYPE = ('item', 'rated_by', 'user')

#: The largest id space accepted (ids must fit in :obj:`torch.int32` for
#: the adjacency and the embedding tables).
MAX_IDS = 2**31 - 1

Checksums = Mapping[str, Mapping[str, str]]

#: Known hashes of the exact Gowalla split used by LightGCN and CERP.
GOWALLA_CHECKSUMS: Dict[str, Dict[str, str]] = {
    'train.txt': {
        'sha256': ('7244696fdeb23911319cf7b689f2e15a'
                   '3c4c92549c873a5677b44e3f13cc3e62'),
        'git_blob': 'a27782bd7a1d4d0744148dc0460ea94da74763f2',
    },
    'test.txt': {
        'sha256': ('099a2a73924e4b754dc6efd730d764f4'
                   '92321b53c38eb93298850c83acf57be3'),
        'git_blob': '9ed5af4b5d21511f33740b4e22e3852f45671800',
    },
}

#: Known git blob ids of the CERP Yelp2020 split (no sha256 is published).
YELP2020_CHECKSUMS: Dict[str, Dict[str, str]] = {
    'train.txt': {'git_blob': '392633dd8c6e99d4b64eb0da0d0f5efacf66e95a'},
    'test.txt': {'git_blob': '2627c3b7c189a6e59bb4e7f538ad3dd6cbf454c8'},
}

#: Known hashes of the *smaller, different* Yelp split of kuandeng/LightGCN
#: pull request #16.  It is **not** the Yelp2020 split of the CERP paper.
YELP2020_PR16_CHECKSUMS: Dict[str, Dict[str, str]] = {
    'train.txt': {
        'sha256': ('b2ce5cafdbaaff061e626f5ece782b0b'
                   'ca842784c2f2a3c4f6867990c4aad633'),
        'git_blob': 'b70b451721854f22e10de0e19dd347e48ebd125e',
    },
    'test.txt': {
        'sha256': ('c3a7807e84dd0a6b1244c6af1fad8d7a'
                   'ff3a535aa385bc4369d7e508515e97b8'),
        'git_blob': 'b7dd30d1dc4752d39b1eee92836fabd7daf86154',
    },
}

_CERP_RAW = ('https://raw.githubusercontent.com/xurong-liang/CERP/main/'
             'CERP-LightGCN/data')
_LIGHTGCN_RAW = ('https://raw.githubusercontent.com/kuandeng/LightGCN/master/'
                 'Data')


class ChecksumError(ValueError):
    r"""Raised when a raw file does not match its expected hash."""


def file_hashes(path: str) -> Dict[str, str]:
    r"""Returns the :obj:`'sha256'` and :obj:`'git_blob'` hashes of a file.

    The git blob id is :math:`\textrm{sha1}(\texttt{b"blob <size>\0"} \|
    \textrm{content})`, *i.e.* what :obj:`git hash-object` prints.

    Args:
        path (str): The file to hash.
    """
    size = os.path.getsize(path)
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(b'blob %d\0' % size)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            sha256.update(chunk)
            blob.update(chunk)
    return {'sha256': sha256.hexdigest(), 'git_blob': blob.hexdigest()}


def verify_file(path: str, expected: Mapping[str, str],
                name: Optional[str] = None,
                actual: Optional[Mapping[str, str]] = None) -> None:
    r"""Checks a file against expected hashes.

    Args:
        path (str): The file to check.
        expected (Mapping[str, str]): Expected hashes, keys :obj:`'sha256'`
            and/or :obj:`'git_blob'`.  Unknown keys raise a
            :class:`ValueError`.
        name (str, optional): The name to report in errors (defaults to
            :obj:`path`).
        actual (Mapping[str, str], optional): The file's hashes if already
            computed by :func:`file_hashes`. (default: :obj:`None`)

    Raises:
        ChecksumError: If any given hash differs.
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


def _bad_token_error(path: str, raw: bytes, pos: int) -> ValueError:
    # Builds the error for the invalid byte at `pos` (slow path, once).
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
    r"""Parses one LightGCN interaction file.

    Each non-blank line is ``user item item ...`` (tokens separated by
    spaces or tabs).  A line with a user id and no items is allowed (a user
    without interactions in this file).  Blank lines are ignored.

    The file is parsed in a vectorised way on its bytes (no Python work per
    token), which takes a fraction of a second for the 810k Gowalla training
    pairs.

    Args:
        path (str): The file to read.

    Returns:
        A tuple of the :obj:`[2, num_pairs]` tensor of (user, item) pairs in
        file order (duplicates are *not* removed here) and the tensor of the
        user ids of all non-blank lines (including users without items).

    Line endings may be LF, CRLF or CR only.

    Raises:
        ValueError: On an empty file, a non-integer token, a negative id or
            an id of :obj:`2**31 - 1` or more, naming the file and the
            (1-based) line number.
    """
    with open(path, 'rb') as f:
        raw = f.read()
    if b'\r' in raw:
        # CR-only (old Mac) line endings would otherwise join every line
        # into one user; read them like Python's universal newlines do.
        raw = raw.replace(b'\r\n', b'\n').replace(b'\r', b'\n')
    buf = np.frombuffer(raw, dtype=np.uint8)
    is_digit = (buf >= ord('0')) & (buf <= ord('9'))
    is_space = ((buf == ord(' ')) | (buf == ord('\n')) | (buf == ord('\t'))
                | (buf == ord('\r')))
    bad = np.flatnonzero(~(is_digit | is_space))
    if len(bad) > 0:
        raise _bad_token_error(path, raw, int(bad[0]))

    # Token boundaries: a digit run is one token.
    padded = np.concatenate([[False], is_digit, [False]])
    change = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = change[0::2], change[1::2]  # [start, end) per token
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
    first_digit = np.cumsum(lengths) - lengths  # offsets into `contrib`
    values = np.add.reduceat(contrib, first_digit)
    if values.max() >= MAX_IDS:
        i = int(np.argmax(values))
        line = raw.count(b'\n', 0, int(starts[i])) + 1
        raise ValueError(f"'{path}', line {line}: id {int(values[i])} is too "
                         f"large (ids must be below {MAX_IDS} and should be "
                         f"dense, 0..N-1: remap them)")

    # Line of every token, and the first token (user id) of every line.
    newline_before = np.cumsum(buf == ord('\n'))
    token_line = np.concatenate([[0], newline_before])[starts]
    is_first = np.ones(len(starts), dtype=bool)
    is_first[1:] = token_line[1:] != token_line[:-1]
    users = values[is_first]
    line_of_token = np.cumsum(is_first) - 1
    row = users[line_of_token[~is_first]]
    col = values[~is_first]
    edge_index = torch.from_numpy(np.stack([row, col]))
    return edge_index, torch.from_numpy(users)


def _count_in_sorted(query: Tensor, sorted_keys: Tensor) -> int:
    # Number of entries of `query` found in the sorted 1-D `sorted_keys`
    # (`torch.searchsorted` is ~5x faster than `torch.isin` here).
    if sorted_keys.numel() == 0 or query.numel() == 0:
        return 0
    pos = torch.searchsorted(sorted_keys, query)
    pos.clamp_(max=sorted_keys.numel() - 1)
    return int((sorted_keys[pos] == query).sum())


def _check_dense(path: str, kind: str, ids: Tensor, num: int) -> None:
    # An id space far larger than the ids in use (e.g. one id of 1e9 among a
    # thousand) would silently allocate a huge embedding table.
    distinct = int(torch.unique(ids).numel())
    if num > 1_000_000 and num > 10 * distinct:
        line = _first_line_with(path, num - 1, kind == 'user')
        raise ValueError(
            f"'{path}', line {line}: {kind} id {num - 1} makes {num} {kind}s, "
            f"but only {distinct} distinct {kind} ids occur: LightGCN-format "
            f"ids must be dense (0..N-1). Remap them.")


def _first_line_with(path: str, value: int, first_only: bool) -> int:
    # Used for error messages only: the 1-based line holding `value` (as its
    # first token if `first_only`).
    with open(path, newline=None) as f:
        for i, line in enumerate(f):
            toks = line.split()
            if (toks[:1] if first_only else toks[1:]).count(str(value)):
                return i + 1
    return -1  # pragma: no cover


def _first_line_of_user(path: str, user: int) -> int:
    # Used for error messages only: the 1-based line where a user id starts.
    with open(path) as f:
        for i, line in enumerate(f):
            toks = line.split()
            if toks and int(toks[0]) == user:
                return i + 1
    return -1  # pragma: no cover


def load_lightgcn_split(
    train_path: str,
    test_path: str,
) -> HeteroData:
    r"""Reads a LightGCN train/test pair into a
    :class:`~torch_geometric.data.HeteroData` object.

    * :obj:`data['user'].num_nodes` is :math:`\max(\textrm{train user id}) +
      1` (over all lines of :obj:`train.txt`, also those without items); a
      test user id outside this range is an error.
    * :obj:`data['item'].num_nodes` is :math:`\max(\textrm{item id}) + 1`
      over train *and* test (so cold test items exist as nodes).
    * :obj:`data['user', 'rates', 'item'].edge_index` holds the training
      pairs, :obj:`edge_label_index` the test pairs, both sorted by (user,
      item) with duplicate pairs within a file removed (a warning says how
      many).
    * :obj:`data['item', 'rated_by', 'user'].edge_index` holds the flipped
      training pairs.

    Pairs present in both train and test are kept, but a warning reports
    their count.  Users without test items simply have no test edges; the
    metrics of :mod:`pyg_cerp.metrics` skip them.

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
        line = _first_line_of_user(test_path, bad)
        raise ValueError(
            f"'{test_path}', line {line}: test user {bad} is unknown to the "
            f"training file '{train_path}' (train users are "
            f"0..{num_users - 1}). If the training file is truncated or "
            f"incomplete, restore it; otherwise remove the user from the "
            f"test file.")
    num_items = int(train[1].max()) + 1
    if test.numel() > 0:
        num_items = max(num_items, int(test[1].max()) + 1)
    _check_dense(train_path, 'user', train_users, num_users)
    item_path = train_path
    if test.numel() > 0 and int(test[1].max()) + 1 == num_items and \
            int(train[1].max()) + 1 < num_items:
        item_path = test_path
    _check_dense(item_path, 'item', torch.cat([train[1], test[1]]),
                 num_items)
    for path in (train_path, test_path):
        if os.path.getsize(path) > 0:
            with open(path, 'rb') as f:
                f.seek(-1, os.SEEK_END)
                last = f.read(1)
            if last not in (b'\n', b'\r'):
                warnings.warn(
                    f"'{path}' does not end with a line break: it may be "
                    f"truncated (its last line is read as it is). Check the "
                    f"file against its source.", stacklevel=2)

    n = max(num_users, num_items)
    out = []
    for path, ei in ((train_path, train), (test_path, test)):
        coalesced = coalesce(ei, num_nodes=n)
        if coalesced.size(1) != ei.size(1):
            warnings.warn(f"'{path}': removed {ei.size(1) - coalesced.size(1)}"
                          f" duplicate (user, item) pair(s)", stacklevel=2)
        out.append(coalesced)
    train, test = out

    if test.numel() > 0:
        # Both are sorted by (user, item) after `coalesce`:
        key_train = train[0] * num_items + train[1]
        key_test = test[0] * num_items + test[1]
        overlap = _count_in_sorted(key_test, key_train)
        if overlap > 0:
            warnings.warn(f"{overlap} (user, item) pair(s) of '{test_path}' "
                          f"also appear in '{train_path}'", stacklevel=2)

    data = HeteroData()
    data['user'].num_nodes = num_users
    data['item'].num_nodes = num_items
    data[EDGE_TYPE].edge_index = train
    data[EDGE_TYPE].edge_label_index = test
    data[REV_EDGE_TYPE].edge_index = train.flip([0])
    return data


def count_train_test_overlap(data: HeteroData) -> int:
    r"""Returns the number of (user, item) test pairs that are also training
    pairs of a dataset object returned by :class:`LightGCNDataset`.

    Args:
        data (HeteroData): The data object.
    """
    store = data[EDGE_TYPE]
    num_items = data['item'].num_nodes
    key_train = store.edge_index[0] * num_items + store.edge_index[1]
    test = store.edge_label_index
    key_test = test[0] * num_items + test[1]
    return _count_in_sorted(key_test, key_train.sort()[0])


def _writable(path: str) -> bool:
    # Walks up to the first existing ancestor.  Checks the permission bits as
    # well as `os.access`, so that a read-only data folder is not written to
    # even when running as root (which bypasses `os.access`).
    path = osp.abspath(path)
    while not osp.exists(path):
        parent = osp.dirname(path)
        if parent == path:  # pragma: no cover
            return False
        path = parent
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)


class LightGCNDataset(InMemoryDataset):
    r"""A user-item interaction dataset in the text format of LightGCN
    (`"LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation" <https://arxiv.org/abs/2002.02126>`_), as used by CERP
    (`"Learning Compact Compositional Embeddings via Regularized Pruning for
    Recommendation" <https://arxiv.org/abs/2309.03518>`_).

    Raw files are :obj:`{root}/{name}/raw/train.txt` and :obj:`test.txt`,
    lines ``user item item ...``.  The single graph is a
    :class:`~torch_geometric.data.HeteroData` object with node types
    :obj:`'user'` and :obj:`'item'` and

    * :obj:`data['user', 'rates', 'item'].edge_index`: training pairs,
    * :obj:`data['user', 'rates', 'item'].edge_label_index`: test pairs,
    * :obj:`data['item', 'rated_by', 'user'].edge_index`: flipped training
      pairs,

    see :func:`load_lightgcn_split` for the exact semantics (duplicates,
    overlaps, cold items).

    Raw files are verified against :obj:`checksums` (sha256 and/or git blob
    id) when downloaded and, once, when the processed file is built.  When
    all raw files are present no network access happens.  Downloads go to a
    temporary file that is only renamed into :obj:`raw_dir` after its
    checksum matched.

    Args:
        root (str): Root directory; raw files live in
            :obj:`{root}/{name}/raw`.
        name (str): The name of the dataset (its folder below :obj:`root`).
        urls (Mapping[str, Sequence[str]], optional): For every raw file name,
            candidate URLs tried in order.  If :obj:`None`, missing raw files
            cannot be downloaded. (default: :obj:`None`)
        checksums (Mapping[str, Mapping[str, str]], optional): For every raw
            file name, expected hashes with keys :obj:`'sha256'` and/or
            :obj:`'git_blob'`. (default: :obj:`None`)
        transform (callable, optional): A function/transform applied to the
            data object on every access. (default: :obj:`None`)
        pre_transform (callable, optional): A function/transform applied to
            the data object before being saved to disk.
            (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset.
            (default: :obj:`False`)
        processed_dir (str, optional): Where to store the processed file.  If
            :obj:`None`, uses :obj:`{raw_dir}/../processed`, unless that
            folder is read-only, in which case a per-dataset folder below
            :obj:`$PYG_CERP_CACHE` (default :obj:`~/.cache/pyg_cerp`) is used.
            (default: :obj:`None`)
        verify_checksums (bool, optional): If :obj:`False`, existing raw files
            are not checked against :obj:`checksums` (downloads always are).
            (default: :obj:`True`)
        log (bool, optional): Whether to print download/processing messages.
            (default: :obj:`True`)
    """
    raw_file_names_ = ['train.txt', 'test.txt']
    #: The processed-folder file holding the SHA-256 of the raw files that
    #: the processed file was built from.
    raw_hashes_file = 'raw_hashes.json'

    def __init__(
        self,
        root: str,
        name: str,
        urls: Optional[Mapping[str, Sequence[str]]] = None,
        checksums: Optional[Checksums] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
        processed_dir: Optional[str] = None,
        verify_checksums: bool = True,
        log: bool = True,
    ) -> None:
        self.name = name
        self.urls = {k: list(v) for k, v in (urls or {}).items()}
        self.checksums = {k: dict(v) for k, v in (checksums or {}).items()}
        for fname in list(self.urls) + list(self.checksums):
            if fname not in self.raw_file_names_:
                raise ValueError(f"Unknown raw file '{fname}' in 'urls' or "
                                 f"'checksums' (expected one of "
                                 f"{self.raw_file_names_})")
        self.verify_checksums = verify_checksums
        self._processed_dir = processed_dir
        self._adjacency: Optional[Tensor] = None
        #: The :func:`file_hashes` of the raw files (computed on every load).
        self.raw_hashes: Dict[str, Dict[str, str]] = {}
        super().__init__(root, transform, pre_transform,
                         force_reload=force_reload, log=log)
        self.load(self.processed_paths[0], data_cls=HeteroData)

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, self.name, 'raw')

    @property
    def processed_dir(self) -> str:
        if self._processed_dir is not None:
            return self._processed_dir
        default = osp.join(osp.dirname(self.raw_dir), 'processed')
        if _writable(default):
            return default
        cache = os.environ.get('PYG_CERP_CACHE',
                               osp.join('~', '.cache', 'pyg_cerp'))
        key = hashlib.sha1(osp.abspath(self.raw_dir).encode()).hexdigest()
        return osp.join(osp.expanduser(cache), f'{self.name}-{key[:10]}',
                        'processed')

    @property
    def raw_file_names(self) -> List[str]:
        return list(self.raw_file_names_)

    @property
    def processed_file_names(self) -> str:
        return 'data.pt'

    def _missing_message(self, missing: List[str]) -> str:
        files = ', '.join(f"'{osp.join(self.raw_dir, f)}'" for f in missing)
        return (f"{self.__class__.__name__} ({self.name}): missing raw "
                f"file(s) {files}. Put 'train.txt' and 'test.txt' (LightGCN "
                f"format) into '{self.raw_dir}'.")

    def download(self) -> None:
        missing = [f for f in self.raw_file_names
                   if not osp.exists(osp.join(self.raw_dir, f))]
        no_url = [f for f in missing if not self.urls.get(f)]
        if no_url:
            raise FileNotFoundError(
                self._missing_message(missing) +
                f" No download URL is known for {no_url}.")
        os.makedirs(self.raw_dir, exist_ok=True)
        for fname in missing:
            self._download_one(fname)

    def _download_one(self, fname: str) -> None:
        dst = osp.join(self.raw_dir, fname)
        errors: List[str] = []
        mismatches: List[str] = []
        for url in self.urls[fname]:
            tmp_dir = tempfile.mkdtemp(prefix=f'.{fname}.', dir=self.raw_dir)
            try:
                path = download_url(url, tmp_dir, log=self.log,
                                    filename=fname)
                verify_file(path, self.checksums.get(fname, {}),
                            name=f'{fname} from {url}')
                os.replace(path, dst)  # atomic within the same folder
                return
            except ChecksumError as e:
                mismatches.append(str(e))
            except Exception as e:  # network errors of any kind
                errors.append(f'{url}: {type(e).__name__}: {e}')
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
        if mismatches:
            raise ChecksumError('; '.join(mismatches) +
                                '. No file was written to '
                                f"'{self.raw_dir}'.")
        raise RuntimeError(
            self._missing_message([fname]) +
            ' Download failed (offline?): ' + '; '.join(errors))

    def _process(self) -> None:
        # The raw files are hashed (and verified) on every load, not only
        # when the processed file is built, and a processed file built from
        # other raw bytes (a file changed, truncated or replaced since) is
        # rebuilt: the data never silently differs from the raw files.
        self.raw_hashes = {
            f: file_hashes(p)
            for f, p in zip(self.raw_file_names, self.raw_paths)
        }
        if self.verify_checksums:
            for fname, expected in self.checksums.items():
                try:
                    verify_file(osp.join(self.raw_dir, fname), expected,
                                actual=self.raw_hashes[fname])
                except ChecksumError as e:
                    raise ChecksumError(
                        f'{e}. Pass verify_checksums=False to use the file '
                        f'anyway.') from None
        if not self.force_reload and all(
                osp.exists(p) for p in self.processed_paths):
            try:
                with open(osp.join(self.processed_dir,
                                   self.raw_hashes_file)) as f:
                    stored = json.load(f)
            except (OSError, ValueError):
                stored = None
            if stored != self._raw_sha256():
                self.force_reload = True
        super()._process()

    def _raw_sha256(self) -> Dict[str, str]:
        return {f: h['sha256'] for f, h in self.raw_hashes.items()}

    def process(self) -> None:
        data = load_lightgcn_split(*self.raw_paths)
        if self.pre_transform is not None:
            data = self.pre_transform(data)
        self.save([data], self.processed_paths[0])
        with open(osp.join(self.processed_dir, self.raw_hashes_file),
                  'w') as f:
            json.dump(self._raw_sha256(), f)

    @property
    def num_users(self) -> int:
        r"""The number of users."""
        return int(self._data['user'].num_nodes)

    @property
    def num_items(self) -> int:
        r"""The number of items."""
        return int(self._data['item'].num_nodes)

    def adjacency(self) -> Tensor:
        r"""Returns (and caches) the normalized LightGCN adjacency matrix
        :math:`\mathbf{D}^{-1/2} \mathbf{A} \mathbf{D}^{-1/2}` of the
        *training* graph as a :obj:`torch.sparse_csr` tensor of shape
        :obj:`[num_users + num_items, num_users + num_items]`, users first,
        see :func:`pyg_cerp.utils.adjacency.lightgcn_adjacency`.  Built from
        the stored (pre-transformed, not transformed) data object.
        """
        if self._adjacency is None:
            from pyg_cerp.utils.adjacency import lightgcn_adjacency
            self._adjacency = lightgcn_adjacency(
                self._data[EDGE_TYPE].edge_index, self.num_users,
                self.num_items)
        return self._adjacency

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(name={self.name!r}, '
                f'num_users={self.num_users}, num_items={self.num_items})')


class _NamedLightGCNDataset(LightGCNDataset):
    # A dataset with a fixed name: raw files are in `{root}/raw` (the PyG
    # convention for single-dataset classes such as `AmazonBook`).
    NAME: str = ''
    URLS: Dict[str, List[str]] = {}
    CHECKSUMS: Dict[str, Dict[str, str]] = {}

    def __init__(
        self,
        root: str,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
        processed_dir: Optional[str] = None,
        verify_checksums: bool = True,
        log: bool = True,
    ) -> None:
        super().__init__(root, self.NAME, self.URLS, self.CHECKSUMS,
                         transform=transform, pre_transform=pre_transform,
                         force_reload=force_reload,
                         processed_dir=processed_dir,
                         verify_checksums=verify_checksums, log=log)

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, 'raw')

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items})')


class Gowalla(_NamedLightGCNDataset):
    r"""The Gowalla check-in dataset in the exact train/test split of
    LightGCN and CERP: 29,858 users, 40,981 items, 810,128 training and
    217,242 test interactions.  Raw files are :obj:`{root}/raw/train.txt`
    and :obj:`{root}/raw/test.txt`, verified by sha256 and git blob id.

    Args:
        root (str): Root directory (holding :obj:`raw/`).
        transform (callable, optional): See :class:`LightGCNDataset`.
        pre_transform (callable, optional): See :class:`LightGCNDataset`.
        force_reload (bool, optional): See :class:`LightGCNDataset`.
        processed_dir (str, optional): See :class:`LightGCNDataset`.
        verify_checksums (bool, optional): See :class:`LightGCNDataset`.
        log (bool, optional): See :class:`LightGCNDataset`.
    """
    NAME = 'gowalla'
    URLS = {
        f: [f'{_CERP_RAW}/gowalla/{f}', f'{_LIGHTGCN_RAW}/gowalla/{f}']
        for f in ('train.txt', 'test.txt')
    }
    CHECKSUMS = GOWALLA_CHECKSUMS


class Yelp2020(_NamedLightGCNDataset):
    r"""The Yelp2020 dataset in the train/test split of CERP: 71,135 users,
    45,063 items and 384,561 test interactions.  Raw files are
    :obj:`{root}/raw/train.txt` and :obj:`{root}/raw/test.txt`, verified by
    git blob id.

    .. note::
        The training file (git blob
        :obj:`392633dd8c6e99d4b64eb0da0d0f5efacf66e95a`) is over 4 MiB; it may
        be missing from repository snapshots and is only published through
        the Google Drive folder linked in the CERP README.  Without network
        access it must be placed in :obj:`{root}/raw` by hand.

    The smaller Yelp split of kuandeng/LightGCN pull request #16 is a
    *different* dataset; load it with
    :obj:`LightGCNDataset(root, 'yelp2020-lightgcn-pr16',
    checksums=YELP2020_PR16_CHECKSUMS)`.

    Args:
        root (str): Root directory (holding :obj:`raw/`).
        transform (callable, optional): See :class:`LightGCNDataset`.
        pre_transform (callable, optional): See :class:`LightGCNDataset`.
        force_reload (bool, optional): See :class:`LightGCNDataset`.
        processed_dir (str, optional): See :class:`LightGCNDataset`.
        verify_checksums (bool, optional): See :class:`LightGCNDataset`.
        log (bool, optional): See :class:`LightGCNDataset`.
    """
    NAME = 'yelp2020'
    URLS = {
        f: [f'{_CERP_RAW}/yelp2020/{f}'] for f in ('train.txt', 'test.txt')
    }
    CHECKSUMS = YELP2020_CHECKSUMS

    def _missing_message(self, missing: List[str]) -> str:
        msg = super()._missing_message(missing)
        if 'train.txt' in missing:
            msg += (" The CERP Yelp2020 train.txt (git blob "
                    "392633dd8c6e99d4b64eb0da0d0f5efacf66e95a, over 4 MiB) is "
                    "not available offline; get it from the Google Drive "
                    "folder of the CERP README (github.com/xurong-liang/CERP) "
                    "and check it with `git hash-object train.txt`.")
        return msg


class _FlatFolderDataset(LightGCNDataset):
    # A folder holding train.txt/test.txt directly (no raw/ subfolder).
    def __init__(self, folder: str, **kwargs) -> None:
        self._folder = osp.abspath(folder)
        super().__init__(osp.dirname(self._folder),
                         osp.basename(self._folder), **kwargs)

    @property
    def raw_dir(self) -> str:
        return self._folder

    @property
    def processed_dir(self) -> str:
        if self._processed_dir is not None:
            return self._processed_dir
        default = osp.join(self._folder, 'processed')
        if _writable(default):
            return default
        cache = os.environ.get('PYG_CERP_CACHE',
                               osp.join('~', '.cache', 'pyg_cerp'))
        key = hashlib.sha1(self._folder.encode()).hexdigest()
        return osp.join(osp.expanduser(cache), f'{self.name}-{key[:10]}',
                        'processed')


#: Checksums of the known splits, by folder name (see :func:`open_folder`).
KNOWN_CHECKSUMS: Dict[str, Dict[str, Dict[str, str]]] = {
    'gowalla': GOWALLA_CHECKSUMS,
    'yelp2020': YELP2020_CHECKSUMS,
    'yelp2020-lightgcn-pr16': YELP2020_PR16_CHECKSUMS,
}


def open_folder(folder: str, verify_checksums: bool = True,
                processed_dir: Optional[str] = None,
                log: bool = False) -> LightGCNDataset:
    r"""Opens the LightGCN-format split in :obj:`folder` (holding
    :obj:`raw/{train,test}.txt`, or the two files directly) through the
    dataset classes: :class:`Gowalla` or :class:`Yelp2020` if the folder is
    named :obj:`gowalla` / :obj:`yelp2020`, else :class:`LightGCNDataset`,
    with the known checksums of :obj:`KNOWN_CHECKSUMS` for its name (*e.g.*
    :obj:`yelp2020-lightgcn-pr16`). The raw files are hashed on every call
    (see :attr:`LightGCNDataset.raw_hashes`) and verified where known.

    Args:
        folder (str): The dataset folder.
        verify_checksums (bool, optional): Check the raw files of a known
            split. (default: :obj:`True`)
        processed_dir (str, optional): See :class:`LightGCNDataset`.
        log (bool, optional): Print processing messages.
            (default: :obj:`False`)

    Raises:
        FileNotFoundError: If :obj:`train.txt` or :obj:`test.txt` is missing.
        ChecksumError: If a raw file of a known split does not match.
    """
    folder = osp.abspath(folder)
    name = osp.basename(osp.normpath(folder))
    kwargs = dict(verify_checksums=verify_checksums,
                  processed_dir=processed_dir, log=log)
    if osp.isdir(osp.join(folder, 'raw')):
        cls = {'gowalla': Gowalla, 'yelp2020': Yelp2020}.get(name.lower())
        if cls is not None:
            return cls(folder, **kwargs)
        return LightGCNDataset(osp.dirname(folder), name,
                               checksums=KNOWN_CHECKSUMS.get(name.lower()),
                               **kwargs)
    missing = [f for f in LightGCNDataset.raw_file_names_
               if not osp.isfile(osp.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"No LightGCN-format split in '{folder}': missing {missing} (put "
            f"'train.txt' and 'test.txt' into '{folder}/raw' or '{folder}')")
    return _FlatFolderDataset(folder,
                              checksums=KNOWN_CHECKSUMS.get(name.lower()),
                              **kwargs)
