r"""``python -m pyg_cerp.train``: the CLI generated from :class:`CERPConfig`
and the resumable pipeline behind it (formerly ``examples/_common.py``)."""
import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from pyg_cerp.train import CERPConfig
from pyg_cerp.train.cli import (BACKBONES, add_config_arguments,
                                build_parser, config_from_args, main)
from pyg_cerp.utils.io import safe_load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

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


@pytest.fixture
def folder(tmp_path):
    return write_lightgcn_folder(tmp_path / 'toy')


def parse(argv):
    args = build_parser().parse_args(argv)
    return config_from_args(args, BACKBONES[args.backbone])


# The same pipeline as the examples' command line before issue 13 ###########
#
# Reference numbers: `examples/lightgcn_cerp.py` / `examples/mlp_cerp.py` at
# commit c3f0df8 (before the CLI moved into the library), same arguments:
# (stage, nonzero, recall@20, ndcg@20).

OLD_TOY = {
    'lightgcn': [('full', 1120, 0.7333333333333333, 0.326927837636118),
                 ('retrain@0.2', 216, 0.7666666666666667, 0.3320250106579818),
                 ('retrain@0.15', 166, 0.75, 0.3375316532837696)],
    'mlp': [('full', 1120, 0.26666666666666666, 0.07411011433785732),
            ('retrain@0.2', 220, 0.36666666666666664, 0.10646637342046211),
            ('retrain@0.15', 156, 0.45, 0.14478595408949885)],
}
# Per floating-point platform (tests/conftest.py: PLATFORMS); B's numbers are
# the same old scripts (c3f0df8) run on that machine.
OLD_GOWALLA = {'A': {
    'lightgcn': [('full', 10400, 0.3605511302488101, 0.21277598510790718),
                 ('retrain@0.1', 990, 0.33506779103509826,
                  0.17848477238244148),
                 ('retrain@0.05', 515, 0.19056149888702034,
                  0.1067792504336095)],
    'mlp': [('full', 10400, 0.13777135586076292, 0.07407210582685421),
            ('retrain@0.1', 974, 0.09713177026863458, 0.06005742451093772),
            ('retrain@0.05', 517, 0.074429910895812, 0.040049330889845476)],
}, 'B': {
    'lightgcn': [('full', 10400, 0.3605511302488101, 0.21277598510790718),
                 ('retrain@0.1', 990, 0.33506779103509826,
                  0.17848477238244148),
                 ('retrain@0.05', 514, 0.18959868348197384,
                  0.1075104419481679)],
    'mlp': [('full', 10400, 0.13777135586076292, 0.07407210582685421),
            ('retrain@0.1', 974, 0.09685254528821437, 0.060660408348695787),
            ('retrain@0.05', 517, 0.07061184980683456, 0.03809758728925039)],
}}
_TABLE_HEAD = """\
| model | memory (% of full) | meta density | recall@5 | recall@10 | \
recall@20 | recall@50 | ndcg@5 | ndcg@10 | ndcg@20 | ndcg@50 |
|---|---|---|---|---|---|---|---|---|---|---|
| full | 100.00 | - | 0.1394 | 0.2399 | 0.3606 | 0.5359 | 0.1419 | \
0.1738 | 0.2128 | 0.2607 |
| retrain@0.1 | 9.52 | 0.6188 | 0.0958 | 0.1796 | 0.3351 | 0.4638 | \
0.1026 | 0.1307 | 0.1785 | 0.2135 |
"""
OLD_GOWALLA_TABLE = {'A': _TABLE_HEAD + """\
| retrain@0.05 | 4.95 | 0.3219 | 0.0746 | 0.1168 | 0.1906 | 0.3317 | \
0.0713 | 0.0839 | 0.1068 | 0.1461 |
""", 'B': _TABLE_HEAD + """\
| retrain@0.05 | 4.94 | 0.3212 | 0.0752 | 0.1193 | 0.1896 | 0.3314 | \
0.0720 | 0.0860 | 0.1075 | 0.1469 |
"""}
# The default configuration of each old script (no arguments).
OLD_DEFAULTS = {
    'lightgcn': CERPConfig().to_dict(),
    'mlp': dict(CERPConfig().to_dict(), baseline_epochs=3, retrain_epochs=3,
                batch_size=4096, lr=0.001, threshold_lr=0.01, l2_reg=0.,
                eval_users=1000),
}


