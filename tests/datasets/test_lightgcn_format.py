import hashlib
import os
import os.path as osp
import urllib.error

import pytest
import torch

import pyg_cerp.datasets.lightgcn as lightgcn_mod
from pyg_cerp.datasets import (
    EDGE_TYPE,
    REV_EDGE_TYPE,
    ChecksumError,
    Gowalla,
    LightGCNDataset,
    Yelp2020,
    count_train_test_overlap,
    file_hashes,
    load_lightgcn_split,
    read_lightgcn_file,
)

TRAIN = '0 1 2\n1 0\n2 3 1 3\n'  # user 2 lists item 3 twice
TEST = '0 0\n1 4\n2 2\n'


def write(folder, name, text):
    os.makedirs(folder, exist_ok=True)
    path = osp.join(folder, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


def make_raw(tmp_path, name='toy', train=TRAIN, test=TEST):
    raw = tmp_path / name / 'raw'
    write(raw, 'train.txt', train)
    write(raw, 'test.txt', test)
    return raw


def no_network(*args, **kwargs):
    raise AssertionError('network must not be touched')


def test_counts_and_edge_types(tmp_path, monkeypatch):
    make_raw(tmp_path)
    monkeypatch.setattr(lightgcn_mod, 'download_url', no_network)
    with pytest.warns(UserWarning, match='1 duplicate'):
        ds = LightGCNDataset(str(tmp_path), 'toy', log=False)
    data = ds[0]
    assert data['user'].num_nodes == 3
    assert data['item'].num_nodes == 5  # max id 4 is a cold test item
    assert set(data.edge_types) == {EDGE_TYPE, REV_EDGE_TYPE}
    assert data[EDGE_TYPE].edge_index.tolist() == [[0, 0, 1, 2, 2],
                                                   [1, 2, 0, 1, 3]]
    assert data[EDGE_TYPE].edge_label_index.tolist() == [[0, 1, 2],
                                                         [0, 4, 2]]
    assert torch.equal(data[REV_EDGE_TYPE].edge_index,
                       data[EDGE_TYPE].edge_index.flip([0]))
    assert 'edge_label_index' not in data[REV_EDGE_TYPE]
    assert count_train_test_overlap(data) == 0
    assert ds.num_users == 3 and ds.num_items == 5
    assert repr(ds) == "LightGCNDataset(name='toy', num_users=3, num_items=5)"
    assert osp.exists(tmp_path / 'toy' / 'processed' / 'data.pt')

    # Second construction reads the processed file (no new warning):
    ds2 = LightGCNDataset(str(tmp_path), 'toy', log=False)
    assert torch.equal(ds2[0][EDGE_TYPE].edge_index,
                       data[EDGE_TYPE].edge_index)


def test_parser_matches_python_reference(tmp_path):
    gen = torch.Generator().manual_seed(0)
    lines, rows, cols = [], [], []
    for u in range(50):
        items = torch.randint(0, 10**6, (int(torch.randint(0, 8, (1, ),
                                                           generator=gen)),),
                              generator=gen).tolist()
        sep = '\t' if u % 7 == 0 else ' '
        trailing = '  ' if u % 5 else ''
        lines.append(sep.join(str(x) for x in [u] + items) + trailing)
        rows += [u] * len(items)
        cols += items
    path = write(tmp_path, 'f.txt', '\r\n'.join(lines) + '\n\n')
    edge_index, users = read_lightgcn_file(path)
    assert users.tolist() == list(range(50))
    assert edge_index.tolist() == [rows, cols]


@pytest.mark.parametrize('text,line,match', [
    ('0 1 2\n1 x3\n', 2, "token 'x3' is not"),
    ('0 1\n1 2.5\n', 2, "token '2.5' is not"),
    ('0 1\n\n1 2\n2 -4 1\n', 4, 'negative id -4'),
    ('0 1\n1 99999999999999999999\n', 2, 'too large'),
])
def test_malformed_token(tmp_path, text, line, match):
    path = write(tmp_path, 'train.txt', text)
    with pytest.raises(ValueError, match=match) as info:
        read_lightgcn_file(path)
    assert f'line {line}' in str(info.value)
    assert 'train.txt' in str(info.value)


@pytest.mark.parametrize('text', ['', '\n \n'])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, 'train.txt', text)
    with pytest.raises(ValueError, match='train.txt.*is empty'):
        read_lightgcn_file(path)


