"""A 32,000-token byte-level BPE (GPT-2's split), trained here in ~10 s, for benchmarks that want a
tokenizer of a real model's size without downloading one.

Corpus: ~40 MB of the running Python's standard library sources (sorted, so the same Python
gives the same tokenizer) plus 50,000 sentences of ctxprobe's procedural prose (seed 7).

    python bench/bpe32k.py /tmp/bpe32k          # writes /tmp/bpe32k/tokenizer.json
"""

from __future__ import annotations

import random
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ctxprobe.probes.prose import sentences  # noqa: E402

VOCAB = 32000
CORPUS_BYTES = 40_000_000


def corpus() -> list[str]:
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(text)
        total += len(text)
        if total > CORPUS_BYTES:
            break
    prose = sentences(random.Random(7), 50000)
    return texts + ["".join(prose[i:i + 40]) for i in range(0, len(prose), 40)]


def ensure_bpe32k(directory: str | Path) -> Path:
    """The tokenizer directory, trained on first use."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    path = directory / "tokenizer.json"
    if path.is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    tok.save(str(path))
    return directory


if __name__ == "__main__":
    print(ensure_bpe32k(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bpe32k") / "tokenizer.json")
