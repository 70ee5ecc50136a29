"""`disney-train model tiny`: a tiny CogVideoX with random weights, in the real diffusers layout.

Tests and `make run` load it through the very code that loads the real 2b/5b weights, so the
loading path is exercised without a hub or a GPU. The configs are the smallest that work with
diffusers' CogVideoX code (measured); the T5 tokenizer is built offline from a sentencepiece model
trained on the fly on the sample prompts (transformers 5's `T5Tokenizer(vocab_file=…)` ignores the
file, so the tokenizer is built from the vocabulary list).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from disney_train.data.sample import SEGMENTS

LATENT_CHANNELS = 4
TEXT_DIM = 32
_CORPUS_EXTRA = (
    "A black and white cartoon mouse steers a steamboat down a river while whistling.",
    "An animated cat and a parrot on the deck of a paddle steamer, in the style of 1928 Disney.",
    "A cow is lifted onto the boat with a crane; the mouse plays music on a goat's tail.",
)


def _tokenizer(workdir: Path) -> Any:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join([s.prompt for s in SEGMENTS] + list(_CORPUS_EXTRA)) * 20, encoding="utf-8")
    prefix = workdir / "spiece"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=256,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
        num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def write_tiny_model(
    out: Path,
    variant: Literal["t2v", "i2v"] = "t2v",
    seed: int = 0,
    generation: Literal["1.0", "1.5"] = "1.0",
    like_5b: bool = False,
) -> Path:
    """CogVideoX 1.0 as the 2b (sinusoidal positions), or with `like_5b` as the 5b (3D rotary
    embeddings) and the 5b-I2V (rotary and learned positions, which fix the size: 96x64 pixels);
    1.5 as CogVideoX1.5-5B: time patched by 2, 3D rotary embeddings, no patch bias, the VAE's
    `invert_scale_latents` and, for I2V, `ofs`."""
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from disney_train.model.cogvideox import CogVideoXI2V, CogVideoXSpec

    spec = CogVideoXI2V if variant == "i2v" else CogVideoXSpec
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="tiny-tokenizer-") as tmp:
        tokenizer = _tokenizer(Path(tmp))
    vocab = len(tokenizer)
    v15: dict[str, Any] = {}
    if like_5b and generation == "1.0":
        v15 = {
            "attention_head_dim": 16,
            "sample_width": 12,
            "sample_height": 8,
            "use_rotary_positional_embeddings": True,
            "use_learned_positional_embeddings": spec.wants_image,
        }
    if generation == "1.5":  # sample sizes in latents: RoPE's grid is sliced from them (up to 192x256 px)
        v15 = {
            "attention_head_dim": 16,  # 3D RoPE splits it 4 / 6 / 6 over time, height, width
            "sample_width": 32,
            "sample_height": 24,
            "patch_size_t": 2,
            "use_rotary_positional_embeddings": True,
            "use_learned_positional_embeddings": False,
            "patch_bias": False,
            "ofs_embed_dim": 2 if spec.wants_image else None,
        }
    transformer = CogVideoXTransformer3DModel(
        **{
            "num_attention_heads": 4,
            "attention_head_dim": 8,
            "in_channels": LATENT_CHANNELS * spec.input_latents,
            "out_channels": LATENT_CHANNELS,
            "time_embed_dim": 2,
            "text_embed_dim": TEXT_DIM,
            "num_layers": 1,
            "sample_width": 8,
            "sample_height": 8,
            "sample_frames": 9,
            "patch_size": 2,
            "temporal_compression_ratio": 4,
            "max_text_seq_length": 226,
            **v15,
        }
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        invert_scale_latents=generation == "1.5",
    )
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=vocab,
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    pipe = spec.pipeline_class()(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        # CogVideoX-2b's scheduler settings: v-prediction, zero-terminal-SNR, trailing timesteps
        scheduler=CogVideoXDPMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            rescale_betas_zero_snr=True,
            timestep_spacing="trailing",
            snr_shift_scale=3.0,
            clip_sample=False,
            set_alpha_to_one=True,
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out))
    return out
