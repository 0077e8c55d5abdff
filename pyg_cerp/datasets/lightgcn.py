r"""Interaction datasets in the LightGCN text format (see
:mod:`pyg_cerp.datasets.split`) as
:class:`~torch_geometric.data.InMemoryDataset` classes, the known splits and
their checksums, and the validation split of a dataset folder.
"""
import hashlib
import json
import os
import os.path as osp
import shutil
import tempfile
from contextlib import suppress
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset, download_url

from pyg_cerp.datasets.split import (EDGE_TYPE, Checksums, ChecksumError,
                                     _interaction_data, file_hashes,
                                     load_lightgcn_split, user_holdout_split,
                                     verify_file, verify_files)
from pyg_cerp.utils.adjacency import lightgcn_adjacency
from pyg_cerp.utils.io import file_lock

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

    def _process_unlocked(self) -> None:
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

    def _process(self) -> None:
        # Processes that open the same folder at once build the cache once:
        # the others wait, then find it up to date.
        with file_lock(osp.join(self.processed_dir, '.lock')):
            self._process_unlocked()

    def _raw_sha256(self) -> Dict[str, str]:
        return {f: h['sha256'] for f, h in self.raw_hashes.items()}

    def process(self) -> None:
        # The raw hashes go last, and both files are replaced atomically: a
        # crash in between leaves no hashes, so the next load rebuilds.
        hashes = osp.join(self.processed_dir, self.raw_hashes_file)
        with suppress(FileNotFoundError):
            os.remove(hashes)
        data = load_lightgcn_split(*self.raw_paths)
        if self.pre_transform is not None:
            data = self.pre_transform(data)
        path = self.processed_paths[0]
        self.save([data], path + '.tmp')
        os.replace(path + '.tmp', path)
        with open(hashes + '.tmp', 'w') as f:
            json.dump(self._raw_sha256(), f)
        os.replace(hashes + '.tmp', hashes)

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


#: The datasets with a class of their own (URLs, checksums), by folder name.
NAMED_DATASETS: Dict[str, type] = {'gowalla': Gowalla, 'yelp2020': Yelp2020}

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
    a folder of that name (which downloads missing raw files), else a
    :class:`LightGCNDataset` with the :obj:`KNOWN_CHECKSUMS` of its name
    (*e.g.* :obj:`yelp2020-lightgcn-pr16`).

    Args:
        folder (str): The dataset folder.
        verify_checksums (bool, optional): Check the raw files of a known
            split. (default: :obj:`True`)
        processed_dir (str, optional): See :class:`LightGCNDataset`.
        log (bool, optional): Print processing messages.
            (default: :obj:`False`)

    Raises:
        FileNotFoundError: If :obj:`train.txt` or :obj:`test.txt` is missing
            (and cannot be downloaded).
        ChecksumError: If a raw file of a known split does not match.
    """
    folder = osp.abspath(folder)
    name = osp.basename(osp.normpath(folder))
    kwargs = dict(verify_checksums=verify_checksums,
                  processed_dir=processed_dir, log=log)
    cls = NAMED_DATASETS.get(name.lower())
    flat = osp.isfile(osp.join(folder, 'train.txt'))
    if cls is not None and not flat:
        return cls(folder, **kwargs)
    if osp.isdir(osp.join(folder, 'raw')):
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


#: Checksums of published validation splits (``raw/{train,valid}.txt``),
#: by folder name; see ``shared/data/README.md``.
VALIDATION_CHECKSUMS: Dict[str, Dict[str, Dict[str, str]]] = {
    'gowalla-lightgcnpp': {
        'train.txt': {
            'sha256': 'd47e01d060624f389956c0b2f89a1ed8c453ea158631cd2b5320c'
                      '241f3e1a073'
        },
        'valid.txt': {
            'sha256': 'ddc22c1cd9a7d14fd5cd0c98b1473b614f4323038fef74ae0d28c'
                      'c9c92a08ba2'
        },
    },
}


def published_valid_file(folder: str) -> Optional[str]:
    r"""The path of the published validation pairs of the split in
    :obj:`folder` (:obj:`valid.txt` beside :obj:`train.txt`: in :obj:`raw/`
    if the folder has one, else in the folder itself), or :obj:`None`.

    Args:
        folder (str): The dataset folder.
    """
    raw = osp.join(folder, 'raw')
    path = osp.join(raw if osp.isdir(raw) else folder, 'valid.txt')
    return path if osp.isfile(path) else None


def validation_split(folder: str, ratio: float = 0.1, seed: int = 0,
                     verify_checksums: bool = True) -> HeteroData:
    r"""The validation split of the dataset in :obj:`folder`, as the
    :class:`~torch_geometric.data.HeteroData` of
    :func:`~pyg_cerp.datasets.load_lightgcn_split`, with the validation
    pairs in place of the test pairs (:obj:`edge_label_index`):

    * if :obj:`folder/raw/valid.txt` (or :obj:`folder/valid.txt`) exists
      (a published split such as
      :obj:`gowalla-lightgcnpp`), :obj:`train.txt` against :obj:`valid.txt`,
      checked against :obj:`VALIDATION_CHECKSUMS` for a known folder name;
    * otherwise a :func:`user_holdout_split` of the training pairs of
      :func:`~pyg_cerp.datasets.open_folder` (users and items keep the ids
      and counts of the full dataset).

    Args:
        folder (str): The dataset folder.
        ratio (float, optional): Held-out fraction per user (hold-out
            only). (default: :obj:`0.1`)
        seed (int, optional): Seed of the hold-out. (default: :obj:`0`)
        verify_checksums (bool, optional): Check the files of a known split.
            (default: :obj:`True`)
    """
    valid_path = published_valid_file(folder)
    if valid_path is not None:
        raw = osp.dirname(valid_path)
        known = VALIDATION_CHECKSUMS.get(osp.basename(osp.normpath(folder)))
        if verify_checksums and known is not None:
            verify_files(raw, known)
        return load_lightgcn_split(osp.join(raw, 'train.txt'), valid_path)
    data = open_folder(folder, verify_checksums=verify_checksums)[0]
    num_users = int(data['user'].num_nodes)
    train, valid = user_holdout_split(data[EDGE_TYPE].edge_index, num_users,
                                      ratio, seed)
    return _interaction_data(num_users, int(data['item'].num_nodes), train,
                             valid)
