"""The embedded default's base model: a small Llama built and pretrained locally.

No weights are downloaded. A byte-level BPE tokenizer is trained on the training split's
histories, a Llama-architecture model is initialised from a seed and briefly pretrained as a
causal language model on the same histories (input text only, never labels), and both are
saved with ``save_pretrained``. Every later stage loads the folder exactly as it would load a
Hugging Face model.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rationale_bench.text.templates import DEFAULT_ANSWER_WORDS

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Phrases of the prompt and of the training targets; in the tokenizer corpus so that they,
# and the answer words in particular, become single tokens.
TEMPLATE_PHRASES = [
    "Question: Based on this health history, will this patient receive a diagnosis of "
    "Alzheimer's disease or a related dementia within the next 5 years? Answer Yes or No.",
    "Answer: Yes",
    "Answer: No",
    "Reasoning: ",
    "1. 2. 3. 4. 5. Conclusion: risk factors more likely less likely dementia diagnosis",
]


def train_tokenizer(
    texts: Sequence[str], vocab_size: int, answer_words: Sequence[str] = DEFAULT_ANSWER_WORDS
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text is encodable) trained on ``texts``, in which the
    answer words (with their leading space) are single tokens."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    answers = [f"Answer: {word}" for word in answer_words]
    corpus = list(texts) + (TEMPLATE_PHRASES + answers) * 200
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    for word in (f" {w}" for w in answer_words):
        ids = fast(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(
                f"tiny tokenizer: answer word {word!r} is {len(ids)} tokens, expected 1"
            )
    return fast


def _pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    cfg: Mapping[str, Any],
) -> list[float]:
    """Causal-LM pretraining on history text so the base model knows the record's language."""
    steps, batch_size, max_len = (
        cfg["pretrain_steps"],
        cfg["pretrain_batch_size"],
        cfg["max_seq_len"],
    )
    if steps <= 0:
        return []
    rng = random.Random(cfg["seed"])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["pretrain_learning_rate"], weight_decay=0.01
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps)),
    )
    model.train()
    losses = []
    for step in range(steps):
        batch_texts = [texts[rng.randrange(len(texts))] for _ in range(batch_size)]
        batch = tokenizer(
            batch_texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt"
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log.info("pretrain step %d/%d loss %.3f", step + 1, steps, losses[-1])
    model.eval()
    return losses


def build_tiny_model(texts: Sequence[str], cfg: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Train the tokenizer, initialise and pretrain the model, save both to ``out_dir``."""
    if not texts:
        raise ValueError("build_tiny_model: no training histories to train the tokenizer on.")
    torch.manual_seed(cfg["seed"])
    tokenizer = train_tokenizer(
        texts, cfg["vocab_size"], cfg.get("answer_words", DEFAULT_ANSWER_WORDS)
    )
    tokenizer.model_max_length = cfg["max_seq_len"]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        num_key_value_heads=cfg["num_heads"],
        max_position_embeddings=cfg["max_seq_len"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    losses = _pretrain(model, tokenizer, list(texts), cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "pretrain_first_loss": losses[0] if losses else None,
        "pretrain_last_loss": losses[-1] if losses else None,
    }
