r"""Deprecated: the pipeline's command line is :mod:`pyg_cerp.train.cli`
(``python -m pyg_cerp.train``). These names remain for code that still
imports them from here."""
from pyg_cerp.train.cli import add_config_arguments as add_common_arguments
from pyg_cerp.train.cli import (config_from_args, results_table,
                                slice_interactions)

__all__ = ['add_common_arguments', 'config_from_args', 'results_table',
           'slice_interactions']