def test_unknown_test_user(tmp_path):
    raw = make_raw(tmp_path, test='0 0\n1 4\n2 2\n5 1\n')
    with pytest.raises(ValueError, match=r"test.txt', line 4: test user 5 "
                       r"is unknown"):
        load_lightgcn_split(str(raw / 'train.txt'), str(raw / 'test.txt'))


def test_user_without_items_counts(tmp_path):
    raw = make_raw(tmp_path, train='0 1\n1 0\n2\n', test='0 0\n2 1\n')
    data = load_lightgcn_split(str(raw / 'train.txt'), str(raw / 'test.txt'))
    assert data['user'].num_nodes == 3
    assert data[EDGE_TYPE].edge_label_index.tolist() == [[0, 2], [0, 1]]


def test_overlap_is_reported_not_fatal(tmp_path):
    raw = make_raw(tmp_path, train='0 1\n1 0\n', test='0 1\n1 2\n')
    with pytest.warns(UserWarning, match='1 .* also appear'):
        data = load_lightgcn_split(str(raw / 'train.txt'),
                                   str(raw / 'test.txt'))
    assert count_train_test_overlap(data) == 1


def test_checksum_of_existing_files(tmp_path, monkeypatch):
    raw = make_raw(tmp_path, name='gowalla', train='0 1\n', test='0 0\n')
    monkeypatch.setattr(lightgcn_mod, 'download_url', no_network)
    with pytest.raises(ChecksumError) as info:
        Gowalla(str(tmp_path / 'gowalla'), log=False)
    msg = str(info.value)
    assert 'train.txt' in msg and 'verify_checksums=False' in msg
    assert Gowalla.CHECKSUMS['train.txt']['sha256'] in msg
    assert file_hashes(str(raw / 'train.txt'))['sha256'] in msg

    ds = Gowalla(str(tmp_path / 'gowalla'), verify_checksums=False,
                 log=False)
    assert ds.num_users == 1 and ds.num_items == 2


def test_file_hashes_git_blob(tmp_path):
    path = write(tmp_path, 'a.txt', 'hello\n')
    # `printf 'hello\n' | git hash-object --stdin`:
    assert file_hashes(path)['git_blob'] == \
        'ce013625030ba8dba906f756967f9e9ca394464a'
    expected = hashlib.sha256(b'hello\n').hexdigest()
    assert file_hashes(path)['sha256'] == expected


def fake_download(contents):
    calls = []

    def download_url(url, folder, log=True, filename=None):
        calls.append(url)
        if url not in contents:
            raise urllib.error.URLError('offline')
        path = osp.join(folder, filename or url.rpartition('/')[2])
        with open(path, 'w') as f:
            f.write(contents[url])
        return path

    return download_url, calls


def sha(text):
    return {'sha256': hashlib.sha256(text.encode()).hexdigest()}


def test_download_verified(tmp_path, monkeypatch):
    urls = {'train.txt': ['http://a/train.txt', 'http://b/train.txt'],
            'test.txt': ['http://a/test.txt']}
    download, calls = fake_download({
        'http://b/train.txt': TRAIN, 'http://a/test.txt': TEST})
    monkeypatch.setattr(lightgcn_mod, 'download_url', download)
    with pytest.warns(UserWarning, match='duplicate'):
        ds = LightGCNDataset(str(tmp_path), 'toy', urls=urls,
                             checksums={'train.txt': sha(TRAIN),
                                        'test.txt': sha(TEST)}, log=False)
    assert ds.num_items == 5
    assert calls == ['http://a/train.txt', 'http://b/train.txt',
                     'http://a/test.txt']
    files = sorted(os.listdir(tmp_path / 'toy' / 'raw'))
    assert files == ['test.txt', 'train.txt']


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    urls = {'train.txt': ['http://a/train.txt'],
            'test.txt': ['http://a/test.txt']}
    download, _ = fake_download({'http://a/train.txt': 'tampered\n',
                                 'http://a/test.txt': TEST})
    monkeypatch.setattr(lightgcn_mod, 'download_url', download)
    expected = sha(TRAIN)['sha256']
    with pytest.raises(ChecksumError) as info:
        LightGCNDataset(str(tmp_path), 'toy', urls=urls,
                        checksums={'train.txt': sha(TRAIN)}, log=False)
    msg = str(info.value)
    assert 'train.txt' in msg and expected in msg
    assert hashlib.sha256(b'tampered\n').hexdigest() in msg
    # No bad or partial file left behind (temp folders removed):
    assert os.listdir(tmp_path / 'toy' / 'raw') == []


