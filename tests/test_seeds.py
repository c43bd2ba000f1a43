"""make seeds' tables: orderings that a seed gives nothing to compare on still count."""

import pandas as pd
from neurorecon.seeds import _untested, summarise, markdown

def test_an_ordering_missing_on_a_seed_counts_as_not_holding_there():
    o = pd.DataFrame([dict(seed=0, claim="c", metric="m", subjects=4, holds_on=4),
                      dict(seed=1, claim="c", metric="m", subjects=4, holds_on=4),
                      dict(seed=0, claim="d", metric="m", subjects=4, holds_on=3),
                      dict(seed=1, claim="d", metric="m", subjects=4, holds_on=4),
                      dict(seed=2, claim="d", metric="m", subjects=4, holds_on=4)])
    full = _untested(o, [0, 1, 2])
    added = full[~full.tested]
    assert added[["seed", "claim", "subjects", "holds_on"]].values.tolist() == [[2, "c", 4, 0]]
    metrics = pd.DataFrame([dict(seed=k, source="s", method="x", metric="m", value=0.5 + k) for k in range(3)])
    _, holds = summarise(metrics, full)
    c = holds.set_index("claim")
    assert c.loc["c", "k_of_n"] == "2 of 3" and c.loc["c", "seeds_untested"] == 1
    assert c.loc["d", "k_of_n"] == "2 of 3" and c.loc["d", "seeds_untested"] == 0
    assert abs(c.loc["c", "subject_cases_holding"] - 8 / 12) < 1e-9
    md = markdown(*summarise(metrics, full), [0, 1, 2])
    assert "| c | m | 2 of 3 seeds (1 with nothing to compare) | 67% |" in md and "| d | m | 2 of 3 seeds | 92% |" in md
