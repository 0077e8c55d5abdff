r"""``python -m pyg_cerp.train``: the resumable CERP pipeline, see
:mod:`pyg_cerp.train.cli`."""
from pyg_cerp.train.cli import main

if __name__ == '__main__':
    main()
