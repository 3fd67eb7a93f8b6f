"""The read-only results API that reports use: a run's stored tables and metrics, as aggregates.

One module per report document (:mod:`.data`, :mod:`.model`, :mod:`.attack`, :mod:`.robustness`,
:mod:`.pipeline`, :mod:`.tuning`) over :mod:`.common`; everything is importable from here
(``from lstm_adv.results import api``; ``api.model_metrics(run)``). Nothing returns a patient-level
row, an identifier or a time (:func:`aggregates_only`).
"""

from lstm_adv.results.api.attack import *  # noqa: F403
from lstm_adv.results.api.attack import __all__ as _attack
from lstm_adv.results.api.common import *  # noqa: F403
from lstm_adv.results.api.common import __all__ as _common
from lstm_adv.results.api.data import *  # noqa: F403
from lstm_adv.results.api.data import __all__ as _data
from lstm_adv.results.api.model import *  # noqa: F403
from lstm_adv.results.api.model import __all__ as _model
from lstm_adv.results.api.pipeline import *  # noqa: F403
from lstm_adv.results.api.pipeline import __all__ as _pipeline
from lstm_adv.results.api.robustness import *  # noqa: F403
from lstm_adv.results.api.robustness import __all__ as _robustness
from lstm_adv.results.api.tuning import *  # noqa: F403
from lstm_adv.results.api.tuning import __all__ as _tuning

__all__ = [*_common, *_data, *_model, *_attack, *_pipeline, *_robustness, *_tuning]
