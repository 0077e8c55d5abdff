r"""The examples run as written on tiny data (the pipeline behind
``python -m pyg_cerp.train`` is tested in tests/train/test_cli.py)."""
import os
import sys

import pytest

from pyg_cerp import CompactEmbedding

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'examples')
sys.path.insert(0, EXAMPLES)

TINY = ['--dim', '8', '--bucket-size', '20', '--targets', '0.2', '0.15',
        '--prune-epochs', '6', '--epochs', '2', '--batch-size', '64',
        '--lr', '0.01', '--gamma', '0.1']


def run(script, args):
    return __import__(script).main(args)


@pytest.fixture
def toy(tmp_path):
    # 60 users with 10 items each out of 80 (LightGCN text format).
    raw = tmp_path / 'toy' / 'raw'
    raw.mkdir(parents=True)
    rows = [(u, [(7 * u + 4 * j) % 80 for j in range(10)]) for u in range(60)]
    (raw / 'train.txt').write_text(''.join(
        f'{u} ' + ' '.join(map(str, items[1:])) + '\n' for u, items in rows))
    (raw / 'test.txt').write_text(''.join(f'{u} {items[0]}\n'
                                          for u, items in rows))
    return raw.parent


def check_run(out, export, targets):
    scheduler = out['scheduler']
    assert sorted(scheduler.snapshots, reverse=True) == targets
    assert scheduler.num_steps > 0
    embedding = out['model'].embedding
    assert embedding.is_retraining  # Phase 2 froze the masks.
    assert embedding.full_table_fraction() <= targets[-1]
    for k in ('recall@20', 'ndcg@20'):
        assert 0 <= out['metrics'][k] <= 1
        # The exported float32 non-zeros serve the same model.
        assert out['served'][k] == pytest.approx(out['metrics'][k], abs=1e-6)
    for t in targets:
        compact = CompactEmbedding.load(export / f'cerp-{t:g}.pt')
        assert compact.num_embeddings == embedding.num_embeddings


@pytest.mark.parametrize('script', ['lightgcn_cerp', 'mlp_cerp'])
def test_example_end_to_end(script, toy, tmp_path, capsys):
    export = tmp_path / 'export'
    out = run(script, ['--dataset', str(toy), '--export', str(export)] +
              TINY)
    check_run(out, export, [0.2, 0.15])
    printed = capsys.readouterr().out
    assert 'Prune epoch 1:' in printed and 'Retrain@0.15' in printed
    assert 'Served' in printed


@pytest.mark.parametrize('script', ['lightgcn_cerp', 'mlp_cerp'])
def test_help(script, capsys):
    with pytest.raises(SystemExit) as exc:
        run(script, ['--help'])
    assert exc.value.code == 0
    assert '--targets' in capsys.readouterr().out


@pytest.mark.data
@pytest.mark.parametrize('script', ['lightgcn_cerp', 'mlp_cerp'])
def test_gowalla_slice(script, data_root, tmp_path):
    # The checksummed Gowalla class, on a slice.
    export = tmp_path / 'export'
    out = run(script, ['--root', data_root, '--subset', '300', '400',
                       '--export', str(export)] + TINY +
              ['--bucket-size', '60', '--targets', '0.1', '0.05',
               '--batch-size', '256'])
    check_run(out, export, [0.1, 0.05])
    assert out['model'].embedding.num_embeddings == 700
