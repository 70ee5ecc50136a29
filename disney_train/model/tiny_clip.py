"""A tiny CLIP with random weights, built offline in the transformers layout.

The evaluation tests and `make run` load it through `disney_train.eval.scores.load_clip`, the very code that loads
real CLIP weights (`openai/clip-vit-base-patch32` and the like), so the loading path is exercised
without a hub. The tokenizer is CLIP's own byte-level BPE: a vocabulary written here (the 256 byte
symbols, each also as a word end `</w>`, the merges that spell a few words, the two special tokens,
in the order of the real vocabulary), so any text tokenizes, mostly a character a token.
"""

from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 32
MAX_TOKENS = 32  # the text model's max_position_embeddings (77 for real CLIP)
PROJECTION_DIM = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_WORDS = ("a", "the", "cartoon", "mouse", "rabbit", "boat", "river", "steamboat", "whistling", "disney", "style")


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in _WORDS:  # merge left to right: "c a", "ca r", "car t", ... "cartoo n</w>"
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
                tokens.append(merged)
            parts = [merged, *parts[2:]]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tiny_clip(dest: Path, seed: int = 0) -> Path:
    """Write a tiny random-weight CLIP (model, tokenizer, image processor) to `dest`; return it."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # loaded from the files just written: the same files a real CLIP checkpoint ships
    tokenizer = CLIPTokenizer.from_pretrained(str(dest), model_max_length=MAX_TOKENS)
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={
            **common,
            "vocab_size": len(vocab),
            "max_position_embeddings": MAX_TOKENS,
            "bos_token_id": vocab[BOS],
            "eos_token_id": vocab[EOS],
            "pad_token_id": vocab[EOS],
        },
        vision_config={**common, "image_size": IMAGE_SIZE, "patch_size": 8},
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    images = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    model.save_pretrained(str(dest))
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(dest))
    return dest
