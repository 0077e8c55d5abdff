r"""Pins the numbers of the training stack (issue 13: the redesign must not
change a default, the random-number consumption order or the order of the
operations of a step). The references were computed on the code before the
redesign (commit c3f0df8) on one CPU thread, once per floating-point platform
(``tests/conftest.py``: ``PLATFORMS``); equality is to :math:`10^{-6}` with
one platform's record."""
import os
import sys
import warnings

import pytest
import torch

from pyg_cerp.train import (CERPConfig, CERPRunner, ConvergedRunner,
                            EarlyStopping, Split, make_sampler)

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import block_data, lightgcn_builder  # noqa: E402

REFERENCE = {}


def _runner_numbers(config):
    data = block_data()
    runner = CERPRunner(
        config, data, lightgcn_builder(data, config.dim),
        lambda seed: make_sampler(data.train, data.num_users, data.num_items,
                                  config.num_negatives, config.batch_size,
                                  seed), log=lambda s: None)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        state = runner.run()
    out = {}
    for name, res in sorted(state['results'].items()):
        for key in ('recall@10', 'ndcg@10', 'nonzero'):
            out[f'{name}/{key}'] = float(res[key])
    for i, h in enumerate(state['history']):
        out[f"history{i}/{h['stage']}/loss"] = float(h['loss'])
    for s in state['prune']['scheduler']['snapshots']:
        out[f"snapshot{s['target']:g}/step"] = float(s['step'])
    return out


def _converged_numbers():
    data = block_data()
    split = Split(data.train, data.test[:, ::2], data.test[:, 1::2],
                  data.num_users, data.num_items)
    config = CERPConfig.preset('faithful', dim=8, batch_size=64,
                               prune_epochs=6, prune_speed=40., ks=(10, 20))
    runner = ConvergedRunner(
        split, lightgcn_builder(data, 8),
        lambda ei, seed: make_sampler(ei, data.num_users, data.num_items, 2,
                                      64, seed),
        config, EarlyStopping(max_epochs=2, patience=1),
        bucket_ratios=(2., 4.), log=lambda s: None)
    out = {}
    for method in ('full', 'cerp', 'qr-mul', 'pep', 'magnitude'):
        res = runner.run(method, 0.3, 0)
        for key in ('ndcg@20', 'recall@20', 'valid_ndcg@20'):
            if key in res:
                out[f'{method}/{key}'] = float(res[key])
        out[f'{method}/bucket'] = float(res['bucket_size'] or 0)
    return out


