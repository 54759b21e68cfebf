"""SD+DINO ("A Tale of Two Features"): joint PCA of the SD layers per pair, fused with DINOv2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .sd_frame import TINY_SD, SDFrameConfig, SDFrameMatcher


@dataclass(frozen=True)
class SDDinoConfig(SDFrameConfig):
    """pca: ``lowrank`` (``torch.pca_lowrank``, as the authors; seeded) or ``exact`` (SVD);
    pca_dims: the per-layer dimensions (s5, s4, s3) of the joint PCA of each pair."""

    pca: str = "lowrank"
    pca_dims: str = "256,256,256"

    def __post_init__(self):
        super().__post_init__()
        if self.pca not in ("lowrank", "exact"):
            raise ValueError(f"pca must be lowrank or exact, got {self.pca!r}")
        try:
            dims = [int(d) for d in self.pca_dims.split(",")]
        except ValueError:
            raise ValueError(f"pca_dims must be 3 integers, got {self.pca_dims!r}") from None
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"pca_dims must be 3 positive integers, got {self.pca_dims!r}")



class SDDinoMatcher(SDFrameMatcher):
    name = "sd-dino"
    description = ("SD+DINO (A Tale of Two Features): SD-1.5 decoder blocks 2/5/8 at t=100 (960 frame, 512 windows), "
                   "joint PCA per pair to 256 each, + DINOv2-B block 11, each half L2-normalised, argmax; "
                   "plain diffusers, no ODISE captioner")
    Config = SDDinoConfig
    per_pair_features = True
    presets = {"tiny": {**TINY_SD, "pca_dims": "8,8,8"}, "text": {"prompt": "a photo of {category}"}}

    def pair_maps(self, pairs, flip: bool = False):
        cfg = self.config
        images = self.load_images(pairs)
        dims = [int(d) for d in cfg.pca_dims.split(",")]
        srcs = [p.row["src_image"] for p in pairs]
        trgs = [p.row["trg_image"] for p in pairs]
        s_layers = self.sd_layers([images[r][0] for r in srcs], [images[r][1] for r in srcs], flip)
        t_layers = self.sd_layers([images[r][0] for r in trgs], [images[r][1] for r in trgs])
        s_dino = self.dino_maps([images[r][0] for r in srcs], [images[r][1] for r in srcs], flip)
        t_dino = self.dino_maps([images[r][0] for r in trgs], [images[r][1] for r in trgs])
        out = []
        for k in range(len(pairs)):
            gen = torch.Generator().manual_seed(cfg.seed)
            a, b = co_pca(s_layers[k], t_layers[k], dims, cfg.pca, gen)
            g = t_dino.shape[-1]
            a, b = (x if x.shape[-1] == g else F.interpolate(x[None], size=(g, g), mode="bilinear", align_corners=False)[0]
                    for x in (a, b))
            out.append((_fuse(a, s_dino[k]), _fuse(b, t_dino[k])))
        return out


def co_pca(src: tuple[torch.Tensor, ...], trg: tuple[torch.Tensor, ...], dims: list[int], method: str,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SD+DINO's joint PCA of one pair: per layer (s5, s4, s3) the tokens of both images, centred by
    their joint mean, projected on the first ``dims`` principal directions; then s5 resized
    (bilinear) to s4's grid and put after s4, and that resized to s3's grid and put after s3:
    channels [s3 | s4 | s5] on s3's grid."""
    out_s, out_t = [], []
    for fs, ft, q in zip(src, trg, dims):
        C = fs.shape[0]
        x = torch.cat([fs.reshape(C, -1), ft.reshape(C, -1)], dim=1).T.float()  # (tokens, C)
        x = x - x.mean(dim=0, keepdim=True)
        q = min(q, *x.shape)
        if method == "exact":
            V = torch.linalg.svd(x, full_matrices=False).Vh[:q].T
        else:  # torch.pca_lowrank draws a random projection: seeded here, so runs repeat
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
                V = torch.pca_lowrank(x, q=q, center=False)[2][:, :q]
        y = (x @ V).T
        n = fs.shape[1] * fs.shape[2]
        out_s.append(y[:, :n].reshape(q, *fs.shape[1:]))
        out_t.append(y[:, n:].reshape(q, *ft.shape[1:]))

    def stack(s5, s4, s3):
        s5 = F.interpolate(s5[None], size=s4.shape[-2:], mode="bilinear", align_corners=False)[0]
        s45 = torch.cat([s4, s5])
        s45 = F.interpolate(s45[None], size=s3.shape[-2:], mode="bilinear", align_corners=False)[0]
        return torch.cat([s3, s45])

    return stack(*out_s), stack(*out_t)


def _fuse(sd: torch.Tensor, dino: torch.Tensor) -> torch.Tensor:
    """[SD | DINO], each half L2-normalised per cell (equal weights)."""
    return torch.cat([F.normalize(sd.float(), dim=0), F.normalize(dino.float(), dim=0)])
