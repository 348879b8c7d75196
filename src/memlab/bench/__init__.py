"""GPU benchmark suites, run by ``scripts/bench.py`` (``make bench``); listed in
``memlab.bench.suites``. The package imports none of them, so that ``python -m
memlab.bench.<suite>`` runs a suite's own command line on a fresh import of its module."""
