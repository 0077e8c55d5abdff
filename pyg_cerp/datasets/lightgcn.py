r"""Interaction datasets in the plain-text format of LightGCN.

Every line of :obj:`train.txt` and :obj:`test.txt` reads
``user_id item_id item_id ...`` (whitespace separated, integer ids starting
at 0).  The files become a :class:`~torch_geometric.data.HeteroData` object
in the style of :class:`torch_geometric.datasets.AmazonBook`.
"""
import hashlib
import json
import os
import os.path as osp
import re
import shutil
import tempfile
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence
from typing import Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset, download_url
from torch_geometric.utils import coalesce

from pyg_cerp.metrics import isin_sorted

#: Edge type of the interactions (train pairs in :obj:`edge_index`, test
#: pairs in :obj:`edge_label_index`).
EDGE_TYPE = ('user', 'rates', 'item')
#: Reverse edge type, holding the flipped training pairs only.
REV_EDGE_TYPE = ('item', 'rated_by', 'user')
#: Ids must be below this (they index :obj:`torch.int32` adjacencies).
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
    max_train_item = int(train[1].max()) + 1
    num_items = max(max_train_item, int(test[1].max()) + 1
                    if test.numel() > 0 else 0)
    _check_dense(train_path, 'user', train_users, num_users)
    _check_dense(test_path if max_train_item < num_items else train_path,
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

    The raw files :obj:`{root}/{name}/raw/{train,test}.txt` become one
    :class:`~torch_geometric.data.HeteroData` graph with node types
    :obj:`'user'` and :obj:`'item'`, see :func:`load_lightgcn_split`.  They
    are hashed on every load (:attr:`raw_hashes`) and verified against
    :obj:`checksums`; a processed file built from other raw bytes is
    rebuilt.  Downloads (only of missing files) go to a temporary file that
    is renamed into :obj:`raw_dir` once its checksum matched.

    Args:
        root (str): Root directory; raw files live in
            :obj:`{root}/{name}/raw`.
        name (str): The dataset's folder below :obj:`root`.
        urls (Mapping[str, Sequence[str]], optional): Per raw file, candidate
            URLs tried in order (:obj:`None`: no download).
            (default: :obj:`None`)
        checksums (Mapping[str, Mapping[str, str]], optional): Per raw file,
            hashes :obj:`'sha256'` and/or :obj:`'git_blob'`.
            (default: :obj:`None`)
        transform (callable, optional): A transform applied on every access.
            (default: :obj:`None`)
        pre_transform (callable, optional): A transform applied before
            saving. (default: :obj:`None`)
        force_reload (bool, optional): Re-process the dataset.
            (default: :obj:`False`)
        processed_dir (str, optional): Where the processed file goes; by
            default :obj:`{root}/{name}/processed`, or a folder below
            :obj:`$PYG_CERP_CACHE` (:obj:`~/.cache/pyg_cerp`) if that is
            read-only. (default: :obj:`None`)
        verify_checksums (bool, optional): Check existing raw files against
            :obj:`checksums` (downloads always are). (default: :obj:`True`)
        log (bool, optional): Print download/processing messages.
            (default: :obj:`True`)
    """
    raw_file_names_ = ['train.txt', 'test.txt']
    #: The processed-folder file holding the sha256 of the raw files that
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
    def _home(self) -> str:
        # The folder holding `raw/` and `processed/`.
        return osp.join(self.root, self.name)

    @property
    def raw_dir(self) -> str:
        return osp.join(self._home, 'raw')

    @property
    def processed_dir(self) -> str:
        if self._processed_dir is not None:
            return self._processed_dir
        default = osp.join(self._home, 'processed')
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
            raise FileNotFoundError(self._missing_message(missing) +
                                    f" No download URL is known for {no_url}.")
        os.makedirs(self.raw_dir, exist_ok=True)
        for fname in missing:
            errors: List[str] = []
            mismatches: List[str] = []
            for url in self.urls[fname]:
                tmp = tempfile.mkdtemp(prefix=f'.{fname}.', dir=self.raw_dir)
                try:
                    path = download_url(url, tmp, log=self.log,
                                        filename=fname)
                    verify_file(path, self.checksums.get(fname, {}),
                                name=f'{fname} from {url}')
                    os.replace(path, osp.join(self.raw_dir, fname))
                    break
                except ChecksumError as e:
                    mismatches.append(str(e))
                except Exception as e:  # network errors of any kind
                    errors.append(f'{url}: {type(e).__name__}: {e}')
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            else:
                if mismatches:
                    raise ChecksumError('; '.join(mismatches) +
                                        '. No file was written to '
                                        f"'{self.raw_dir}'.")
                raise RuntimeError(self._missing_message([fname]) +
                                   ' Download failed (offline?): ' +
                                   '; '.join(errors))

    def _process(self) -> None:
        # Hash (and verify) the raw files on every load, and rebuild a
        # processed file that was built from other raw bytes: the data never
        # silently differs from the raw files.
        self.raw_hashes = {
            f: file_hashes(p)
            for f, p in zip(self.raw_file_names, self.raw_paths)
        }
        if self.verify_checksums:
            verify_files(self.raw_dir, self.checksums, self.raw_hashes)
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
        r"""The (cached) :func:`~pyg_cerp.utils.adjacency.lightgcn_adjacency`
        of the stored training graph (pre-transformed, not transformed)."""
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
    # A dataset with a fixed name, URLs and checksums: raw files are in
    # `{root}/raw` (the PyG convention of single datasets like `AmazonBook`).
    NAME: str = ''
    URLS: Dict[str, List[str]] = {}
    CHECKSUMS: Dict[str, Dict[str, str]] = {}

    def __init__(self, root: str, transform: Optional[Callable] = None,
                 pre_transform: Optional[Callable] = None,
                 **kwargs: Any) -> None:
        super().__init__(root, self.NAME, self.URLS, self.CHECKSUMS,
                         transform, pre_transform, **kwargs)

    @property
    def _home(self) -> str:
        return self.root

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items})')


class Gowalla(_NamedLightGCNDataset):
    r"""The Gowalla check-in dataset in the exact train/test split of
    LightGCN and CERP: 29,858 users, 40,981 items, 810,128 training and
    217,242 test interactions, in :obj:`{root}/raw/{train,test}.txt`,
    verified by sha256 and git blob id.

    Args:
        root (str): Root directory (holding :obj:`raw/`).
        transform (callable, optional): A transform applied on every access.
            (default: :obj:`None`)
        pre_transform (callable, optional): A transform applied before
            saving. (default: :obj:`None`)
        **kwargs (optional): :obj:`force_reload`, :obj:`processed_dir`,
            :obj:`verify_checksums` and :obj:`log` of
            :class:`LightGCNDataset`.
    """
    NAME = 'gowalla'
    URLS = {
        f: [f'{_CERP_RAW}/gowalla/{f}', f'{_LIGHTGCN_RAW}/gowalla/{f}']
        for f in ('train.txt', 'test.txt')
    }
    CHECKSUMS = GOWALLA_CHECKSUMS


class Yelp2020(_NamedLightGCNDataset):
    r"""The Yelp2020 dataset in the train/test split of CERP: 71,135 users,
    45,063 items and 384,561 test interactions, in
    :obj:`{root}/raw/{train,test}.txt`, verified by git blob id.

    .. note::
        The training file (git blob
        :obj:`392633dd8c6e99d4b64eb0da0d0f5efacf66e95a`, over 4 MiB) may be
        missing from repository snapshots; it is published through the
        Google Drive folder of the CERP README.  Without network access,
        place it in :obj:`{root}/raw` by hand.

    The smaller Yelp split of kuandeng/LightGCN pull request #16 is a
    *different* dataset: :obj:`LightGCNDataset(root,
    'yelp2020-lightgcn-pr16', checksums=YELP2020_PR16_CHECKSUMS)`.

    Args:
        root (str): Root directory (holding :obj:`raw/`).
        transform, pre_transform, **kwargs: See :class:`Gowalla`.
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
    def __init__(self, folder: str, **kwargs: Any) -> None:
        folder = osp.abspath(folder)
        super().__init__(osp.dirname(folder), osp.basename(folder), **kwargs)

    @property
    def raw_dir(self) -> str:
        return self._home


#: Checksums of the known splits, by folder name (see :func:`open_folder`).
KNOWN_CHECKSUMS: Dict[str, Dict[str, Dict[str, str]]] = {
    'gowalla': GOWALLA_CHECKSUMS,
    'yelp2020': YELP2020_CHECKSUMS,
    'yelp2020-lightgcn-pr16': YELP2020_PR16_CHECKSUMS,
}


def open_folder(folder: str, verify_checksums: bool = True,
                processed_dir: Optional[str] = None,
                log: bool = False) -> LightGCNDataset:
    r"""Opens the split in :obj:`folder` (holding :obj:`raw/{train,test}.txt`
    or the two files directly): a :class:`Gowalla` or :class:`Yelp2020` for
    a folder of that name, else a :class:`LightGCNDataset` with the
    :obj:`KNOWN_CHECKSUMS` of its name (*e.g.*
    :obj:`yelp2020-lightgcn-pr16`).

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
