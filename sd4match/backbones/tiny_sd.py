"""Tiny random-weight Stable Diffusion components, built in code, for offline CPU runs and tests.

The tokenizer's files (a byte-level BPE vocabulary with no merges) are written by this module, so
nothing is fetched from a hub. Weights are seeded: the same seed builds the same model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

#: the text width of the tiny CLIP model (SD-2.1: 1024)
TINY_TEXT_DIM = 16


def byte_symbols() -> list[str]:
    """256 printable characters, one per byte value (the usual byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def write_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of a character-level CLIP tokenizer into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as d:
        write_tokenizer_files(d)
        (Path(d) / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
        tok = CLIPTokenizer.from_pretrained(d, local_files_only=True)
    return tok


def tiny_components(seed: int = 0):
    """A seeded tiny SD stack: VAE (factor 2), 3-level UNet, 2-layer CLIP text model, DDPM scheduler.

    Image 64 -> latent 32 -> ``up_blocks[1]`` output 32 x 32 (16 channels).
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .components import SDComponents

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=64,
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16, 16), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM, attention_head_dim=4,
    )
    torch.manual_seed(seed + 2)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TINY_TEXT_DIM, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, projection_dim=TINY_TEXT_DIM,
    ))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type="v_prediction")
    for m in (vae, unet, text):
        m.eval().requires_grad_(False)
    return SDComponents(vae=vae, unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched, model_id="tiny")
