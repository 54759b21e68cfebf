"""Left/right keypoint swaps per dataset and category, for adaptive pose alignment (``flip``).

A mirrored image of an object is again a valid image of that object in which each left/right
keypoint pair has traded places: the mirrored right eye is where a left eye would be. Adaptive
pose alignment therefore matches the mirrored source with each keypoint moved to its partner's
mirrored position. The groups below are facts of the datasets' keypoint definitions, as the
GeoAware-SC evaluation lists them (SPair-71k, AP-10K) and as GANgealing-derived code mirrors CUB
(``../shared/docs/baselines.md`` 3.4, ``datasets-and-protocols.md``). Pure data; no torch.
"""

from __future__ import annotations

#: SPair-71k: pairs of keypoint ids that swap under a horizontal flip (ids not listed stay)
SPAIR_SWAPS: dict[str, list[tuple[int, int]]] = {
    "aeroplane": [(4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19), (20, 21)],
    "bicycle": [(2, 3), (6, 7), (9, 10)],
    "bird": [(1, 2), (4, 5), (7, 8), (10, 11), (12, 13), (14, 15)],
    "boat": [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)],
    "bottle": [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)],
    "bus": [(0, 1), (2, 3), (5, 6), (8, 18), (11, 21), (9, 19), (12, 22), (10, 20), (13, 23), (14, 15), (24, 25),
            (16, 17), (26, 27)],
    "car": [(0, 1), (2, 3), (6, 7), (10, 20), (13, 23), (11, 21), (14, 24), (12, 22), (15, 25), (16, 17), (26, 27),
            (18, 19), (28, 29)],
    "cat": [(0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12)],
    "chair": [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)],
    "cow": [(0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)],
    "dog": [(0, 1), (2, 3), (4, 5), (9, 10), (11, 12)],
    "horse": [(0, 1), (2, 3), (4, 5), (6, 7), (10, 11), (12, 13), (16, 17), (18, 19)],
    "motorbike": [(0, 1), (2, 3)],
    "person": [(0, 1), (2, 3), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)],
    "pottedplant": [(0, 2), (4, 5), (6, 8)],
    "sheep": [(0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)],
    "train": [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)],
    "tvmonitor": [(0, 2), (4, 6), (3, 7), (8, 10), (12, 14), (11, 15)],
}

#: AP-10K (0-based ids: 0/1 eyes, 5/8 shoulders, 6/9 elbows, 7/10 front paws, 11/14 hips, 12/15 knees,
#: 13/16 back paws)
AP10K_SWAPS = [(0, 1), (5, 8), (6, 9), (12, 15), (7, 10), (13, 16), (11, 14)]

#: CUB-200-2011 (0-based part ids: 6/10 eyes, 7/11 legs, 8/12 wings)
CUB_SWAPS = [(6, 10), (7, 11), (8, 12)]


def swaps_for(dataset: str, category: str) -> list[tuple[int, int]] | None:
    """The swap pairs of ``category`` in ``dataset``; None when the dataset has no table."""
    if dataset in ("spair-71k", "spair-u"):
        return SPAIR_SWAPS.get(category)
    if dataset == "ap-10k":
        return AP10K_SWAPS
    if dataset == "cub-200-2011":
        return CUB_SWAPS
    return None


def partners(swaps: list[tuple[int, int]]) -> dict[int, int]:
    out = {}
    for a, b in swaps:
        out[a], out[b] = b, a
    return out


#: GeoAware-SC's *training* table (pose-variant pair augmentation) differs from the evaluation table
#: above for one SPair-71k category only: bus (``../shared/golden/heads/README.md``)
SPAIR_TRAIN_SWAPS = {**SPAIR_SWAPS, "bus": [(0, 1), (2, 3), (5, 6), (10, 20), (13, 23), (11, 21), (14, 24), (12, 22),
                                            (15, 25), (16, 17), (26, 27), (18, 19), (28, 29)]}


def train_swaps_for(dataset: str, category: str) -> list[tuple[int, int]] | None:
    """The swap pairs that the head training's pair augmentation uses (None: no table)."""
    if dataset in ("spair-71k", "spair-u"):
        return SPAIR_TRAIN_SWAPS.get(category)
    return swaps_for(dataset, category)


def permutation(swaps: list[tuple[int, int]], n: int) -> list[int]:
    """The flip permutation over keypoint ids 0..n-1: row i of a flipped image is keypoint perm[i]."""
    mate = partners(swaps)
    return [mate.get(i, i) for i in range(n)]
