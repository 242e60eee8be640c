"""prefalign: align a text generator to what a classifier wants (DPO / SLiC / IPO via TRL).

From Python (docs/python.md): `load_config`, `plan`, `run`, `open_run` and the `Run` handle
(prefalign/api.py); every failure a user can act on is a `PrefalignError`. Importing the package
loads no torch.
"""

__version__ = "0.1.0"

from prefalign.api import Run, load_config, open_run, plan, run  # noqa: E402
from prefalign.errors import PrefalignError  # noqa: E402

__all__ = ["PrefalignError", "Run", "__version__", "load_config", "open_run", "plan", "run"]
