"""escm2-study: does ESCM2 debias? Estimators x seeds x simulator regimes.

``regime`` defines the simulated worlds; ``grid`` defines what runs
(regimes, seeds, estimators) and checks it; ``datasets`` simulates and
converts each (regime, seed) once; ``runner`` trains every estimator with the
library's defaults and keeps the results resumable; ``stats`` and ``summary``
turn runs into intervals, paired differences and verdicts; ``report`` writes
the tables and figures. The CLI is ``escm2_tf/cli/study.py``.
"""
