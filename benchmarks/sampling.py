"""``--sample N``: N pairs in total, spread over the categories in proportion to the split, seeded."""

from __future__ import annotations


def stratified_sample(categories: list[str], n: int, seed: int) -> list[int]:
    """Row indices of ``n`` pairs drawn without replacement, each category getting its share of the
    split (largest remainders; every category present at least once when ``n`` allows), seeded;
    returned in table order."""
    import numpy as np

    cats = sorted(set(categories))
    rows = {c: [i for i, x in enumerate(categories) if x == c] for c in cats}
    n = min(n, len(categories))
    quota = {c: n * len(rows[c]) / len(categories) for c in cats}
    take = {c: int(quota[c]) for c in cats}
    if n >= len(cats):
        for c in cats:
            take[c] = max(take[c], 1)
    for c in sorted(cats, key=lambda c: (-(quota[c] - int(quota[c])), c)):
        if sum(take.values()) >= n:
            break
        if take[c] < len(rows[c]):
            take[c] += 1
    while sum(take.values()) > n:  # the at-least-one rule overshot: trim the largest shares
        c = max(cats, key=lambda c: (take[c], c))
        take[c] -= 1
    rng = np.random.default_rng(seed)
    picked = [i for c in cats for i in rng.choice(rows[c], size=take[c], replace=False).tolist()]
    return sorted(picked)