def _numbers(results):
    return {f'{stage}/{key}': float(res[key]) for stage, res in results.items()
            for key in ('nonzero', 'recall@20', 'ndcg@20')}


def _reference_numbers(reference):
    return _numbers({stage: {'nonzero': n, 'recall@20': r, 'ndcg@20': g}
                     for stage, n, r, g in reference})


def assert_same_results(out, reference):
    results = json.load(open(out / 'results.json'))['results']
    assert list(results) == [stage for stage, *_ in reference]
    assert _numbers(results) == pytest.approx(_reference_numbers(reference),
                                              abs=1e-6)


# The old scripts' configuration: LightGCN's was the constant threshold
# drive, now `--preset drive` (the default is the faithful preset).
OLD = {'lightgcn': ['--preset', 'drive'], 'mlp': []}


@pytest.mark.parametrize('backbone', ['lightgcn', 'mlp'])
def test_old_config_is_the_old_scripts(backbone):
    assert parse(['--backbone', backbone] + OLD[backbone]).to_dict() == \
        OLD_DEFAULTS[backbone]


def test_lightgcn_default_is_faithful_cerp():
    cfg = parse(['--backbone', 'lightgcn'])
    assert cfg == CERPConfig.preset('faithful')
    assert cfg.threshold_drive == 0 and cfg.gamma_init > 0
    assert cfg.bucket_size is None  # Derived from N and the targets.


@pytest.mark.parametrize('backbone', ['lightgcn', 'mlp'])
def test_same_metrics_as_the_old_script(backbone, folder, tmp_path):
    extra = ['--num-layers', '2'] if backbone == 'lightgcn' else []
    main(['--backbone', backbone, '--dataset', str(folder), '--out',
          str(tmp_path / 'o')] + OLD[backbone] + TINY + extra)
    assert_same_results(tmp_path / 'o', OLD_TOY[backbone])


GOWALLA_SLICE = ['--subset', '500', '800', '--dim', '8', '--bucket-size',
                 '100', '--targets', '0.1', '0.05', '--epochs', '2',
                 '--prune-epochs', '6', '--batch-size', '256', '--lr', '0.01',
                 '--threshold-init', '-3', '--threshold-lr', '0.2',
                 '--gamma', '0.1', '--no-progress']


@pytest.mark.data
@pytest.mark.parametrize('backbone', ['lightgcn', 'mlp'])
def test_main_job_on_gowalla_slice_as_the_old_script(backbone, data_root,
                                                     tmp_path, monkeypatch,
                                                     match_platform):
    # The README's main job, `--subset 500 800` and 2 epochs per model,
    # through the checksummed `Gowalla` class: the old metrics, the same
    # files (in the old default folder) and contents format.
    monkeypatch.chdir(tmp_path)
    main(['--backbone', backbone, '--root', data_root] + OLD[backbone] +
         GOWALLA_SLICE)
    out = tmp_path / 'results' / f'{backbone}_cerp-gowalla'
    summary = json.load(open(out / 'results.json'))
    results = summary['results']
    assert list(results) == ['full', 'retrain@0.1', 'retrain@0.05']
    platform = match_platform(_numbers(results), {
        name: _reference_numbers(ref[backbone])
        for name, ref in OLD_GOWALLA.items()})
    assert set(summary) == {'config', 'results', 'history', 'pruning',
                            'dataset', 'seconds_this_call', 'world_size'}
    assert summary['dataset'] == dict(name='gowalla', num_users=500,
                                      num_items=800, num_train=5444,
                                      num_test=895)
    assert summary['pruning']['reached'] == [0.1, 0.05]
    assert sorted(os.listdir(out)) == ['checkpoint.pt', 'results.json',
                                       'results.md']
    if backbone == 'lightgcn':
        assert (out / 'results.md').read_text() == \
            OLD_GOWALLA_TABLE[platform]


def test_module_entry_point_help():
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-m', 'pyg_cerp.train', '--help'],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'torchrun --nproc_per_node=2 -m pyg_cerp.train' in proc.stdout