def test_offline_message(tmp_path, monkeypatch):
    download, _ = fake_download({})
    monkeypatch.setattr(lightgcn_mod, 'download_url', download)
    with pytest.raises(RuntimeError) as info:
        Gowalla(str(tmp_path / 'gw'), log=False)
    msg = str(info.value)
    assert osp.join(str(tmp_path / 'gw'), 'raw', 'train.txt') in msg
    assert "Put 'train.txt' and 'test.txt'" in msg
    assert 'offline' in msg
    assert os.listdir(tmp_path / 'gw' / 'raw') == []


def test_no_urls_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="No download URL is known"):
        LightGCNDataset(str(tmp_path), 'missing', log=False)


def test_yelp2020_missing_train_is_explained(tmp_path, monkeypatch):
    download, _ = fake_download({})
    monkeypatch.setattr(lightgcn_mod, 'download_url', download)
    with pytest.raises(RuntimeError) as info:
        Yelp2020(str(tmp_path / 'yelp'), log=False)
    msg = str(info.value)
    assert '392633dd8c6e99d4b64eb0da0d0f5efacf66e95a' in msg
    assert 'not available offline' in msg
    assert osp.join(str(tmp_path / 'yelp'), 'raw') in msg


def test_read_only_root_uses_cache(tmp_path, monkeypatch):
    make_raw(tmp_path)
    os.chmod(tmp_path / 'toy', 0o555)
    monkeypatch.setenv('PYG_CERP_CACHE', str(tmp_path / 'cache'))
    try:
        with pytest.warns(UserWarning):
            ds = LightGCNDataset(str(tmp_path), 'toy', log=False)
        assert ds.processed_dir.startswith(str(tmp_path / 'cache'))
        assert not osp.exists(tmp_path / 'toy' / 'processed')
    finally:
        os.chmod(tmp_path / 'toy', 0o755)


def test_unknown_raw_file_name(tmp_path):
    with pytest.raises(ValueError, match="Unknown raw file 'valid.txt'"):
        LightGCNDataset(str(tmp_path), 'toy', checksums={'valid.txt': {}})


def test_cr_only_line_endings(tmp_path):
    # Old-Mac line endings used to make one user holding every item.
    raw = make_raw(tmp_path, train='0 1 2\r1 0\r2 3 1\r', test='0 0\r1 4\r')
    data = load_lightgcn_split(str(raw / 'train.txt'), str(raw / 'test.txt'))
    assert data['user'].num_nodes == 3
    assert data[EDGE_TYPE].edge_index.tolist() == [[0, 0, 1, 2, 2],
                                                   [1, 2, 0, 1, 3]]
    crlf = make_raw(tmp_path, 'crlf', train='0 1 2\r\n1 0\r\n', test='0 0\r\n')
    edge_index, _ = read_lightgcn_file(str(crlf / 'train.txt'))
    assert edge_index.tolist() == [[0, 0, 1], [1, 2, 0]]


def test_huge_ids_name_file_and_line(tmp_path):
    raw = make_raw(tmp_path, train='0 1 2\n1 1000000000\n', test='0 0\n')
    with pytest.raises(ValueError, match=r"train.txt', line 2: item id "
                       r"1000000000 makes 1000000001 items.*dense"):
        load_lightgcn_split(str(raw / 'train.txt'), str(raw / 'test.txt'))
    raw = make_raw(tmp_path, 'x', train='0 1\n1 100000000000000000\n',
                   test='0 0\n')
    with pytest.raises(ValueError, match=r"train.txt', line 2: id "
                       r"100000000000000000 is too large"):
        load_lightgcn_split(str(raw / 'train.txt'), str(raw / 'test.txt'))


def test_truncated_train_is_not_blamed_on_test(tmp_path):
    raw = make_raw(tmp_path, train='0 1 2\n1 0\n2 3', test=TEST)
    with pytest.warns(UserWarning, match="train.txt' does not end with a "
                      "line break: it may be truncated"):
        load_lightgcn_split(str(raw / 'train.txt'), str(raw / 'test.txt'))
    raw = make_raw(tmp_path, 'cut', train='0 1 2\n1 0\n', test=TEST)
    with pytest.raises(ValueError, match=r"test user 2 is unknown to the "
                       r"training file '.*train.txt'.*truncated"):
        load_lightgcn_split(str(raw / 'train.txt'), str(raw / 'test.txt'))


