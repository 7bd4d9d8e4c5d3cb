"""Run folders written by earlier versions of vlm_lens, read as if written now.

Why: a run over a thousand images takes hours; a renamed column must not make its folder unreadable. The run
engine knows no BIQA table, so this layer registers (:func:`vlm_lens.runs.engine.register_table_upgrade`) what
changed in its own tables:

- ``predict_pos`` (the position whose logits choose the level) is now ``decision_pos`` — the same numbers;
- the attention query ``"predict"`` is now ``"decision"`` — the same row.

Stored files are never rewritten: the upgrade happens in memory, each time a folder is read.

Example:
    >>> import pandas as pd
    >>> upgrade({"quality.samples": pd.DataFrame({"predict_pos": [30]})})["quality.samples"].columns.tolist()
    ['decision_pos']
"""

from __future__ import annotations

import pandas as pd

__all__ = ["upgrade"]

#: Old column name -> new one, in every table that has it.
RENAMED_COLUMNS = {"predict_pos": "decision_pos"}
#: Old attention query name -> new one, in the ``query`` column of every summary table.
RENAMED_QUERIES = {"predict": "decision"}


def upgrade(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables of a run folder with the renamed columns and query names of this version."""
    out = {}
    for name, frame in tables.items():
        renamed = {old: new for old, new in RENAMED_COLUMNS.items() if old in frame.columns
                   and new not in frame.columns}
        if renamed:
            frame = frame.rename(columns=renamed)
        if name.endswith(".summary") and "query" in frame.columns:
            frame = frame.assign(query=frame["query"].replace(RENAMED_QUERIES))
        out[name] = frame
    return out
