"""FreeU on a diffusers UNet, by up-block index (diffusers' own rule) or by channel count (GeoAware-SC).

FreeU (Si et al., 2024) scales the first half of the channels of the backbone state entering an
up-block layer by ``b`` and attenuates the low frequencies of its skip connection by ``s`` (a
Fourier-domain box of half-width 1 around the centre). Two rules decide which layers get which
factors:

- ``diffusers``: diffusers' ``enable_freeu``: by up block, block 0 gets (b1, s1), block 1 (b2, s2),
  the others nothing.
- ``geoaware``: GeoAware-SC's copy of ODISE's UNet (``baselines.md``, 3): by the channel count of the
  backbone state entering each output layer: 1280 channels get b1 1.2 / s1 0.9, 640 channels
  b2 1.4 / s2 0.2, others nothing. On SD-1.5 that differs from ``diffusers`` in two places: the
  second 1280-wide up block gets 1.2 (not 1.4), and the first layers of the 640-wide block get 1.4
  (diffusers leaves them unscaled). A model of other widths maps the rule by rank: its widest
  width plays 1280, the next one 640.

Both scale the state in place, so a feature read from the module that produced that state carries
the factor, as in the authors' code. The channel rule is realised with diffusers' own FreeU
function: each up block's ``resolution_idx`` is replaced by a :class:`ChannelRule` that picks
diffusers' stage (0 or 1, or none) from the channel count of each call.
"""

from __future__ import annotations

FREEU = ("off", "geoaware", "diffusers")
#: the FreeU factors of SD-1.x (the FreeU authors' values, used by GeoAware-SC)
FACTORS = {"b1": 1.2, "b2": 1.4, "s1": 0.9, "s2": 0.2}


class ChannelRule:
    """Stands in for an up block's ``resolution_idx``: maps the width of the state entering a
    layer to diffusers' FreeU stage (``widths[0]`` -> 0, ``widths[1]`` -> 1, others -> None)."""

    def __init__(self, widths: tuple[int, ...], block: int):
        self.widths = tuple(widths)
        self.block = block  # the up block's own index, kept for anything else that reads it

    def stage(self, channels: int) -> int | None:
        return self.widths.index(channels) if channels in self.widths else None

    def __index__(self) -> int:
        return self.block

    def __repr__(self) -> str:
        return f"ChannelRule(widths={self.widths}, block={self.block})"


def _install_dispatch() -> None:
    """Route the up blocks' FreeU calls through :func:`_dispatch` (once per process); blocks whose
    ``resolution_idx`` is an ordinary index behave exactly as before."""
    from diffusers.models.unets import unet_2d_blocks as blocks

    if getattr(blocks.apply_freeu, "_corrbench_dispatch", False):
        return
    original = blocks.apply_freeu

    def dispatch(resolution_idx, hidden_states, res_hidden_states, **factors):
        if isinstance(resolution_idx, ChannelRule):
            resolution_idx = resolution_idx.stage(int(hidden_states.shape[1]))
        return original(resolution_idx, hidden_states, res_hidden_states, **factors)

    dispatch._corrbench_dispatch = True
    blocks.apply_freeu = dispatch


def enable(unet, rule: str) -> None:
    """Turn FreeU on ``unet`` on with ``rule`` (one of :data:`FREEU`; ``off`` does nothing)."""
    if rule not in FREEU:
        raise ValueError(f"freeu must be one of {', '.join(FREEU)}, got {rule!r}")
    if rule == "off":
        return
    unet.enable_freeu(**FACTORS)
    if rule == "geoaware":
        _install_dispatch()
        widths = tuple(sorted(set(int(c) for c in unet.config.block_out_channels), reverse=True)[:2])
        for i, block in enumerate(unet.up_blocks):
            block.resolution_idx = ChannelRule(widths, i)


def parse(value) -> str:
    """A ``freeu`` setting: one of :data:`FREEU`; ``true`` / ``false`` (older runs) read as
    ``diffusers`` / ``off``."""
    if isinstance(value, bool):
        return "diffusers" if value else "off"
    text = str(value).strip().lower()
    text = {"true": "diffusers", "1": "diffusers", "false": "off", "0": "off", "none": "off"}.get(text, text)
    if text not in FREEU:
        raise ValueError(f"freeu must be one of {', '.join(FREEU)}, got {value!r}")
    return text
