"""The first informative rank (issue 16 item 6): the rank of the first gold token that is not
whitespace, beside `first_rank` (the first token's, often a lone space), held against
transformers' own forward pass; old databases gain the column empty, their first_rank untouched."""

import sqlite3

import pytest
import torch
from tiny_llama import write_checkpoint

from ctxprobe.cli import main
from ctxprobe.runner.score import read_answer
from ctxprobe.scoring import first_informative
from ctxprobe.store import Store


def test_first_informative_skips_whitespace_pieces():
    assert first_informative([" ", "12", "34"]) == 1
    assert first_informative(["\n", " ", "x"]) == 2
    assert first_informative([" 12", "34"]) == 0
    assert first_informative([" ", "  "]) == 0


def test_every_gold_token_is_ranked():
    rows = torch.tensor([[0.0, 9.0, 1.0, 2.0],      # gold 1: the most likely (rank 1)
                         [5.0, 4.0, 3.0, 6.0],      # gold 2: three above it (rank 4)
                         [1.0, 1.0, 0.5, 2.0]])     # gold 0: one strictly above (ties do not count)
    score = read_answer(rows, [1, 2, 0])
    assert score.first_rank == 1 and score.gold_ranks == [1, 4, 2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiny-llama"), chat_template=False)


def test_stored_informative_rank_matches_transformers(checkpoint, runner, tmp_path):
    from transformers import LlamaForCausalLM

    from ctxprobe.backends.native import NativeBackend, answer_ids_after
    from ctxprobe.probes import make_probe

    db = tmp_path / "r.db"
    result = runner.invoke(main, ["run", "--model", str(checkpoint), "--probe", "niah", "--lengths", "256",
                                  "--depths", "0,100", "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    with Store(db, readonly=True) as store:
        cells = store.cells(store.runs()[0].id)
    backend = NativeBackend(str(checkpoint), chat_template=False)
    hf = LlamaForCausalLM.from_pretrained(checkpoint).eval()
    spaces_first = 0
    for c in cells:
        probe = make_probe("niah", 256, c["depth"], seed=0, sample=0, tokenizer=backend.tokenizer)
        ids = list(probe.token_ids)
        answer = answer_ids_after(backend.tokenizer, probe.prompt, ids, probe.answer_text)
        with torch.no_grad():
            logits = hf(torch.tensor([ids + answer])).logits[0].float()
        rows = logits[len(ids) - 1:len(ids) - 1 + len(answer)]
        ranks = [int((rows[j] > rows[j, t]).sum()) + 1 for j, t in enumerate(answer)]
        pieces = [backend.tokenizer.decode([t]) for t in answer]
        k = next(j for j, piece in enumerate(pieces) if piece.strip())
        spaces_first += k > 0
        assert c["first_rank"] == ranks[0]
        assert c["informative_rank"] == ranks[k]
    assert spaces_first == len(cells)   # this tokenizer gives the answer's space a token of its own


def test_an_old_database_gains_the_column_and_keeps_its_ranks(tmp_path):
    from ctxprobe.store.migrations import migrate

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    migrate(conn, up_to=2)
    conn.execute("INSERT INTO runs (name, created, model_spec, model_fingerprint, backend, "
                 "tokenizer_fingerprint, version, command) VALUES ('r', 'now', 'm', 'f', '{}', 't', "
                 "'0', 'c')")
    conn.execute("INSERT INTO cells (run_id, family, length, depth, sample, seed, score, first_rank, "
                 "finished) VALUES (1, 'niah', 512, 50.0, 0, 0, 0.0, 1, 'now')")
    conn.commit()
    conn.close()
    with Store(db) as store:   # migrates
        [cell] = store.cells(store.runs()[0].id)
    assert cell["first_rank"] == 1 and cell["informative_rank"] is None
    assert cell["truncated"] is None and cell["ttft"] is None
