"""PCK evaluation protocols as data.

A :class:`Protocol` fixes every choice that changes a PCK number (see the README's "Protocols"
section): the threshold T, the frame in which distances and T are measured, how per-keypoint
hits are aggregated, the alphas, and the matching direction. Named presets expand, per dataset,
into one or more protocols; every result row carries the protocol's name *and* its fields.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

THRESHOLDS = ("bbox", "img", "bbox-kp")
AGGREGATES = ("image", "point", "category")
DIRECTIONS = ("src->trg",)
DEFAULT_ALPHAS = (0.05, 0.1, 0.15)

#: the threshold each dataset's papers use (SPair-71k: target bbox; PF-Pascal: target image;
#: PF-Willow: extent of the target's valid keypoints, since it has no boxes)
DATASET_THRESHOLD = {"spair-71k": "bbox", "pf-pascal": "img", "pf-willow": "bbox-kp", "spair-u": "bbox",
                     "ap-10k": "bbox", "cub-200-2011": "bbox"}

_RESIZED = re.compile(r"^resized-(\d+)x(\d+)$")


def parse_frame(frame: str) -> tuple[str, int | None, int | None]:
    """``original`` | ``isotropic`` | ``resized-WxH`` -> (kind, W, H)."""
    if frame in ("original", "isotropic"):
        return frame, None, None
    m = _RESIZED.match(frame)
    if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
        return "resized", int(m.group(1)), int(m.group(2))
    raise ValueError(f"unknown frame {frame!r}; valid: original, isotropic, resized-WxH (e.g. resized-768x768)")


@dataclass(frozen=True)
class Protocol:
    """One fully specified PCK protocol.

    Attributes:
        name: the preset it came from (written into every result row).
        threshold: ``bbox`` = max(w, h) of the target box; ``img`` = max(w, h) of the target
            image; ``bbox-kp`` = max(w, h) of the extent of the target's valid keypoints.
        frame: ``original`` (target image pixels), ``resized-WxH`` (anisotropic resize of the
            target image to W x H; distances and T measured there), or ``isotropic``
            (aspect-preserving resize, equivalent to ``original``).
        aggregate: ``image`` = mean over pairs of the per-pair fraction; ``point`` = all correct
            keypoints / all keypoints; ``category`` = mean of the per-category ``image`` values.
        alphas: PCK thresholds as fractions of T; a keypoint is correct when its distance
            is <= alpha * T (``strict``: < alpha * T, as sd-dino and GeoAware-SC count).
        direction: ``src->trg``: source keypoints are transferred to the target and compared
            with the target ground truth.
    """

    name: str
    threshold: str
    frame: str = "original"
    aggregate: str = "image"
    alphas: tuple[float, ...] = field(default=DEFAULT_ALPHAS)
    direction: str = "src->trg"
    strict: bool = False

    def __post_init__(self):
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"unknown threshold {self.threshold!r}; valid: {', '.join(THRESHOLDS)}")
        parse_frame(self.frame)
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {self.aggregate!r}; valid: {', '.join(AGGREGATES)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; valid: {', '.join(DIRECTIONS)}")
        if not self.alphas or any(not (0 < a) for a in self.alphas):
            raise ValueError(f"alphas must be positive, got {self.alphas}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))

    def to_dict(self) -> dict:
        return asdict(self)


def _preset_sd4match(dataset: str) -> list[Protocol]:
    return [Protocol("sd4match", DATASET_THRESHOLD[dataset], "resized-768x768", "image")]


def _preset_dift(dataset: str) -> list[Protocol]:
    t = DATASET_THRESHOLD[dataset]
    return [Protocol("dift", t, "original", "image"), Protocol("dift", t, "original", "point")]


def _preset_original(dataset: str) -> list[Protocol]:
    t = DATASET_THRESHOLD[dataset]
    return [Protocol("original", t, "original", agg) for agg in AGGREGATES]


def _preset_geoaware(dataset: str) -> list[Protocol]:
    """sd-dino / GeoAware-SC: the padded square frame (isotropic: equal to the original), the dataset's
    threshold, alphas 0.01, 0.05, 0.1 (PF-Pascal 0.05, 0.1, 0.15), strict <, per image and per point."""
    t = DATASET_THRESHOLD[dataset]
    alphas = (0.05, 0.1, 0.15) if dataset == "pf-pascal" else (0.01, 0.05, 0.1)
    return [Protocol("geoaware", t, "isotropic", agg, alphas, strict=True) for agg in ("image", "point")]


def _preset_distilldift(dataset: str) -> list[Protocol]:
    """DistillDIFT's CUB-200-2011 evaluation: PCK@0.1 with the target box and with the target image,
    keypoints pooled, <= (only for CUB)."""
    if dataset != "cub-200-2011":
        return []
    return [Protocol("distilldift", t, "original", "point", (0.1,)) for t in ("bbox", "img")]


PRESETS = {
    "sd4match": (_preset_sd4match, "768x768 anisotropic frame, dataset threshold, per image (SD4Match paper)"),
    "dift": (_preset_dift, "original frame, dataset threshold, per image and per point (DIFT paper)"),
    "original": (_preset_original, "original frame, dataset threshold, per image, per point, per category"),
    "geoaware": (_preset_geoaware, "padded square frame, dataset threshold, strict <, alphas 0.01/0.05/0.1, per image "
                                   "and per point (sd-dino, GeoAware-SC, AP-10K and SPair-U papers)"),
    "distilldift": (_preset_distilldift, "CUB-200-2011 only: PCK@0.1, target box and target image, per point (DistillDIFT)"),
}


def default_presets(dataset: str) -> tuple[str, ...]:
    """The presets a run computes when none is named: each dataset's papers' protocols and ``original``
    (SPair-71k: sd4match, dift, geoaware, original, geoaware bringing PCK@0.01 and the 2024-26 papers'
    protocol; PF-Pascal, PF-Willow: sd4match, dift, original; AP-10K, SPair-U: geoaware, original;
    CUB-200-2011: distilldift, geoaware, original). Any preset can be asked for by name."""
    if dataset == "spair-71k":
        return ("sd4match", "dift", "geoaware", "original")
    if dataset in ("pf-pascal", "pf-willow"):
        return ("sd4match", "dift", "original")
    if dataset == "cub-200-2011":
        return ("distilldift", "geoaware", "original")
    return ("geoaware", "original")


def is_strict(presets, dataset: str) -> bool:
    """Whether any of the named presets counts a keypoint correct only when d < alpha * T (else <=)
    on ``dataset``, as the preset itself says (``Protocol.strict``); unknown names count as <=."""
    names = [presets] if isinstance(presets, str) else list(presets)
    out = False
    for name in names:
        try:
            out = out or any(p.strict for p in protocols_for(dataset, [name]))
        except ValueError:
            continue
    return out


def parse_alphas(text: str) -> tuple[float, ...]:
    """``"0.01,0.05,0.1"`` -> sorted distinct alphas in (0, 1]; a one-line ValueError otherwise."""
    import math

    try:
        values = sorted({float(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--alphas takes comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(a) or not 0 < a <= 1 for a in values):
        raise ValueError(f"--alphas must be numbers in (0, 1], got {text!r}")
    return tuple(values)


def protocols_for(dataset: str, names: list[str] | None = None, alphas: tuple[float, ...] | None = None) -> list[Protocol]:
    """Expand preset names (default: :func:`default_presets`) into the protocols for ``dataset``;
    ``alphas`` replaces the presets' thresholds. A preset that does not apply to the dataset is an error."""
    import dataclasses

    if dataset not in DATASET_THRESHOLD:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASET_THRESHOLD)}")
    names = list(default_presets(dataset)) if not names else names
    out = []
    for n in names:
        if n not in PRESETS:
            raise ValueError(f"unknown protocol {n!r}; valid: {', '.join(PRESETS)}")
        got = PRESETS[n][0](dataset)
        if not got:
            raise ValueError(f"protocol {n!r} does not apply to {dataset}")
        out.extend(got)
    if alphas:
        out = [dataclasses.replace(p, alphas=tuple(alphas)) for p in out]
    return out
