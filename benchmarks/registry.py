"""The matcher registry: one table of name -> lazily imported class.

Built-in matchers are listed in :data:`BUILTIN`. Third-party packages add theirs through the
``corrbench.matchers`` entry-point group (value ``"module:Class"``), without editing this
repository. Nothing is imported until a matcher is asked for.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "corrbench.matchers"


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class"
    description: str
    source: str = "builtin"


BUILTIN: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("identity", "benchmarks.matchers.identity:IdentityMatcher",
              "source keypoint rescaled to the target image size (no model, no pixels)"),
        Entry("dift", "sd4match.methods.dift:DiftMatcher",
              "DIFT: Stable Diffusion 2.1 up-block-1 features, t=261, ensemble 8, prompt 'a photo of a {category}'"),
        Entry("single", "sd4match.methods.sd4match:SingleMatcher",
              "SD4Match-Single: one learned 75-token prompt; SD-2.1 t=50, ensemble 8, kernel soft-argmax"),
        Entry("class", "sd4match.methods.sd4match:ClassMatcher",
              "SD4Match-Class: one learned prompt per category; SD-2.1 t=50, ensemble 8, kernel soft-argmax"),
        Entry("cpm", "sd4match.methods.sd4match:CPMMatcher",
              "SD4Match-CPM: prompts conditioned on DINOv2 features of both images (per pair); t=50, ensemble 8"),
        Entry("dinov2", "sd4match.methods.dinov2:Dinov2Matcher",
              "DINOv2 nearest neighbour (sd-dino / GeoAware-SC): ViT-B/14 block 11 before the final norm, 840 padded frame"),
        Entry("dinov3", "sd4match.methods.dinov3:Dinov3Matcher",
              "DINOv3 ViT-B/16 nearest neighbour: last block's normed patch tokens, 768 padded frame (layer and size unconfirmed)"),
        Entry("sd-dino", "sd4match.methods.sd_dino:SDDinoMatcher",
              "SD+DINO (A Tale of Two Features): SD-1.5 blocks 2/5/8 t=100, per-pair PCA 3 x 256, + DINOv2-B, argmax"),
        Entry("geoaware-zs", "sd4match.methods.geoaware:GeoAwareZeroShotMatcher",
              "GeoAware-SC zero-shot: SD-1.5 blocks 2/5/8 t=50 FreeU + DINOv2-B, no PCA, window soft-argmax 5"),
        Entry("geoaware", "sd4match.methods.geoaware:GeoAwareSupervisedMatcher",
              "GeoAware-SC supervised: geoaware-zs's features -> the trained aggregation head (head=) -> window soft-argmax 7"),
        Entry("diy-sc", "sd4match.methods.dinov2:DiySCMatcher",
              "DIY-SC: DINOv2-B/14 block-11 tokens (840 padded frame) -> its trained adapter (head=) -> window soft-argmax"),
        Entry("patch", "benchmarks.matchers.patch:PatchMatcher",
              "normalised raw-pixel patches on the dense grid (no weights; a sanity baseline)"),
    ]
}


class UnknownMatcher(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


def _plugin_entries() -> dict[str, Entry]:
    out = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        desc = ""
        dist = getattr(ep, "dist", None)
        out[ep.name] = Entry(ep.name, ep.value, desc, source=f"plugin:{dist.name if dist else '?'}")
    return out


def entries() -> dict[str, Entry]:
    """Every registered matcher (built-ins win over plugins of the same name)."""
    found = _plugin_entries()
    found.update(BUILTIN)
    return dict(sorted(found.items()))


def load_class(name: str):
    """The matcher class registered as ``name``; an unknown name lists the valid ones."""
    table = entries()
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownMatcher(f"unknown matcher {name!r}{hint}; valid: {', '.join(table)}")
    module, _, attr = table[name].target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownMatcher(f"matcher {name!r} is registered as {table[name].target!r} but cannot be imported: {exc}") from None
    return cls


def describe(name: str) -> str:
    e = entries()[name]
    if e.description:
        return e.description
    try:
        cls = load_class(name)
        return getattr(cls, "description", "") or (cls.__doc__ or "").strip().splitlines()[0]
    except Exception as exc:  # a broken plugin must not break the listing
        return f"(cannot import: {exc})"