# The generated options #######################################################

# Every option of the old command line, with an example value.
OLD_OPTIONS = {
    '--dataset': 'x', '--root': 'x', '--dim': '8', '--bucket-size': '9',
    '--targets': '0.1', '--target-unit': 'meta', '--epochs': '1',
    '--prune-epochs': '1', '--retrain-epochs': '1', '--finetune-epochs': '1',
    '--no-baseline': None, '--batch-size': '8', '--lr': '0.1',
    '--prune-batch-size': '8', '--prune-lr': '0.1', '--l2-reg': '0.1',
    '--threshold-lr': '0.1', '--threshold-weight-decay': '0.1',
    '--threshold-drive': '0.1', '--threshold-init': '-1', '--gamma': '0.1',
    '--gamma-decay': '0.1', '--gamma-decay-every': '2', '--eval-users': '5',
    '--seed': '1', '--subset': ['2', '3'], '--out': 'x', '--resume': None,
    '--stop-after': '1', '--threads': '1', '--no-progress': None,
    '--no-verify-checksums': None, '--num-layers': '2', '--hidden': '4',
}


@pytest.mark.parametrize('option', sorted(OLD_OPTIONS))
def test_every_old_option_is_accepted(option):
    value = OLD_OPTIONS[option]
    argv = [option] + ([] if value is None else
                       value if isinstance(value, list) else [value])
    build_parser().parse_args(argv)


def test_one_option_per_config_field():
    parser = build_parser()
    for f in dataclasses.fields(CERPConfig):
        action = next(a for a in parser._actions if a.dest == f.name)
        assert '--' + f.name.replace('_', '-') in action.option_strings
        assert action.help and '(default:' in action.help
    cfg = parse(['--ks', '10', '20', '--eval-users', 'none', '--bucket-size',
                 'None', '--exact-snapshots', '--gamma-unit', 'official'])
    assert cfg.ks == (10, 20) and cfg.eval_users is None
    assert cfg.bucket_size is None and cfg.exact_snapshots
    assert cfg.gamma_unit == 'official'
    assert parse(['--preset', 'faithful']) == CERPConfig.preset('faithful')
    assert parse(['--preset', 'legacy', '--dim', '8']) == \
        CERPConfig.preset('legacy', dim=8)


def test_epochs_shortcuts():
    assert (parse(['--epochs', '7']).baseline_epochs,
            parse(['--epochs', '7']).retrain_epochs) == (7, 7)
    cfg = parse(['--epochs', '7', '--retrain-epochs', '2', '--no-baseline'])
    assert (cfg.baseline_epochs, cfg.retrain_epochs) == (0, 2)
    assert parse(['--backbone', 'mlp', '--no-baseline']).retrain_epochs == 3


@pytest.mark.parametrize('argv,expected', [
    ([], (32768, 8192, 2e-2, 5e-3)),
    (['--batch-size', '64', '--lr', '0.1'], (64, 64, 0.1, 0.1)),
    (['--batch-size', '64', '--prune-batch-size', '32', '--prune-lr', '0.3'],
     (64, 32, 2e-2, 0.3)),
])
def test_cli_batch_and_lr_precedence(argv, expected):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv))
    assert (cfg.batch_size, cfg.prune_schedule()[0], cfg.lr,
            cfg.prune_schedule()[1]) == expected


# The pipeline ################################################################

@pytest.mark.parametrize('backbone', ['lightgcn', 'mlp'])
def test_end_to_end(backbone, folder, tmp_path, capsys):
    out = tmp_path / 'out'
    state = main(['--backbone', backbone, '--dataset', str(folder), '--out',
                  str(out)] + TINY)
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


def test_resume_gives_same_result(folder, tmp_path):
    straight = main(['--dataset', str(folder), '--out', str(tmp_path / 'a')]
                    + TINY)
    args = ['--dataset', str(folder), '--out', str(tmp_path / 'b')] + TINY
    part = main(args + ['--stop-after', '3'])
    assert not part['finished'] and part['current']['stage'] == 'prune'
    resumed = main(args + ['--resume'])
    assert resumed['finished']
    for name, res in straight['results'].items():
        assert resumed['results'][name]['ndcg@20'] == res['ndcg@20']
        assert resumed['results'][name]['nonzero'] == res['nonzero']


