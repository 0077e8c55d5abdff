r"""Training on several processes through the one training stack
(:mod:`pyg_cerp.distributed` and the :obj:`world` arguments of
:mod:`pyg_cerp.train`).

In-process tests check that world size 1 is the single-process code path and
the exactness of the sharding maths; the multi-process tests launch 2 CPU
ranks with ``torchrun`` (gloo, loopback only) running
``python -m pyg_cerp.train`` or ``tests/_dist_worker.py``. A dying rank is
simulated by killing a worker process from the test.
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

from pyg_cerp.distributed import (DistContext, RowPartition,
                                  all_reduce_gradients, init_distributed,
                                  parameters_in_sync, reduce_metric_sums,
                                  sync_state)
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
    assert ctx.all_gather(t) is t
    assert ctx.broadcast_object({'a': 1}) == {'a': 1}
    assert ctx.global_count(7) == 7
    assert torch.equal(ctx.shard(5), torch.arange(5))
    lin = torch.nn.Linear(2, 1)
    lin(torch.ones(1, 2)).sum().backward()
    grad = lin.weight.grad.clone()
    all_reduce_gradients(lin.parameters(), ctx)
    assert torch.equal(lin.weight.grad, grad)
    assert parameters_in_sync(lin, ctx)
    assert ctx.bytes_exchanged == 0


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


def test_backend_needs_a_gpu_per_local_process(monkeypatch):
    # Two local processes on a machine with one GPU (as on the H200 machine,
    # where the second rank asked for cuda:1): the default is gloo on the CPU,
    # and an explicit nccl names the problem instead of 'invalid ordinal'.
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    for name in ('WORLD_SIZE', 'RANK'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    monkeypatch.setenv('LOCAL_RANK', '1')
    ctx = init_distributed()
    assert ctx.device == torch.device('cpu')
    with pytest.raises(RuntimeError, match='local rank 1 sees 1 GPU'):
        init_distributed(backend='nccl')


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
    shards = [make().shard(r, world) for r in range(world)]
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
            assert all(torch.equal(a, b) for a, b in
                       zip(got[r].global_batch, (u, p, n)))
    # The last batch (203 = 4 * 50 + 3) gives every rank one triple.
    assert [g[-1][0].numel() for g in per_rank] == [1, 1, 1]
    with pytest.raises(ValueError, match='single-process'):
        BPRSampler(ei, 20, 30, rank=1, world_size=2).shard(0, 2)
    with pytest.raises(ValueError, match="'rank' must be in"):
        make().shard(3, 3)


def test_loss_shares_give_global_mean_gradient():
    # The ranks' parts of the loss (share n_r / n of the mean over their
    # triples) have summed gradients equal to the global-mean gradient, also
    # for uneven shares.
    torch.manual_seed(0)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(11, 4, dtype=torch.float64)
    (x @ w).pow(2).mean().backward()
    ref, w.grad = w.grad.clone(), None
    world = 3
    grads = []
    for r in range(world):
        xr = x[r::world]
        ((xr @ w).pow(2).mean() * (xr.size(0) / x.size(0))).backward()
        grads.append(w.grad.clone())
        w.grad = None
    assert torch.allclose(sum(grads), ref, atol=1e-12)


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


def test_sharded_metric_sums_combine_to_ranking_metrics():
    from pyg_cerp.metrics import ranking_metrics
    torch.manual_seed(0)
    u, i = torch.randn(15, 4), torch.randn(25, 4)
    tr = torch.stack([torch.randint(15, (40, )), torch.randint(25, (40, ))])
    te = torch.stack([torch.randint(15, (30, )), torch.randint(25, (30, ))])
    ref = ranking_metrics(u, i, tr, te, ks=(5, 10))
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


def test_row_partition_single_process_equals_propagation():
    from pyg_cerp.nn import symmetric_lightgcn_propagation
    rec, _ = _tiny_recommender()
    x = torch.randn(27, 8, requires_grad=True)
    w = torch.randn(27, 8)
    ref = symmetric_lightgcn_propagation(rec.adj, x, rec.model.alpha)
    (ref * w).sum().backward()
    grad, x.grad = x.grad.clone(), None
    part = RowPartition(rec.adj, DistContext())
    out = part(x, rec.model.alpha)
    (out * w).sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(x.grad, grad, atol=1e-6)
    assert part.block == 27 and rec.partition(DistContext()) is rec
    assert rec.row_partition is None  # one process: nothing to split
    with pytest.raises(ValueError, match="'alpha'"):
        part(x, rec.model.alpha.clone().requires_grad_())
    with pytest.raises(TypeError, match='sparse'):
        RowPartition(rec.adj.to_dense(), DistContext())


def test_train_step_world_size_1_is_the_single_process_step():
    from pyg_cerp.train import PruningScheduler, make_optimizer, train_step
    outs, params = [], []
    for world in (None, DistContext()):
        rec, ei = _tiny_recommender()
        opt = make_optimizer(rec, lr=0.01)
        sched = PruningScheduler(rec.embedding, [0.5], 'meta', 0.5, 0.5, 1,
                                 1)
        sched.on_train_start()
        for batch in BPRSampler(ei, 12, 15, num_negatives=2, batch_size=16,
                                seed=0):
            outs.append(train_step(rec, opt, batch, sched, 100., l2_reg=1e-3,
                                   world=world))
        params.append([p.detach().clone() for p in rec.parameters()])
    half = len(outs) // 2
    for a, b in zip(outs[:half], outs[half:]):
        assert torch.equal(b['loss'], a['loss'])  # bit-identical
        assert b['reached'] == a['reached']
    for a, b in zip(*params):
        assert torch.equal(a, b)


def test_evaluate_world_size_1_equals_evaluate():
    from pyg_cerp.train import evaluate
    rec, ei = _tiny_recommender()
    train, test = ei[:, :45], ei[:, 45:]
    for max_users in (None, 5):
        ref = evaluate(rec, train, test, (3, 5), max_users=max_users, seed=2)
        out = evaluate(rec, train, test, (3, 5), max_users=max_users, seed=2,
                       world=DistContext())
        assert out == ref


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


def test_runner_world_size_1_equals_runner(tmp_path):
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
    b = CERPRunner(cfg, data, build, sampler, world=DistContext(),
                   out_dir=str(tmp_path / 'b'), **quiet).run()
    assert list(a['results']) == ['retrain@0.9']
    assert a['results'] == {k: {**v, 'train_time': a['results'][k][
        'train_time']} for k, v in b['results'].items()}
    assert [h['loss'] for h in a['history']] == \
        [h['loss'] for h in b['history']]
    assert (tmp_path / 'b' / 'checkpoint.pt').exists()
    with pytest.raises(TypeError, match='DistContext'):
        CERPRunner(cfg, data, build, sampler, world=1)


# Two processes ###############################################################
#
# These launch ``torchrun --nproc_per_node=2`` (gloo, loopback only) on the
# pipeline's own entry point, python -m pyg_cerp.train, and compare with a
# single-process run of the same command (same global batch and seed).

EXAMPLE = ['-m', 'pyg_cerp.train']
# Small and fast, with both targets reached during phase 1, so the run
# covers pruning, the mask snapshots, the DDP rebuild for each retrain stage
# (thresholds frozen) and the sharded evaluation.
SMALL = ['--preset', 'drive', '--no-baseline', '--prune-epochs', '4',
         '--retrain-epochs', '1',
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
                 'MASTER_PORT'):
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


def _entry(script) -> list:
    return [script] if isinstance(script, str) else list(script)


def _torchrun_cmd(nproc: int, script: str, args: list) -> list:
    return [sys.executable, '-m', 'torch.distributed.run',
            f'--nproc_per_node={nproc}', '--rdzv-backend=c10d',
            f'--rdzv-endpoint=127.0.0.1:{_free_port()}', '--max-restarts=0',
            *_entry(script), *args]


def _torchrun(nproc: int, script: str, args: list, env: dict,
              timeout: float):
    cmd = _torchrun_cmd(nproc, script, args)
    start = time.monotonic()
    proc = _run(cmd, env, timeout)
    return proc, time.monotonic() - start


def _single(script: str, args: list, timeout: float = 120):
    return _run([sys.executable, *_entry(script), *args], _env(), timeout)


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


def _worker_json(tmp_path, mode: str, nproc: int = 2) -> dict:
    # Runs tests/_dist_worker.py in `mode` on `nproc` ranks; returns its
    # result.
    out = tmp_path / 'result.json'
    proc, _ = _torchrun(nproc, WORKER, [str(out), mode], _env(), timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_partitioned_propagation_matches_single_process(tmp_path):
    # Each rank propagates its row block (N = 89 over 2 ranks: uneven) and
    # weights the output with its own loss; the summed gradient is the
    # single-process gradient of the summed losses.
    res = _worker_json(tmp_path, '--propagation')
    assert res['world_size'] == 2
    assert res['forward'] < 1e-12
    assert res['grad'] < 1e-12 * res['grad_scale']
    # Contiguous blocks that cut the non-zeros in halves (to within a row),
    # here the 37 users (the graph is bipartite) and the 52 items.
    bounds, row_nnz = res['bounds'], res['row_nnz']
    assert bounds[0] == 0 and bounds[-1] == res['num_nodes'] == 89
    nnz = [sum(row_nnz[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert abs(nnz[0] - sum(row_nnz) / 2) <= max(row_nnz)
    assert bounds == [0, 37, 89] and res['block'] == 52
    # Rank 0 returns the gradient of its rows only.
    assert (res['start'], res['end']) == (0, 37)
    assert res['local_grad_rows'] == 37
    # 3 layers: 3 all_gathers forward, an all_reduce and 2 all_gathers
    # backward (slots of 52 x 8 float64), and the test's all_reduce.
    block, full = 52 * 8 * 8, 89 * 8 * 8
    assert res['bytes'] == 5 * block + 2 * full


def test_partitioned_propagation_three_ranks(tmp_path):
    # W = 3: the middle block does not fill its slot, so the gathered rows
    # are concatenated into node order (the other path of `gather`).
    res = _worker_json(tmp_path, '--propagation', nproc=3)
    assert res['world_size'] == 3
    assert res['forward'] < 1e-12
    assert res['grad'] < 1e-12 * res['grad_scale']
    bounds, row_nnz = res['bounds'], res['row_nnz']
    sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    nnz = [sum(row_nnz[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert bounds[0] == 0 and bounds[-1] == 89 and min(sizes) > 0
    assert max(abs(z - sum(row_nnz) / 3) for z in nnz) <= max(row_nnz)
    assert res['block'] == max(sizes) and sizes[1] < res['block']
    assert res['local_grad_rows'] == sizes[0]
    # Each all_gather sends this rank's slot to 2 ranks (ring: (W-1) slots).
    block, full = res['block'] * 8 * 8, 89 * 8 * 8
    assert res['bytes'] == 5 * 2 * block + 2 * (2 * full * 2 // 3)


def test_scheduler_decisions_are_rank_0s(tmp_path):
    # Two processes whose schedulers disagree end with rank 0's state and
    # rank 0's newly reached targets on both ranks.
    res = _worker_json(tmp_path, '--check-sync')
    assert res == {'agree': [], 'reached': [], 'same': True,
                   'num_steps': 0, 'snapshots': 0, 'syncs': 1}


def _worker_pid(launcher: int, rank: int) -> int:
    # The torchrun worker with RANK=rank among the launcher's descendants.
    todo, seen = [launcher], []
    while todo:
        pid = todo.pop()
        try:
            with open(f'/proc/{pid}/task/{pid}/children') as f:
                todo += [int(c) for c in f.read().split()]
            with open(f'/proc/{pid}/environ', 'rb') as f:
                env = f.read().split(b'\0')
        except (FileNotFoundError, ProcessLookupError):
            continue
        if f'RANK={rank}'.encode() in env and b'LOCAL_RANK' in b' '.join(
                env):
            return pid
        seen.append(pid)
    raise AssertionError(f'No worker of rank {rank} among {seen}')


@pytest.mark.parametrize('mode', ['exit', 'hang'])
def test_dying_rank_ends_the_job(synthetic_folder, tmp_path, mode):
    # Once training runs (the first checkpoint is written), the test kills
    # rank 1 (SIGKILL) or freezes it (SIGSTOP): rank 0 fails at its next
    # collective, at once or after the collective timeout
    # (PYG_CERP_DIST_TIMEOUT=5 s), exits non-zero, and torchrun stops the
    # other rank (a frozen one is killed after torchrun's 30 s SIGTERM
    # grace): the job ends, non-zero, within a bounded time (here 5 + 30 s
    # plus slack for a loaded machine).
    out = tmp_path / 'out'
    args = ['--dataset', str(synthetic_folder), '--out', str(out)] + SMALL
    args[args.index('--retrain-epochs') + 1] = '500'  # runs for minutes
    proc = subprocess.Popen(
        _torchrun_cmd(2, EXAMPLE, args), env=_env(PYG_CERP_DIST_TIMEOUT='5'),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 100
        while not (out / 'checkpoint.pt').exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, 'training did not start'
            time.sleep(0.2)
        os.kill(_worker_pid(proc.pid, 1),
                signal.SIGKILL if mode == 'exit' else signal.SIGSTOP)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=150)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0
    assert not (out / 'results.json').exists()
    assert 'ChildFailedError' in err or 'FAILED' in err
    assert elapsed < 120


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
def test_training_stack_float64_matches_single_process(tmp_path):
    # The training stack in a hand-written loop (tests/_dist_worker.py:
    # sharded sampler, train_step and evaluate with world, partitioned
    # LightGCN), in float64: two processes equal one to 1e-9.
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
    # Bytes per step and rank (float64, W = 2, ring: half of each
    # all-reduced tensor twice, the other rank's block of each all_gather):
    # the gradients of exactly the trainable parameters (P, Q, S_P, S_Q in
    # phase 1; P, Q once the thresholds are frozen), the L = 2 layer
    # exchanges forward and backward, and the scheduler digest in phase 1.
    assert a['bytes_per_step'] == {'False': 0, 'True': 0}
    n, d = b['num_nodes'], b['dim']
    block = b['block'] * d * 8
    assert b['block'] >= -(-n // 2)
    propagation = 2 * block + n * d * 8 + block
    digest = 2 * (5 + 1) * 8
    assert b['bytes_per_step']['False'] == \
        propagation + b['num_params']['False'] * 8 + digest
    assert b['bytes_per_step']['True'] == \
        propagation + b['num_params']['True'] * 8


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
