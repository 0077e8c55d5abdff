r"""CERP on an NCF-style MLP scorer: full-table baseline, pruning (phase 1)
and retraining per memory target (phase 2), with resumable checkpoints.

Example::

    python examples/mlp_cerp.py --root /work/shared/data
    python examples/mlp_cerp.py --dataset path/to/folder --subset 500 800
"""
import argparse

import torch

from _common import add_common_arguments, config_from_args, load_data, \
    main_loop
from pyg_cerp.nn import MLPScorer
from pyg_cerp.train import CERPConfig, MLPRecommender

# Without propagation, a step is cheap: smaller batches. Not tuned on
# Gowalla (see the report); full ranking with an MLP scores every
# (user, item) pair through the network, so only a sample of users is
# evaluated by default (pass --eval-users with the number of users for the full
# protocol).
DEFAULTS = CERPConfig(batch_size=4096, lr=1e-3, threshold_lr=1e-2,
                      baseline_epochs=3, prune_epochs=5, retrain_epochs=3,
                      eval_users=1000, l2_reg=0.)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_common_arguments(parser, DEFAULTS)
    parser.add_argument('--hidden', type=int, nargs='+', default=[128, 64],
                        help='MLP hidden sizes (default: 128 64)')
    args = parser.parse_args(argv)
    config = config_from_args(args, DEFAULTS, parser, {'hidden': 1})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_data(args)

    def build(embedding: torch.nn.Module) -> MLPRecommender:
        scorer = MLPScorer(data.num_users, data.num_items, embedding,
                           hidden_channels=args.hidden)
        return MLPRecommender(scorer)

    return main_loop(args, config, data, build, 'mlp_cerp')


if __name__ == '__main__':
    main()
