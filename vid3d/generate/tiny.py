"""What the adapters' random-weight test models (`VideoModel.tiny`, `--model tiny-svd` etc.) share.

They check the mechanics (windows, fusion, processors, exactness against the diffusers pipelines)
and time the stabilizers, where no real weights can be downloaded. Their videos are noise. Each
family builds its own, from small configs, in its adapter's module.
"""

from __future__ import annotations

import torch


def for_inference(pipe):
    """Eval mode (no dropout), as from_pretrained leaves models, and no progress bars."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def word_tokenizer():
    """A whitespace, word-level tokenizer over a tiny vocabulary (unknown words map to <unk>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "a", "an", "the", "orbit", "around", "of", "on", "object", "scene"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
