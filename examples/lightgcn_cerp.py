r"""CERP on PyG's LightGCN: full-table baseline, pruning (phase 1) and
retraining per memory target (phase 2), with resumable checkpoints.

Example::

    python examples/lightgcn_cerp.py --root /work/shared/data
    python examples/lightgcn_cerp.py --dataset path/to/folder --subset 500 800

Data-parallel on N processes (see docs/distributed.md; --batch-size is the
global batch, split over the processes)::

    torchrun --nproc_per_node=2 examples/lightgcn_cerp.py --root ...
"""
import argparse

import torch
from torch_geometric.nn.models import LightGCN

from _common import add_common_arguments, config_from_args, load_data, \
    main_loop
from pyg_cerp.train import CERPConfig, LightGCNRecommender
from pyg_cerp.nn import use_symmetric_propagation
from pyg_cerp.utils import lightgcn_adjacency

DEFAULTS = CERPConfig()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_common_arguments(parser, DEFAULTS)
    parser.add_argument('--num-layers', type=int, default=3,
                        help='LightGCN layers (default: 3)')
    args = parser.parse_args(argv)
    config = config_from_args(args, DEFAULTS, parser, {'num_layers': 0})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_data(args)
    adj = lightgcn_adjacency(data.train, data.num_users, data.num_items)
    num_nodes = data.num_users + data.num_items

    def build(embedding: torch.nn.Module) -> LightGCNRecommender:
        model = LightGCN(num_nodes, config.dim, args.num_layers,
                         normalize=False)
        use_symmetric_propagation(model)
        model.embedding = embedding
        model.reset_parameters()
        return LightGCNRecommender(model, adj, data.num_users, data.num_items)

    return main_loop(args, config, data, build, 'lightgcn_cerp')


if __name__ == '__main__':
    main()
