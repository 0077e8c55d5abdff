r"""Data-parallel training (:mod:`pyg_cerp.distributed`).

In-process tests check the single-process fallbacks and the exactness of the
sharding maths; the multi-process tests launch 2 CPU ranks with ``torchrun``
(gloo, loopback only) running ``tests/_dist_worker.py``.
"""
import json
import os
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


# Two processes ###############################################################

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env['OMP_NUM_THREADS'] = '1'
    env['GLOO_SOCKET_IFNAME'] = 'lo'  # loopback only
    env['MASTER_ADDR'] = '127.0.0.1'
    for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'PYG_CERP_FAULT_RANK',
                 'PYG_CERP_FAULT_STEP', 'PYG_CERP_FAULT_MODE'):
        env.pop(name, None)
    env.update(extra)
    return env


def _torchrun(nproc: int, args: list, env: dict, timeout: float):
    cmd = [sys.executable, '-m', 'torch.distributed.run',
           f'--nproc_per_node={nproc}', '--rdzv-backend=c10d',
           f'--rdzv-endpoint=127.0.0.1:{_free_port()}', '--max-restarts=0',
           WORKER, *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - start


def test_two_processes_match_single_process(tmp_path):
    single, double = tmp_path / 'single.json', tmp_path / 'double.json'
    proc = subprocess.run([sys.executable, WORKER, str(single)], env=_env(),
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = _torchrun(2, [str(double)], _env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads(single.read_text()), json.loads(double.read_text())
    assert (a['world_size'], b['world_size']) == (1, 2)

    # Replicas stayed bitwise identical on both ranks.
    assert b['in_sync']
    # Rank 0's decisions: the same gamma schedule, the switch to retrain
    # mode in the same epoch, and the same masks.
    assert [h['gamma'] for h in a['history']] == \
        [h['gamma'] for h in b['history']]
    assert [h['retraining'] for h in a['history']] == \
        [h['retraining'] for h in b['history']]
    assert a['retraining'] and b['retraining']
    assert a['mask_P'] == b['mask_P'] and a['mask_Q'] == b['mask_Q']
    # float64 training: only the summation order of the gradients differs.
    diff = max(abs(x - y) for ra, rb in zip(a['P'], b['P'])
               for x, y in zip(ra, rb))
    assert diff < 1e-9
    for ha, hb in zip(a['history'], b['history']):
        assert hb['loss'] == pytest.approx(ha['loss'], abs=1e-9)
    assert a['metrics'].keys() == b['metrics'].keys()
    for k, v in a['metrics'].items():
        assert b['metrics'][k] == pytest.approx(v, abs=1e-12)
    # DDP all-reduces exactly the trainable parameters (float64: 8 bytes).
    comm = b['comm_prune_phase']
    assert comm['measured'] == comm['expected'] == comm['num_params'] * 8
    # In retrain mode the thresholds are frozen: only P, Q are reduced.
    assert b['comm_final']['num_params'] == comm['num_params'] // 2


@pytest.mark.parametrize('mode', ['exit', 'hang'])
def test_crashed_rank_fails_the_job(tmp_path, mode):
    out = tmp_path / 'out.json'
    env = _env(PYG_CERP_FAULT_RANK='1', PYG_CERP_FAULT_STEP='2',
               PYG_CERP_FAULT_MODE=mode, PYG_CERP_DIST_TIMEOUT='5')
    proc, elapsed = _torchrun(2, [str(out)], env, timeout=110)
    assert proc.returncode != 0
    assert not out.exists()  # rank 0 never reached the end
    if mode == 'hang':  # rank 0 gave up after the collective timeout
        assert 'rank 0' in proc.stderr or '[rank0]' in proc.stderr
    assert elapsed < 110