def test_processed_file_follows_raw_changes(tmp_path):
    # The processed cache is rebuilt when a raw file changed since, instead of
    # silently serving the old data.
    raw = make_raw(tmp_path, train='0 1\n1 0\n', test='0 0\n1 1\n')
    ds = LightGCNDataset(str(tmp_path), 'toy', log=False)
    assert ds[0][EDGE_TYPE].edge_label_index.size(1) == 2
    assert set(ds.raw_hashes) == {'train.txt', 'test.txt'}
    write(raw, 'test.txt', '0 0\n')  # e.g. truncated
    ds = LightGCNDataset(str(tmp_path), 'toy', log=False)
    assert ds[0][EDGE_TYPE].edge_label_index.tolist() == [[0], [0]]


def test_open_folder_verifies_known_names(tmp_path):
    from pyg_cerp.datasets import open_folder
    make_raw(tmp_path, name='gowalla', train='0 1\n', test='0 0\n')
    with pytest.raises(ChecksumError, match='train.txt'):
        open_folder(str(tmp_path / 'gowalla'))
    ds = open_folder(str(tmp_path / 'gowalla'), verify_checksums=False)
    assert isinstance(ds, Gowalla) and ds.num_users == 1
    # Flat folder (files directly in it), unknown name: not checksummed.
    flat = tmp_path / 'flat'
    write(flat, 'train.txt', '0 1\n1 0\n')
    write(flat, 'test.txt', '0 0\n')
    ds = open_folder(str(flat))
    assert ds.num_users == 2 and ds.raw_dir == str(flat)
    with pytest.raises(FileNotFoundError, match='missing'):
        open_folder(str(tmp_path / 'nothing'))


def test_open_folder_downloads_a_known_name(tmp_path, monkeypatch):
    from pyg_cerp.datasets import open_folder
    download, calls = fake_download({})
    monkeypatch.setattr(lightgcn_mod, 'download_url', download)
    # An empty 'gowalla' folder is a Gowalla to download into raw/.
    with pytest.raises(RuntimeError, match='offline'):
        open_folder(str(tmp_path / 'gowalla'))
    assert calls and calls[0] in Gowalla.URLS['train.txt']


def _open_counts(root):
    ds = LightGCNDataset(root, 'toy', log=False)
    return ds[0][EDGE_TYPE].edge_index.size(1)


def test_concurrent_opens_build_the_cache_once(tmp_path):
    # Processes that open a fresh folder at once (parallel benchmark cells)
    # used to read each other's half-written processed file (EOFError).
    import multiprocessing as mp
    train = ''.join(f'{u} ' + ' '.join(str((u + j) % 50) for j in range(20))
                    + '\n' for u in range(400))
    test = ''.join(f'{u} {(u + 30) % 50}\n' for u in range(400))
    make_raw(tmp_path, train=train, test=test)
    with mp.get_context('spawn').Pool(4) as pool:
        counts = pool.map(_open_counts, [str(tmp_path)] * 8)
    assert counts == [400 * 20] * 8
    processed = tmp_path / 'toy' / 'processed'
    assert not [f for f in os.listdir(processed) if f.endswith('.tmp')]


def test_crash_while_processing_leaves_no_stale_cache(tmp_path, monkeypatch):
    make_raw(tmp_path, train='0 1\n1 0\n', test='0 0\n1 1\n')
    LightGCNDataset(str(tmp_path), 'toy', log=False)
    processed = tmp_path / 'toy' / 'processed'

    def crash(data_list, path):  # a partial file, then the process dies
        with open(path, 'wb') as f:
            f.write(b'PK\x03\x04 truncated')
        raise KeyboardInterrupt

    monkeypatch.setattr(LightGCNDataset, 'save', staticmethod(crash))
    with pytest.raises(KeyboardInterrupt):
        LightGCNDataset(str(tmp_path), 'toy', log=False, force_reload=True)
    assert not (processed / LightGCNDataset.raw_hashes_file).exists()
    monkeypatch.undo()
    ds = LightGCNDataset(str(tmp_path), 'toy', log=False)  # rebuilt
    assert ds[0][EDGE_TYPE].edge_label_index.size(1) == 2