def test_help_and_missing_root(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        main(['--help'])
    assert exc.value.code == 0
    assert '--retrain-epochs' in capsys.readouterr().out
    monkeypatch.delenv('PYG_CERP_DATA', raising=False)
    with pytest.raises(SystemExit, match='--root'):
        main(['--backbone', 'mlp', '--dataset', 'gowalla'])
    with pytest.raises(SystemExit, match='no folder'):
        main(['--backbone', 'mlp', '--dataset', 'gowalla', '--root',
              str(tmp_path)])
    with pytest.raises(SystemExit, match='unknown --dataset'):
        main(['--dataset', 'movielens', '--root', str(tmp_path)])


@pytest.mark.data
def test_real_gowalla_slice(data_root, tmp_path):
    state = main(['--root', data_root, '--subset', '300', '400', '--out',
                  str(tmp_path / 'g')] + TINY + ['--targets', '0.1',
                                                 '--bucket-size', '60'])
    assert state['finished']
    assert state['results']['retrain@0.1']['full_fraction'] <= 0.1


@pytest.mark.parametrize('bad', [
    ['--targets', '0'], ['--targets', '0.5', '1.0'], ['--targets', 'nan'],
    ['--lr', 'inf'], ['--threshold-lr', 'nan'], ['--gamma', 'nan'],
    ['--gamma', '-1'], ['--gamma-decay', 'nan'], ['--threshold-init', 'nan'],
    ['--num-layers', '-1'], ['--threads', '0'], ['--eval-users', '0'],
    ['--subset', '0', '5'], ['--hidden', '0'], ['--stop-after', '0'],
    ['--batch-size', '0'], ['--target-unit', 'half'], ['--device', 'tpu'],
    ['--device', 'meta'],
] + ([] if torch.cuda.is_available() else [['--device', 'cuda']]))
def test_bad_arguments_fail_before_reading_data(bad, tmp_path, capsys):
    # No dataset exists: only argument validation can have stopped the run.
    with pytest.raises(SystemExit) as exc:
        main(['--dataset', str(tmp_path / 'none'), '--out',
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
        main(args)
    state = main(args + ['--no-verify-checksums', '--no-baseline',
                         '--epochs', '1'])
    assert state['finished']


def test_resume_refuses_other_data_or_corruption(folder, tmp_path):
    other = write_lightgcn_folder(tmp_path / 'other', seed=1)
    out = str(tmp_path / 'o')
    main(['--dataset', str(folder), '--out', out] + TINY +
         ['--stop-after', '1'])
    with pytest.raises(SystemExit, match="trained on other data.*'name': "
                       "\\('toy', 'other'\\)"):
        main(['--dataset', str(other), '--out', out] + TINY + ['--resume'])
    path = os.path.join(out, 'checkpoint.pt')
    open(path, 'wb').write(open(path, 'rb').read()[:1000])  # truncated
    with pytest.raises(SystemExit, match="checkpoint.pt'.*truncated"):
        main(['--dataset', str(folder), '--out', out] + TINY + ['--resume'])


def test_second_run_on_same_out_fails(folder, tmp_path):
    out = tmp_path / 'o'
    os.makedirs(out)
    proc = subprocess.Popen(['sleep', '30'])
    try:
        (out / '.lock').write_text(f'{socket.gethostname()} {proc.pid}\n')
        with pytest.raises(SystemExit, match='in use by another run'):
            main(['--dataset', str(folder), '--out', str(out)] + TINY)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / 'results.json').exists()


def test_torchrun_module(folder, tmp_path):
    # The documented data-parallel launch: `torchrun ... -m pyg_cerp.train`.
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1',
               GLOO_SOCKET_IFNAME='lo')
    out = tmp_path / 'o'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
           '--rdzv-backend=c10d', f'--rdzv-endpoint=127.0.0.1:{port}',
           '--max-restarts=0', '-m', 'pyg_cerp.train', '--dataset',
           str(folder), '--out', str(out), '--no-baseline'] + TINY
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=150, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'data-parallel: 2 ranks (gloo)' in proc.stdout
    assert json.load(open(out / 'results.json'))['world_size'] == 2
