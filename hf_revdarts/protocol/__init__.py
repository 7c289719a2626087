"""The evaluation protocol: does the search pay? Searched, standard and random genotypes trained with one recipe
and compared on the test split (``benchmarks/search_quality.py`` runs it).

Its modules, each importing only those above it in this list:

- ``record``: ``RunRecord``, the versioned record of one run (``<run>.json``), which everything else reads.
- ``recipe``: ``ProtocolConfig``, the pairs, sizes and flags of a protocol config file
  (``configs/protocol/multi30k.yaml``), the train and search recipes taken from their configs.
- ``compare``: the statistics: each kind's table, paired bootstraps, replicas, the difference to the random
  genotypes with its standard error.
- ``report``: ``summary.json``/``summary.md``/``bleu_per_kind.png`` of a pair and ``overview.md`` of every pair.
- ``card``: what a model card says of a protocol run (``training/publish.py --protocol_run``).
- ``plan`` and ``execution``: which runs a pair's protocol has and where each stands; running them.
"""

from .card import ProtocolRun, training_cost
from .recipe import ProtocolConfig
from .record import RECORD_FORMAT, RunRecord, load_runs, replica_pairs
from .report import ReportSettings, markdown, write_overview, write_summary

__all__ = [
    "RECORD_FORMAT",
    "ProtocolConfig",
    "ProtocolRun",
    "ReportSettings",
    "RunRecord",
    "load_runs",
    "markdown",
    "replica_pairs",
    "training_cost",
    "write_overview",
    "write_summary",
]
