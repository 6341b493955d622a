"""The offline default: a synthetic preference task, a tokenizer trained on it, and a small GPT-2.

The task, `code-book`: a fixed secret code book maps 16 key words to 16 code words (a random bijection,
seeded). The prompt asks for the code of one key, after a few distractor keys; the chosen response is
its code word, the rejected response is another code word drawn uniformly. Every code word is chosen
and rejected equally often, so a response on its own says nothing (any response-only or bag-of-words
model scores 50%), and lengths are symmetric ("longer wins" scores ~50%, ties counted 0.5). To win, the
reward model must find the key in the prompt and check the response against the code book it learned.
`python -m reward_trainer.quickstart` prints these baselines on the generated held-out set.
"""

import random

from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

KEYS = "cat dog fox owl bee ant elk yak cow pig hen ram eel bat emu gnu".split()
CODES = "red tan sky sea sun oak ivy fig kiwi plum lime pear rose mint jade gold".split()
CODE_BOOK = dict(zip(KEYS, random.Random(7).sample(CODES, len(CODES))))
EOS, PAD = "<|endoftext|>", "<|pad|>"


def make_pair(rng: random.Random) -> dict[str, str]:
    """One preference pair of the code-book task."""
    key = rng.choice(KEYS)
    distractors = rng.sample(KEYS, rng.randint(2, 5))
    wrong = rng.choice([code for code in CODES if code != CODE_BOOK[key]])
    return {
        "prompt": f"{' '.join(distractors)} | code of {key}?\nanswer:",
        "chosen": " " + CODE_BOOK[key],
        "rejected": " " + wrong,
    }


def make_pairs(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [make_pair(rng) for _ in range(n)]


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on text of the task. It adds no special tokens (the reward is read at a
    text's own last token, `reward_trainer.loading`), pads with its own `<|pad|>` and cuts long text from the left."""
    corpus = [p["prompt"] + p["chosen"] for p in make_pairs(2000, seed=12345)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=256,
        truncation_side="left",
    )


def tiny_gpt2_config(tokenizer: PreTrainedTokenizerFast, **overrides) -> GPT2Config:
    """The built-in 2-layer GPT-2's config, dropout off, sized for `tokenizer`; `overrides` change any field."""
    fields = dict(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=128,
        n_layer=2,
        n_head=4,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2Config(**(fields | overrides))


def build_tiny_gpt2(tokenizer: PreTrainedTokenizerFast) -> GPT2ForSequenceClassification:
    """A 2-layer GPT-2 with a scalar head, randomly initialised (seeded by the caller)."""
    return GPT2ForSequenceClassification(tiny_gpt2_config(tokenizer))