def _harness_numbers(tmp):
    import csv
    import importlib.util
    import random
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    path = os.path.join(root, 'benchmarks', 'memory_vs_ndcg.py')
    spec = importlib.util.spec_from_file_location('memory_vs_ndcg', path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    raw = os.path.join(tmp, 'syn', 'raw')
    os.makedirs(raw)
    rng = random.Random(0)
    with open(os.path.join(raw, 'train.txt'), 'w') as f, \
            open(os.path.join(raw, 'test.txt'), 'w') as g:
        for u in range(30):
            items = rng.sample(range(40), 8)
            f.write(' '.join(map(str, [u] + items[:6])) + '\n')
            g.write(' '.join(map(str, [u] + items[6:])) + '\n')
    out = os.path.join(tmp, 'out')
    harness.main(['--dataset', os.path.join(tmp, 'syn'), '--out', out,
                  '--quick', '--backbone', 'lightgcn', '--methods',
                  'full,cerp,cerp-noreg,pep,qr,hash', '--budgets', '0.5,0.3',
                  '--prune-epochs', '4', '--retrain-epochs', '2',
                  '--batch-size', '32', '--eval-users', '20', '--dim', '8',
                  '--bucket-size', '20', '--threshold-init', '-3',
                  '--threshold-lr', '0.5', '--fresh'])
    with open(os.path.join(out, 'syn_lightgcn.csv')) as f:
        rows = list(csv.DictReader(f))
    return {f"{r['method']}@{r['budget']}/{k}": float(r[k])
            for r in rows for k in ('ndcg@20', 'recall@10', 'nonzero_params',
                                    'target_epoch') if r[k] != ''}


CASES = {
    'harness': _harness_numbers,
    'legacy': lambda: _runner_numbers(CERPConfig(
        dim=8, bucket_size=20, threshold_init=-4., targets=(0.2, 0.1),
        baseline_epochs=2, prune_epochs=8, retrain_epochs=2,
        finetune_epochs=1, batch_size=64, lr=1e-2, threshold_lr=0.2,
        threshold_weight_decay=1e-2, gamma_init=0.1, ks=(10, ))),
    'faithful': lambda: _runner_numbers(CERPConfig.preset(
        'faithful', dim=8, targets=(0.3, 0.2), baseline_epochs=2,
        retrain_epochs=2, finetune_epochs=1, batch_size=64, prune_epochs=5,
        prune_speed=20., ks=(10, ))),
    'converged': _converged_numbers,
}

REFERENCE['converged'] = {'full/ndcg@20': 0.4469237592413621,
    'full/recall@20': 1.0,
    'full/valid_ndcg@20': 0.46432375807656445,
    'full/bucket': 0.0,
    'cerp/ndcg@20': 0.3050633885468638,
    'cerp/recall@20': 0.7166666666666667,
    'cerp/valid_ndcg@20': 0.28119814622170425,
    'cerp/bucket': 84.0,
    'qr-mul/ndcg@20': 0.404816225243633,
    'qr-mul/recall@20': 0.8916666666666667,
    'qr-mul/valid_ndcg@20': 0.356243840616784,
    'qr-mul/bucket': 0.0,
    'pep/ndcg@20': 0.45981323739241353,
    'pep/recall@20': 0.9916666666666667,
    'pep/valid_ndcg@20': 0.4539235781557403,
    'pep/bucket': 0.0,
    'magnitude/ndcg@20': 0.4507221383575141,
    'magnitude/recall@20': 1.0,
    'magnitude/valid_ndcg@20': 0.45246666814856046,
    'magnitude/bucket': 0.0}
REFERENCE['faithful'] = {'finetune@0.3/recall@10': 0.23333333333333334,
    'finetune@0.3/ndcg@10': 0.15273264596382982,
    'finetune@0.3/nonzero': 332.0,
    'full/recall@10': 0.7833333333333331,
    'full/ndcg@10': 0.5146024315702465,
    'full/nonzero': 1120.0,
    'retrain@0.3/recall@10': 0.23333333333333334,
    'retrain@0.3/ndcg@10': 0.1522502566636818,
    'retrain@0.3/nonzero': 332.0,
    'history0/full/loss': 0.6748875209263393,
    'history1/full/loss': 0.5787767682756696,
    'history2/prune/loss': 0.6754063878740583,
    'history3/prune/loss': 0.6598349979945591,
    'history4/prune/loss': -20.923490251813615,
    'history5/prune/loss': -9.600636073521205,
    'history6/prune/loss': -4.018684114728655,
    'history7/retrain@0.3/loss': 0.6411737714494977,
    'history8/retrain@0.3/loss': 0.563032831464495,
    'history9/finetune@0.3/loss': 0.5853581428527832,
    'snapshot0.3/step': 30.0}
# Platform B: the pre-redesign code (8a6841c, `python
# tests/train/test_pinned.py`) on that machine differs from A in these values
# only.
REFERENCE_B = {
    'converged': {'cerp/ndcg@20': 0.30205847674252667, 'cerp/recall@20': 0.725,
                  'cerp/valid_ndcg@20': 0.2832307139661},
    'faithful': {'history5/prune/loss': -9.600642613002233,
                 'history6/prune/loss': -4.018604823521206,
                 'history9/finetune@0.3/loss': 0.585338796888079},
}
REFERENCE['harness'] = {'full@1.0/ndcg@20': 0.318004,
    'full@1.0/recall@10': 0.425,
    'full@1.0/nonzero_params': 560.0,
    'qr@0.5/ndcg@20': 0.211387,
    'qr@0.5/recall@10': 0.225,
    'qr@0.5/nonzero_params': 280.0,
    'qr@0.3/ndcg@20': 0.175275,
    'qr@0.3/recall@10': 0.225,
    'qr@0.3/nonzero_params': 168.0,
    'hash@0.5/ndcg@20': 0.245413,
    'hash@0.5/recall@10': 0.3,
    'hash@0.5/nonzero_params': 280.0,
    'hash@0.3/ndcg@20': 0.239014,
    'hash@0.3/recall@10': 0.325,
    'hash@0.3/nonzero_params': 168.0,
    'cerp@0.5/ndcg@20': 0.267611,
    'cerp@0.5/recall@10': 0.4,
    'cerp@0.5/nonzero_params': 274.0,
    'cerp@0.5/target_epoch': 0.167,
    'cerp@0.3/ndcg@20': 0.321011,
    'cerp@0.3/recall@10': 0.3,
    'cerp@0.3/nonzero_params': 127.0,
    'cerp@0.3/target_epoch': 0.667,
    'cerp-noreg@0.5/ndcg@20': 0.267611,
    'cerp-noreg@0.5/recall@10': 0.4,
    'cerp-noreg@0.5/nonzero_params': 274.0,
    'cerp-noreg@0.5/target_epoch': 0.167,
    'cerp-noreg@0.3/ndcg@20': 0.304275,
    'cerp-noreg@0.3/recall@10': 0.325,
    'cerp-noreg@0.3/nonzero_params': 126.0,
    'cerp-noreg@0.3/target_epoch': 0.667,
    'pep@0.5/ndcg@20': 0.303742,
    'pep@0.5/recall@10': 0.35,
    'pep@0.5/nonzero_params': 197.0,
    'pep@0.5/target_epoch': 0.667,
    'pep@0.3/ndcg@20': 0.196181,
    'pep@0.3/recall@10': 0.2,
    'pep@0.3/nonzero_params': 40.0,
    'pep@0.3/target_epoch': 0.833}
REFERENCE['legacy'] = {'finetune@0.1/recall@10': 0.6444444444444443,
    'finetune@0.1/ndcg@10': 0.44571198127103917,
    'finetune@0.1/nonzero': 93.0,
    'finetune@0.2/recall@10': 0.6333333333333333,
    'finetune@0.2/ndcg@10': 0.412406223677527,
    'finetune@0.2/nonzero': 212.0,
    'full/recall@10': 0.7666666666666665,
    'full/ndcg@10': 0.5133620625222568,
    'full/nonzero': 1120.0,
    'retrain@0.1/recall@10': 0.6222222222222221,
    'retrain@0.1/ndcg@10': 0.413477762480726,
    'retrain@0.1/nonzero': 93.0,
    'retrain@0.2/recall@10': 0.6388888888888888,
    'retrain@0.2/ndcg@10': 0.4114193284454271,
    'retrain@0.2/nonzero': 212.0,
    'history0/full/loss': 0.6856363160269601,
    'history1/full/loss': 0.6585429055350167,
    'history2/prune/loss': -0.1571011883871896,
    'history3/prune/loss': 0.2724956614630563,
    'history4/prune/loss': 0.5329758644104003,
    'history5/retrain@0.2/loss': 0.6026785714285714,
    'history6/retrain@0.2/loss': 0.5610579081944057,
    'history7/retrain@0.1/loss': 0.6113839149475098,
    'history8/retrain@0.1/loss': 0.5890735217503139,
    'history9/finetune@0.2/loss': 0.641216618674142,
    'history10/finetune@0.1/loss': 0.6842255592346191,
    'snapshot0.2/step': 12.0,
    'snapshot0.1/step': 19.0}


@pytest.mark.parametrize('case', sorted(CASES))
def test_numbers_are_pinned(case, tmp_path, match_platform):
    got = CASES[case](str(tmp_path)) if case == 'harness' else CASES[case]()
    match_platform(got, {'A': REFERENCE[case],
                         'B': dict(REFERENCE[case],
                                   **REFERENCE_B.get(case, {}))})


def test_a_changed_number_matches_no_platform(match_platform):
    records = {'A': {'x': 1.0, 'y': 2.0}, 'B': {'x': 1.0, 'y': 2.5}}
    assert match_platform({'x': 1.0, 'y': 2.5}, records) == 'B'
    assert match_platform({'x': 1.0, 'y': 2.0 + 5e-7}, records) == 'A'
    with pytest.raises(pytest.fail.Exception, match='matches no recorded'):
        match_platform({'x': 1.0, 'y': 2.0 + 2e-6}, records)
    with pytest.raises(pytest.fail.Exception, match='keys'):
        match_platform({'x': 1.0}, records)


if __name__ == '__main__':  # Prints the references (run on the old code).
    torch.set_num_threads(1)
    import tempfile
    for case in sorted(CASES):
        got = (CASES[case](tempfile.mkdtemp()) if case == 'harness' else
               CASES[case]())
        print(f'REFERENCE[{case!r}] = {got!r}')
