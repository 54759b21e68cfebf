"""SD4Match prompt modules: Single, Class and CPM (conditional prompting module).

Each module produces the 75 learned token embeddings of a prompt; :class:`PromptEncoder` places
them between the frozen BOS and EOS embeddings (77 tokens, no padding) and runs the frozen CLIP
text transformer (causal mask, final layer norm) to give the UNet's cross-attention context.

As in SD4Match, the 77 embeddings are the text transformer's *input*: BOS and EOS are the token
embeddings plus CLIP's position embeddings 0 and 76, and the 75 learned rows are used exactly as
stored, with **no** position embedding added (a learned row already lives in the space where
position is included: Single/Class start from token embedding + position). A forward hook on
the text model's embedding module replaces its output, so mask, layers and final norm are
transformers' own.

Prompts written by this toolkit before prompt format 2 were trained with CLIP's position
embeddings added to the learned rows; :class:`PromptEncoder` keeps that meaning for them
(``legacy_positions=True``, chosen from the checkpoint's format version).

Sizes with the real models (text width 1024, DINOv2-base 256 patches x 768):
Single 75 x 1024 = 76,800 parameters; Class 76,800 per category; CPM 1,767,680.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

N_TOKENS = 75
VARIANTS = ("single", "class", "cpm")
#: version of the meaning of stored prompt rows; 1: CLIP positions were added to the learned rows
#: by the encoder (this toolkit before the fix); 2: rows fed as they are (SD4Match's meaning)
PROMPT_FORMAT = 2


def text_embeddings(text_encoder) -> nn.Module:
    """The CLIP text model's embedding module (token lookup + position), with or without ``text_model``."""
    return getattr(text_encoder, "text_model", text_encoder).embeddings


