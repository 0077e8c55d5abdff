r"""Data-parallel training (:mod:`pyg_cerp.distributed`).

In-process tests check the single-process fallbacks and the exactness of the
sharding maths; the multi-process tests launch 2 CPU ranks with ``torchrun``
(gloo, loopback only) running ``tests/_dist_worker.py``.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from pyg_cerp.distributed import (DistContext, LossModule, ShardedBPRSampler,
                                  allreduce_bytes_per_step,
                                  init_distributed, maybe_inject_fault,
                                  parameters_in_sync, reduce_metric_sums,
                                  scaled_backward, sharded_ranking_metrics,
                                  sync_state, unwrap)
from pyg_cerp.sampling import BPRSampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', '_dist_worker.py')


# In-process ##################################################################

def test_single_process_context_is_a_no_op(monkeypatch):
    for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.backend) == (0, 1, None)
    assert ctx.is_main and not ctx.is_distributed
    t = torch.tensor([1., 2.])
    assert ctx.all_reduce(t) is t
    assert ctx.broadcast_object({'a': 1}) == {'a': 1}
    assert ctx.loss_scale(7) == 1.
    assert torch.equal(ctx.shard(5), torch.arange(5))
    lin = torch.nn.Linear(2, 1)
    assert ctx.wrap(lin) is lin
    assert parameters_in_sync(lin, ctx)
    assert allreduce_bytes_per_step(lin)['expected'] == 3 * 4


def test_context_validation(monkeypatch):
    with pytest.raises(ValueError, match='rank'):
        DistContext(rank=2, world_size=2, backend='gloo')
    with pytest.raises(ValueError, match='backend'):
        DistContext(rank=0, world_size=2)
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '0')
    monkeypatch.delenv('MASTER_ADDR', raising=False)
    with pytest.raises(RuntimeError, match='torchrun'):
        init_distributed(backend='gloo')
    with pytest.raises(ValueError, match="'backend'"):
        init_distributed(backend='mpi')


def test_shards_are_disjoint_and_cover():
    shards = [DistContext(r, 3, backend='gloo').shard(10) for r in range(3)]
    assert torch.equal(torch.cat(shards).sort()[0], torch.arange(10))


def test_sharded_sampler_reproduces_single_process_batches():
    gen = torch.Generator().manual_seed(0)
    ei = torch.stack([torch.randint(20, (203, ), generator=gen),
                      torch.randint(30, (203, ), generator=gen)])

    def make():
        return BPRSampler(ei, 20, 30, num_negatives=2, batch_size=50,
                          seed=4)

    world = 3
    ref = list(make())
    shards = [ShardedBPRSampler(make(), r, world) for r in range(world)]
    for s in shards:
        s.set_epoch(0)
    per_rank = [list(s) for s in shards]
    assert all(len(b) == len(ref) == len(shards[0]) for b in per_rank)
    for k, (u, p, n) in enumerate(ref):
        got = [per_rank[r][k] for r in range(world)]
        assert sum(g[0].numel() for g in got) == u.numel()
        for r in range(world):  # rank r holds positions r, r + W, ...
            assert torch.equal(got[r][0], u[r::world])
            assert torch.equal(got[r][1], p[r::world])
            assert torch.equal(got[r][2], n[r::world])
    # The last batch (203 = 4 * 50 + 3) gives every rank one triple.
    assert [g[-1][0].numel() for g in per_rank] == [1, 1, 1]
    with pytest.raises(ValueError, match='single-process'):
        ShardedBPRSampler(BPRSampler(ei, 20, 30, rank=1, world_size=2), 0, 2)


def test_loss_scale_gives_global_mean_gradient():
    # Simulate DDP's averaging over uneven shards in one process: the
    # average of the scaled shard gradients is the global-mean gradient.
    torch.manual_seed(0)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(11, 4, dtype=torch.float64)
    (x @ w).pow(2).mean().backward()
    ref, w.grad = w.grad.clone(), None
    world = 3
    grads = []
    for r in range(world):
        xr = x[r::world]
        ctx = DistContext(r, world, backend='gloo')
        scale = ctx.loss_scale(xr.size(0), global_count=x.size(0))
        ((xr @ w).pow(2).mean() * scale).backward()
        grads.append(w.grad.clone())
        w.grad = None
    assert torch.allclose(sum(grads) / world, ref, atol=1e-12)


def test_scaled_backward_empty_shard_gives_zero_gradient():
    w = torch.ones(3, requires_grad=True)
    loss = (torch.empty(0, 3) @ w).mean()  # nan
    ctx = DistContext()
    out = scaled_backward(loss, 0, ctx, global_count=5)
    assert float(out) == 0.
    assert torch.equal(w.grad, torch.zeros(3))


def test_loss_module_and_unwrap():
    lin = torch.nn.Linear(3, 1)
    mod = LossModule(lin, lambda m, x: m(x).sum())
    assert unwrap(mod) is lin
    assert mod(torch.ones(2, 3)).shape == ()
    with pytest.raises(TypeError, match='callable'):
        LossModule(lin, 3)


def test_sync_state_and_metric_reduction_single_process():
    class Sched:
        def __init__(self):
            self.gamma = 1.

        def state_dict(self):
            return {'gamma': self.gamma}

        def load_state_dict(self, s):
            self.gamma = s['gamma']

    s = Sched()
    assert sync_state(s, DistContext()) is s
    out = reduce_metric_sums({'recall@20': 3., 'ndcg@20': 1.5}, 6,
                             DistContext())
    assert out == {'ndcg@20': 0.25, 'recall@20': 0.5}
    with pytest.raises(ValueError, match='No user'):
        reduce_metric_sums({'a': 0.}, 0, DistContext())


def test_sharded_metrics_single_process_equals_ranking_metrics():
    from pyg_cerp.metrics import ranking_metrics
    torch.manual_seed(0)
    u, i = torch.randn(15, 4), torch.randn(25, 4)
    tr = torch.stack([torch.randint(15, (40, )), torch.randint(25, (40, ))])
    te = torch.stack([torch.randint(15, (30, )), torch.randint(25, (30, ))])
    ref = ranking_metrics(u, i, tr, te, ks=(5, 10))
    assert sharded_ranking_metrics(u, i, tr, te, DistContext(),
                                   ks=(5, 10)) == ref
    # Shards evaluated separately and combined give the same numbers.
    parts = []
    for r in range(2):
        ctx = DistContext(r, 2, backend='gloo')
        parts.append(ranking_metrics(u, i, tr, te, ks=(5, 10),
                                     user_ids=ctx.shard(15),
                                     return_sums=True))
    count = sum(p.pop('num_users') for p in parts)
    combined = {k: sum(p[k] for p in parts) / count for k in parts[0]}
    for k, v in ref.items():
        assert combined[k] == pytest.approx(v, abs=1e-12)


def test_fault_injection_only_on_named_rank(monkeypatch):
    monkeypatch.setenv('PYG_CERP_FAULT_RANK', '1')
    monkeypatch.setenv('PYG_CERP_FAULT_STEP', '2')
    maybe_inject_fault(DistContext(), 2)  # rank 0: nothing
    ctx1 = DistContext(1, 2, backend='gloo')
    maybe_inject_fault(ctx1, 1)  # other step: nothing
    with pytest.raises(RuntimeError, match='Injected fault'):
        maybe_inject_fault(ctx1, 2)


def _tiny_recommender(seed: int = 0):
    from torch_geometric.nn.models import LightGCN

    from pyg_cerp.nn import CompositionalEmbedding
    from pyg_cerp.train import LightGCNRecommender
    from pyg_cerp.utils.adjacency import lightgcn_adjacency
    gen = torch.Generator().manual_seed(1)
    ei = torch.stack([torch.randint(12, (60, ), generator=gen),
                      torch.randint(15, (60, ), generator=gen)])
    torch.manual_seed(seed)
    model = LightGCN(27, 8, num_layers=2, normalize=False)
    from pyg_cerp.nn import use_symmetric_propagation
    use_symmetric_propagation(model)
    model.embedding = CompositionalEmbedding(27, 8, 6, threshold_init=-3.)
    adj = lightgcn_adjacency(ei, 12, 15)
    return LightGCNRecommender(model, adj, 12, 15), ei


def test_ddp_train_step_single_process_equals_train_step():
    from pyg_cerp.distributed import DDPTrainStep
    from pyg_cerp.train import PruningScheduler, make_optimizer, train_step
    outs, params = [], []
    for use_ddp_step in (False, True):
        rec, ei = _tiny_recommender()
        opt = make_optimizer(rec, lr=0.01)
        sched = PruningScheduler(rec.embedding, [0.5], 'meta', 0.5, 0.5, 1,
                                 1)
        sched.on_train_start()
        step = DDPTrainStep(rec, DistContext()) if use_ddp_step else \
            train_step
        sampler = ShardedBPRSampler.from_context(
            BPRSampler(ei, 12, 15, num_negatives=2, batch_size=16, seed=0),
            DistContext())
        for batch in sampler:
            outs.append(step(rec, opt, batch, sched, 100.))
        params.append([p.detach().clone() for p in rec.parameters()])
    half = len(outs) // 2
    for a, b in zip(outs[:half], outs[half:]):
        assert b['loss'] == pytest.approx(a['loss'], abs=1e-6)
        assert b['reached'] == a['reached']
    for a, b in zip(*params):
        assert torch.allclose(a, b, atol=1e-6)
    rec, _ = _tiny_recommender()
    with pytest.raises(ValueError, match='another recommender'):
        DDPTrainStep(rec, DistContext())(_tiny_recommender()[0], None,
                                         (None, None, None))


def test_sharded_evaluate_single_process_equals_evaluate():
    from pyg_cerp.distributed import sharded_evaluate
    from pyg_cerp.train import evaluate
    rec, ei = _tiny_recommender()
    train, test = ei[:, :45], ei[:, 45:]
    for max_users in (None, 5):
        ref = evaluate(rec, train, test, (3, 5), max_users=max_users, seed=2)
        out = sharded_evaluate(rec, train, test, (3, 5), DistContext(),
                               max_users=max_users, seed=2)
        assert out.keys() == ref.keys()
        for k, v in ref.items():
            assert out[k] == pytest.approx(v, abs=1e-12)


def test_scheduler_digest_tracks_decisions():
    from pyg_cerp.distributed import (scheduler_digest,
                                      sync_scheduler_decisions)
    from pyg_cerp.train import PruningScheduler
    rec, _ = _tiny_recommender()
    sched = PruningScheduler(rec.embedding, [0.9, 0.5], 'meta', 1., 0.5, 1,
                             1)
    before = scheduler_digest(sched)
    assert before.dtype == torch.float64 and before.numel() == 5 + 2
    sched.step()
    after = scheduler_digest(sched)
    assert not torch.equal(before, after)  # the step count moved
    assert sync_scheduler_decisions(sched, [0.9], DistContext()) == [0.9]


def test_distributed_runner_single_process_equals_runner(tmp_path):
    from pyg_cerp.distributed import DistributedCERPRunner
    from pyg_cerp.train import CERPConfig, CERPRunner, Interactions
    _, ei = _tiny_recommender()
    data = Interactions(ei[:, :50], ei[:, 50:], 12, 15)
    cfg = CERPConfig(dim=8, bucket_size=6, targets=(0.9, ),
                     target_unit='meta', baseline_epochs=0, prune_epochs=2,
                     retrain_epochs=1, batch_size=16, num_negatives=2,
                     threshold_init=-3., threshold_lr=0.2, ks=(5, ))

    def build(embedding):
        rec, _ = _tiny_recommender()
        rec.model.embedding = embedding
        rec.model.reset_parameters()
        return rec

    def sampler(seed):
        return BPRSampler(data.train, 12, 15, num_negatives=2,
                          batch_size=16, seed=seed)

    quiet = dict(log=lambda *a: None)
    a = CERPRunner(cfg, data, build, sampler, out_dir=str(tmp_path / 'a'),
                   **quiet).run()
    b = DistributedCERPRunner(cfg, data, build, sampler, world=DistContext(),
                              out_dir=str(tmp_path / 'b'), **quiet).run()
    assert list(a['results']) == ['retrain@0.9']
    assert a['results'] == {k: {**v, 'train_time': a['results'][k][
        'train_time']} for k, v in b['results'].items()}
    assert (tmp_path / 'b' / 'checkpoint.pt').exists()
    with pytest.raises(TypeError, match='DistContext'):
        DistributedCERPRunner(cfg, data, build, sampler, world=None)


# Two processes ###############################################################
#
# These launch ``torchrun --nproc_per_node=2`` (gloo, loopback only) on the
# pipeline's own entry point, examples/lightgcn_cerp.py, and compare with a
# single-process run of the same command (same global batch and seed).

EXAMPLE = os.path.join(ROOT, 'examples', 'lightgcn_cerp.py')
# Small and fast, with both targets reached during phase 1, so the run
# covers pruning, the mask snapshots, the DDP rebuild for each retrain stage
# (thresholds frozen) and the sharded evaluation.
SMALL = ['--no-baseline', '--prune-epochs', '4', '--retrain-epochs', '1',
         '--batch-size', '512', '--dim', '16', '--bucket-size', '40',
         '--targets', '0.8', '0.7', '--target-unit', 'meta',
         '--threshold-init', '-3', '--threshold-lr', '0.05', '--no-progress']


def _write_synthetic(folder, num_users: int = 300, num_items: int = 400):
    # LightGCN-format files: users prefer a window of items (learnable).
    gen = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True)
    with open(folder / 'train.txt', 'w') as tr, \
            open(folder / 'test.txt', 'w') as te:
        for u in range(num_users):
            start = u * num_items // num_users
            items = (start + torch.randint(41, (12, ), generator=gen)) \
                % num_items
            items = items.unique()
            items = items[torch.randperm(items.numel(), generator=gen)]
            k = max(1, items.numel() // 5)
            te.write(' '.join(map(str, [u] + items[:k].tolist())) + '\n')
            tr.write(' '.join(map(str, [u] + items[k:].tolist())) + '\n')
    return folder


@pytest.fixture(scope='module')
def synthetic_folder(tmp_path_factory):
    return _write_synthetic(tmp_path_factory.mktemp('dist') / 'syn')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env['OMP_NUM_THREADS'] = '1'
    env['GLOO_SOCKET_IFNAME'] = 'lo'  # loopback only
    for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR',
                 'MASTER_PORT', 'PYG_CERP_FAULT_RANK', 'PYG_CERP_FAULT_STEP',
                 'PYG_CERP_FAULT_MODE'):
        env.pop(name, None)
    env.update(extra)
    return env


def _run(cmd: list, env: dict, timeout: float):
    # Runs cmd in its own session; on timeout, kills the whole process group
    # (torchrun and its workers), so that no worker outlives a failed test.
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"'{' '.join(cmd)}' did not finish within {timeout} s "
                    f"(hang); stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torchrun(nproc: int, script: str, args: list, env: dict,
              timeout: float):
    cmd = [sys.executable, '-m', 'torch.distributed.run',
           f'--nproc_per_node={nproc}', '--rdzv-backend=c10d',
           f'--rdzv-endpoint=127.0.0.1:{_free_port()}', '--max-restarts=0',
           script, *args]
    start = time.monotonic()
    proc = _run(cmd, env, timeout)
    return proc, time.monotonic() - start


def _single(script: str, args: list, timeout: float = 120):
    return _run([sys.executable, script, *args], _env(), timeout)


def _compare_runs(a_dir, b_dir) -> None:
    from pyg_cerp.utils.io import safe_load
    a = json.loads((a_dir / 'results.json').read_text())
    b = json.loads((b_dir / 'results.json').read_text())
    assert (a['world_size'], b['world_size']) == (1, 2)
    assert a['pruning']['reached'] == b['pruning']['reached']
    assert a['results'].keys() == b['results'].keys()
    # Metrics: the sharded evaluation sums float64 per-user values in another
    # order; the models agree up to float32 summation order of the
    # all-reduced gradients.
    for stage, res in a['results'].items():
        for key, value in res.items():
            if key.startswith(('recall@', 'ndcg@')):
                assert b['results'][stage][key] == \
                    pytest.approx(value, abs=1e-6), (stage, key)
            elif key in ('nonzero', 'full_fraction', 'meta_density'):
                assert b['results'][stage][key] == value, (stage, key)
    assert len(a['history']) == len(b['history'])
    for ha, hb in zip(a['history'], b['history']):
        assert (ha['stage'], ha['epoch'], ha['steps'], ha['nonzero'],
                ha['gamma']) == (hb['stage'], hb['epoch'], hb['steps'],
                                 hb['nonzero'], hb['gamma'])
        assert hb['loss'] == pytest.approx(ha['loss'], abs=1e-5)
    # Rank 0's mask snapshots: same steps, identical masks.
    sa = safe_load(a_dir / 'checkpoint.pt')['prune']['scheduler']
    sb = safe_load(b_dir / 'checkpoint.pt')['prune']['scheduler']
    assert len(sa['snapshots']) == len(sb['snapshots']) == 2
    for x, y in zip(sa['snapshots'], sb['snapshots']):
        assert (x['target'], x['step']) == (y['target'], y['step'])
        for mx, my in zip(x['masks'], y['masks']):
            assert torch.equal(mx, my)


def test_two_processes_match_single_process(synthetic_folder, tmp_path):
    args = ['--dataset', str(synthetic_folder)] + SMALL
    one, two = tmp_path / 'one', tmp_path / 'two'
    proc = _single(EXAMPLE, args + ['--out', str(one)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = _torchrun(2, EXAMPLE, args + ['--out', str(two)], _env(),
                        timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'data-parallel: 2 ranks (gloo)' in proc.stdout
    # Only rank 0 printed the results table.
    assert proc.stdout.count('| model | memory') == 1
    _compare_runs(one, two)


def test_scheduler_decisions_are_rank_0s(tmp_path):
    # Two processes whose schedulers disagree end with rank 0's state and
    # rank 0's newly reached targets on both ranks.
    out = tmp_path / 'sync.json'
    proc, _ = _torchrun(2, WORKER, ['--check-sync', str(out)], _env(),
                        timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res == {'agree': [], 'reached': [], 'same': True,
                   'num_steps': 0, 'snapshots': 0, 'syncs': 1}


@pytest.mark.parametrize('mode', ['exit', 'hang'])
def test_crashed_rank_fails_the_job(synthetic_folder, tmp_path, mode):
    # Rank 1 dies (os._exit) or hangs at its 3rd training step: rank 0 gets
    # a gloo error at once ('exit') or after the collective timeout
    # ('hang', PYG_CERP_DIST_TIMEOUT=5 s), exits non-zero, and torchrun stops
    # the other rank: the job fails instead of hanging.
    out = tmp_path / 'out'
    env = _env(PYG_CERP_FAULT_RANK='1', PYG_CERP_FAULT_STEP='2',
               PYG_CERP_FAULT_MODE=mode, PYG_CERP_DIST_TIMEOUT='5')
    args = ['--dataset', str(synthetic_folder), '--out', str(out)] + SMALL
    proc, elapsed = _torchrun(2, EXAMPLE, args, env, timeout=110)
    assert proc.returncode != 0
    assert not (out / 'results.json').exists()
    assert 'ChildFailedError' in proc.stderr or 'FAILED' in proc.stderr
    assert elapsed < 110


@pytest.mark.slow
def test_two_processes_resume(synthetic_folder, tmp_path):
    # Stop after 3 epochs, resume under torchrun (rank 0 reads the
    # checkpoint and broadcasts it): the same results as without stopping.
    args = ['--dataset', str(synthetic_folder)] + SMALL
    full, part = tmp_path / 'full', tmp_path / 'part'
    for out, extra in ((full, []), (part, ['--stop-after', '3']),
                       (part, ['--resume'])):
        proc, _ = _torchrun(2, EXAMPLE, args + ['--out', str(out)] + extra,
                            _env(), timeout=150)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resumed from' in proc.stdout
    a = json.loads((full / 'results.json').read_text())
    b = json.loads((part / 'results.json').read_text())
    assert [h['loss'] for h in a['history']] == \
        [h['loss'] for h in b['history']]
    for stage, res in a['results'].items():
        for key, value in res.items():
            if key != 'train_time':
                assert b['results'][stage][key] == value


@pytest.mark.slow
def test_building_blocks_float64_match_single_process(tmp_path):
    # The building blocks in a hand-written loop (tests/_dist_worker.py), in
    # float64: the two-process run equals the single-process run to 1e-9.
    single, double = tmp_path / 'single.json', tmp_path / 'double.json'
    proc = _single(WORKER, [str(single)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = _torchrun(2, WORKER, [str(double)], _env(), timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads(single.read_text()), json.loads(double.read_text())
    assert (a['world_size'], b['world_size']) == (1, 2)
    assert b['in_sync']  # replicas bitwise identical on both ranks
    assert [h['gamma'] for h in a['history']] == \
        [h['gamma'] for h in b['history']]
    assert [h['retraining'] for h in a['history']] == \
        [h['retraining'] for h in b['history']]
    assert a['retraining'] and b['retraining']
    assert a['mask_P'] == b['mask_P'] and a['mask_Q'] == b['mask_Q']
    diff = max(abs(x - y) for ra, rb in zip(a['P'], b['P'])
               for x, y in zip(ra, rb))
    assert diff < 1e-9
    for ha, hb in zip(a['history'], b['history']):
        assert hb['loss'] == pytest.approx(ha['loss'], abs=1e-9)
    for k, v in a['metrics'].items():
        assert b['metrics'][k] == pytest.approx(v, abs=1e-12)
    # DDP all-reduces exactly the trainable parameters (float64: 8 bytes);
    # in retrain mode the thresholds are frozen: only P, Q are reduced.
    comm = b['comm_prune_phase']
    assert comm['measured'] == comm['expected'] == comm['num_params'] * 8
    assert b['comm_final']['num_params'] == comm['num_params'] // 2


@pytest.mark.slow  # about 1 minute: Gowalla is read by 3 processes
@pytest.mark.data
def test_gowalla_slice_two_processes(tmp_path):
    root = os.environ.get('PYG_CERP_DATA')
    if not root or not os.path.isdir(os.path.join(root, 'gowalla')):
        pytest.skip('PYG_CERP_DATA/gowalla not found')
    args = ['--dataset', 'gowalla', '--root', root, '--subset', '3000',
            '4000'] + SMALL
    args[args.index('--targets') + 1:args.index('--targets') + 3] = \
        ['0.9', '0.8']
    one, two = tmp_path / 'one', tmp_path / 'two'
    proc = _single(EXAMPLE, args + ['--out', str(one)], timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = _torchrun(2, EXAMPLE, args + ['--out', str(two)], _env(),
                        timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _compare_runs(one, two)
