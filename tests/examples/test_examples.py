import json
import os
import sys

import pytest
import torch

from pyg_cerp.utils.io import safe_load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, 'examples')
sys.path.insert(0, EXAMPLES)

# A tiny, fast configuration (the defaults target full-size Gowalla).
TINY = ['--dim', '8', '--bucket-size', '20', '--targets', '0.2', '0.15',
        '--epochs', '2', '--prune-epochs', '6', '--batch-size', '64',
        '--lr', '0.002', '--threshold-init', '-3', '--threshold-lr', '0.2',
        '--gamma', '0.1', '--no-progress']


def write_lightgcn_folder(path, num_users=60, num_items=80, seed=0):
    gen = torch.Generator().manual_seed(seed)
    raw = path / 'raw'
    raw.mkdir(parents=True)
    with open(raw / 'train.txt', 'w') as tr, open(raw / 'test.txt', 'w') as te:
        for u in range(num_users):
            items = torch.arange(u % 4, num_items, 4)
            items = items[torch.randperm(items.numel(), generator=gen)]
            items = items[:items.numel() // 2].tolist()
            tr.write(' '.join(map(str, [u] + items[1:])) + '\n')
            te.write(f'{u} {items[0]}\n')
    return path


def run(script, args):
    module = __import__(script)
    return module.main(args)


@pytest.fixture
def folder(tmp_path):
    return write_lightgcn_folder(tmp_path / 'toy')


@pytest.mark.parametrize('script', ['lightgcn_cerp', 'mlp_cerp'])
def test_example_end_to_end(script, folder, tmp_path, capsys):
    out = tmp_path / 'out'
    state = run(script, ['--dataset', str(folder), '--out', str(out)] + TINY)
    assert state['finished']
    printed = capsys.readouterr().out
    assert '| model | memory (% of full)' in printed
    assert '[prune] epoch 1/6' in printed and 'gamma' in printed
    results = json.load(open(out / 'results.json'))['results']
    assert set(results) == {'full', 'retrain@0.2', 'retrain@0.15'}
    for k in (5, 10, 20, 50):
        assert 0 <= results['retrain@0.15'][f'ndcg@{k}'] <= 1
    assert results['retrain@0.15']['full_fraction'] <= 0.15
    # The checkpoint loads with weights_only=True.
    ckpt = safe_load(out / 'checkpoint.pt')
    assert ckpt['prune']['reached'] == [0.2, 0.15]


def test_lightgcn_resume_gives_same_result(folder, tmp_path):
    straight = run('lightgcn_cerp', ['--dataset', str(folder), '--out',
                                     str(tmp_path / 'a')] + TINY)
    args = ['--dataset', str(folder), '--out', str(tmp_path / 'b')] + TINY
    part = run('lightgcn_cerp', args + ['--stop-after', '3'])
    assert not part['finished'] and part['current']['stage'] == 'prune'
    resumed = run('lightgcn_cerp', args + ['--resume'])
    assert resumed['finished']
    for name, res in straight['results'].items():
        assert resumed['results'][name]['ndcg@20'] == res['ndcg@20']
        assert resumed['results'][name]['nonzero'] == res['nonzero']


def test_help_and_missing_root(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        run('lightgcn_cerp', ['--help'])
    assert exc.value.code == 0
    assert '--retrain-epochs' in capsys.readouterr().out
    monkeypatch.delenv('PYG_CERP_DATA', raising=False)
    with pytest.raises(SystemExit, match='--root'):
        run('mlp_cerp', ['--dataset', 'gowalla'])
    with pytest.raises(SystemExit, match='no folder'):
        run('mlp_cerp', ['--dataset', 'gowalla', '--root', str(tmp_path)])


@pytest.mark.data
def test_real_gowalla_slice(tmp_path):
    root = os.environ.get('PYG_CERP_DATA', '/work/shared/data')
    if not os.path.isdir(os.path.join(root, 'gowalla', 'raw')):
        pytest.skip('Gowalla not found (set PYG_CERP_DATA)')
    state = run('lightgcn_cerp', [
        '--root', root, '--subset', '300', '400', '--out',
        str(tmp_path / 'g')
    ] + TINY + ['--targets', '0.1', '--bucket-size', '60'])
    assert state['finished']
    assert state['results']['retrain@0.1']['full_fraction'] <= 0.1


@pytest.mark.parametrize('bad', [
    ['--targets', '0'], ['--targets', '0.5', '1.0'], ['--targets', 'nan'],
    ['--lr', 'inf'], ['--threshold-lr', 'nan'], ['--gamma', 'nan'],
    ['--gamma', '-1'], ['--gamma-decay', 'nan'], ['--threshold-init', 'nan'],
    ['--num-layers', '-1'], ['--threads', '0'], ['--eval-users', '0'],
])
def test_bad_arguments_fail_before_reading_data(bad, tmp_path, capsys):
    # No dataset exists: only argument validation can have stopped the run.
    with pytest.raises(SystemExit) as exc:
        run('lightgcn_cerp', ['--dataset', str(tmp_path / 'none'), '--out',
                              str(tmp_path / 'o')] + TINY + bad)
    assert exc.value.code == 2
    assert 'error:' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def test_tampered_known_dataset_is_refused(folder, tmp_path):
    # A folder named like a known dataset is checked against its checksums.
    root = tmp_path / 'root'
    os.makedirs(root)
    os.rename(folder, root / 'gowalla')
    args = ['--root', str(root), '--out', str(tmp_path / 'o')] + TINY
    with pytest.raises(SystemExit, match='Checksum mismatch.*train.txt.*'
                       '--no-verify-checksums'):
        run('lightgcn_cerp', args)
    state = run('lightgcn_cerp', args + ['--no-verify-checksums',
                                         '--no-baseline', '--epochs', '1'])
    assert state['finished']


def test_resume_refuses_other_data_or_corruption(folder, tmp_path):
    other = write_lightgcn_folder(tmp_path / 'other', seed=1)
    out = str(tmp_path / 'o')
    run('lightgcn_cerp', ['--dataset', str(folder), '--out', out] + TINY +
        ['--stop-after', '1'])
    with pytest.raises(SystemExit, match="trained on other data.*'name': "
                       "\\('toy', 'other'\\)"):
        run('lightgcn_cerp', ['--dataset', str(other), '--out', out] + TINY +
            ['--resume'])
    path = os.path.join(out, 'checkpoint.pt')
    open(path, 'wb').write(open(path, 'rb').read()[:1000])  # truncated
    with pytest.raises(SystemExit, match="checkpoint.pt'.*truncated"):
        run('lightgcn_cerp', ['--dataset', str(folder), '--out', out] + TINY +
            ['--resume'])


def test_second_run_on_same_out_fails(folder, tmp_path):
    import socket
    import subprocess
    out = tmp_path / 'o'
    os.makedirs(out)
    proc = subprocess.Popen(['sleep', '30'])
    try:
        (out / '.lock').write_text(f'{socket.gethostname()} {proc.pid}\n')
        with pytest.raises(SystemExit, match='in use by another run'):
            run('lightgcn_cerp', ['--dataset', str(folder), '--out',
                                  str(out)] + TINY)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / 'results.json').exists()