class PromptEncoder(nn.Module):
    """Frozen CLIP text encoder run on learned rows: ``(B, 75, D)`` -> ``(B, 77, D)`` context.

    Shape: tokens ``(B, 75, D)`` -> ``(B, 77, D)``. ``legacy_positions``: add CLIP's position
    embeddings 1..75 to the learned rows (format-1 checkpoints of this toolkit only).
    """

    def __init__(self, text_encoder, tokenizer, legacy_positions: bool = False):
        super().__init__()
        self.text_encoder = text_encoder
        self.bos_id = int(tokenizer.bos_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.width = int(text_encoder.config.hidden_size)
        self.max_len = int(text_encoder.config.max_position_embeddings)
        self.legacy_positions = legacy_positions
        if self.max_len != N_TOKENS + 2:
            raise ValueError(f"text encoder has {self.max_len} positions, SD4Match prompts need {N_TOKENS + 2}")

    def input_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """The 77 rows fed to the text transformer: [BOS + pos 0, learned rows, EOS + pos 76]."""
        B, n, D = tokens.shape
        if n != N_TOKENS or D != self.width:
            raise ValueError(f"prompt tokens must be (B, {N_TOKENS}, {self.width}), got {tuple(tokens.shape)}")
        emb = text_embeddings(self.text_encoder)
        table, pos = emb.token_embedding.weight, emb.position_embedding.weight
        bos = (table[self.bos_id] + pos[0]).to(tokens.dtype).expand(B, 1, D)
        eos = (table[self.eos_id] + pos[n + 1]).to(tokens.dtype).expand(B, 1, D)
        if self.legacy_positions:
            tokens = tokens + pos[1:n + 1].to(tokens.dtype)
        return torch.cat([bos, tokens, eos], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        embeds = self.input_embeddings(tokens)
        B, n = embeds.shape[:2]
        # the ids only shape the call (mask, pooled EOS position); the embeddings are replaced below
        ids = torch.full((B, n), self.eos_id, dtype=torch.long, device=tokens.device)
        ids[:, 0] = self.bos_id

        def replace(module, inputs, output):
            return embeds.to(output.dtype)

        handle = text_embeddings(self.text_encoder).register_forward_hook(replace)
        try:
            return self.text_encoder(input_ids=ids)[0]
        finally:
            handle.remove()


def text_init(text_encoder, n_rows: int, generator: torch.Generator | None = None,
              ids: torch.Tensor | None = None) -> torch.Tensor:
    """SD4Match's Single/Class initialisation: token embeddings of uniformly drawn vocabulary ids (or
    the given ``ids``) plus CLIP's position embeddings 1..n (the rows then mean what a text prompt's
    rows mean). Shape: -> ``(n_rows, D)`` float32 on the CPU."""
    emb = text_embeddings(text_encoder)
    table, pos = emb.token_embedding.weight.detach().float().cpu(), emb.position_embedding.weight.detach().float().cpu()
    if ids is None:
        ids = torch.randint(0, table.shape[0], (n_rows,), generator=generator)
    return table[torch.as_tensor(ids, dtype=torch.long)] + pos[1:n_rows + 1]


class SinglePrompt(nn.Module):
    """One 75 x D prompt for the whole dataset."""

    variant = "single"

    def __init__(self, width: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(N_TOKENS, width))

    def forward(self, categories: Sequence[str], **_) -> torch.Tensor:
        return self.tokens.expand(len(categories), -1, -1)


class ClassPrompt(nn.Module):
    """One 75 x D prompt per category."""

    variant = "class"

    def __init__(self, width: int, categories: Sequence[str]):
        super().__init__()
        if not categories:
            raise ValueError("class prompts need at least one category")
        self.categories = list(categories)
        self.index = {c: i for i, c in enumerate(self.categories)}
        self.tokens = nn.Parameter(torch.zeros(len(self.categories), N_TOKENS, width))

    def forward(self, categories: Sequence[str], **_) -> torch.Tensor:
        missing = [c for c in categories if c not in self.index]
        if missing:
            raise KeyError(f"no class prompt for category {missing[0]!r}; prompts exist for: {', '.join(self.categories)}")
        idx = torch.tensor([self.index[c] for c in categories], device=self.tokens.device)
        return self.tokens[idx]


class CPM(nn.Module):
    """Conditional prompting module.

    DINOv2 patch tokens of source and target ``(B, P, Dd)`` each -> concatenated per patch
    ``(B, P, 2 Dd)`` -> Linear(2 Dd -> D) on channels -> Linear(P -> P) across patches ->
    adaptive max-pool over patches to 50 -> + position embedding (50 x D) -> x tanh(alpha)
    (50 x D) = 50 conditional tokens; prompt = [25 learned global tokens, 50 conditional tokens].
    """

    variant = "cpm"
    n_global = 25
    n_cond = 50

    def __init__(self, width: int, dino_dim: int, n_patches: int):
        super().__init__()
        self.dino_dim, self.n_patches = dino_dim, n_patches
        self.global_tokens = nn.Parameter(torch.empty(self.n_global, width).uniform_(0, 1))
        self.channel = nn.Linear(2 * dino_dim, width)
        self.patch = nn.Linear(n_patches, n_patches)
        self.pool = nn.AdaptiveMaxPool1d(self.n_cond)
        self.pos = nn.Parameter(torch.empty(self.n_cond, width).uniform_(0, 1))
        self.alpha = nn.Parameter(torch.empty(self.n_cond, width).uniform_(0, 1))

    def linear_parameters(self) -> list[nn.Parameter]:
        return [*self.channel.parameters(), *self.patch.parameters()]

    def forward(self, categories: Sequence[str], src_dino: torch.Tensor | None = None,
                trg_dino: torch.Tensor | None = None, **_) -> torch.Tensor:
        if src_dino is None or trg_dino is None:
            raise ValueError("CPM needs the DINOv2 patch tokens of both images")
        if src_dino.shape[1:] != (self.n_patches, self.dino_dim):
            raise ValueError(f"CPM expects DINOv2 tokens ({self.n_patches}, {self.dino_dim}), got {tuple(src_dino.shape[1:])}")
        x = torch.cat([src_dino, trg_dino], dim=-1).to(self.channel.weight.dtype)  # (B, P, 2 Dd)
        x = self.channel(x)  # (B, P, D)
        x = self.patch(x.transpose(1, 2))  # (B, D, P)
        x = self.pool(x).transpose(1, 2)  # (B, 50, D)
        cond = (x + self.pos) * torch.tanh(self.alpha)
        glob = self.global_tokens.expand(x.shape[0], -1, -1)
        return torch.cat([glob, cond], dim=1)


def build_prompt(variant: str, width: int, categories: Sequence[str] = (), dino_dim: int = 768,
                 n_patches: int = 256, text_encoder=None, generator: torch.Generator | None = None) -> nn.Module:
    """A prompt module. With ``text_encoder``, Single/Class rows start as SD4Match's do (:func:`text_init`,
    one draw per category in order); CPM always starts as SD4Match's captioner (uniform [0, 1) global,
    position and alpha tensors, PyTorch's default linears). Without it Single/Class rows are zeros
    (modules about to receive a checkpoint's values)."""
    if variant == "single":
        module = SinglePrompt(width)
        if text_encoder is not None:
            module.tokens.data.copy_(text_init(text_encoder, N_TOKENS, generator))
        return module
    if variant == "class":
        module = ClassPrompt(width, categories)
        if text_encoder is not None:
            for i in range(len(module.categories)):
                module.tokens.data[i].copy_(text_init(text_encoder, N_TOKENS, generator))
        return module
    if variant == "cpm":
        return CPM(width, dino_dim, n_patches)
    raise ValueError(f"unknown SD4Match variant {variant!r}; valid: {', '.join(VARIANTS)}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
