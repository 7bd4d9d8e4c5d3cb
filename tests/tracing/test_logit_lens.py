"""Logit lens: last layer == the model's logits, every layer == a naive norm+head over HF's hidden states,
chunking changes nothing and bounds memory, target words map to the right single tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT

import vlm_lens as vl
from vlm_lens.tracing.logit_lens import LogitLens, target_token_ids


def test_last_layer_lens_equals_model_logits(model, image):
    t = vl.trace(model, image, PROMPT, generate=4)
    lens = LogitLens(model.adapter)
    last = lens.logits(t.hidden_at(t.query_positions.tolist(), [model.adapter.n_layers])[0])
    torch.testing.assert_close(last, t.logits, atol=1e-4, rtol=0)
    table = t.lens(topk=1, layers=[model.adapter.n_layers])
    assert table.token_id.tolist() == t.logits.argmax(-1).tolist()


def test_every_layer_matches_naive_lens(model, image):
    """Reference: HF's own output_hidden_states, decoded by hand with the model's norm and head."""
    t = vl.trace(model, image, PROMPT)
    inputs = model.processor(images=image, text=t.meta["rendered_prompt"], return_tensors="pt")
    with torch.no_grad():
        hs = model.model(**inputs, output_hidden_states=True).hidden_states
        n = model.adapter.n_layers
        naive = [model.model.lm_head(model.adapter.final_norm(h[0])) for h in hs[:n]]
        naive.append(model.model.lm_head(hs[n][0]))  # HF's last entry is already normed
    probs = torch.softmax(torch.stack(naive), -1)
    positions = [0, 4, 20, len(t.tokens) - 1]
    table = t.lens(topk=5, positions=positions)
    assert len(table) == (n + 1) * len(positions) * 5
    for row in table.itertuples():
        expected_p, expected_i = probs[row.layer, row.pos].topk(5)
        assert row.token_id == expected_i[row.rank - 1].item()
        assert row.prob == pytest.approx(expected_p[row.rank - 1].item(), abs=1e-5)


def test_chunking_changes_nothing_and_bounds_rows(models, image, monkeypatch):
    m = models["gqa"]
    t = vl.trace(m, image, PROMPT)
    hidden = t.hidden  # [layer, pos, d_model]: 4 x 31 rows
    big = LogitLens(m.adapter, chunk_bytes=2**30)
    vocab = big.vocab_size
    small = LogitLens(m.adapter, chunk_bytes=3 * 4 * vocab)  # three rows of float32 logits at a time
    sizes = []
    original = LogitLens.logits

    def spy(self, h):
        sizes.append(h.shape[0])
        return original(self, h)

    monkeypatch.setattr(LogitLens, "logits", spy)
    p_small, i_small = small.topk(hidden, 7)
    assert max(sizes) == 3 and sum(sizes) == hidden.shape[0] * hidden.shape[1]
    sizes.clear()
    p_big, i_big = big.topk(hidden, 7)
    assert len(sizes) == 1
    assert torch.equal(i_small, i_big)
    torch.testing.assert_close(p_small, p_big, atol=1e-6, rtol=0)
    ids = [5, 64, 66]
    torch.testing.assert_close(small.targets(hidden, ids)[0], big.targets(hidden, ids)[0], atol=1e-6, rtol=0)
    assert torch.equal(small.targets(hidden, ids)[1], big.targets(hidden, ids)[1])


def test_target_probabilities_and_ranks_match_naive(models, image):
    m = models["mha"]
    t = vl.trace(m, image, PROMPT, generate=3)
    words = ["excellent", "good", "fair", "poor", "bad"]
    table = t.lens_targets(words)
    tok = m.adapter.tokenizer
    ids = [tok.convert_tokens_to_ids(w) for w in words]
    assert table.token_id.tolist()[:5] == ids
    probs = torch.softmax(LogitLens(m.adapter).logits(t.hidden), -1)  # [layer, pos, vocab], all positions
    for row in table.itertuples():
        p = probs[row.layer, row.pos]
        assert row.prob == pytest.approx(p[row.token_id].item(), abs=1e-6)
        order = p.argsort(descending=True).tolist()
        assert row.rank == order.index(row.token_id) + 1


def test_target_words_unknown_or_multi_token(models):
    tok = models["mha"].adapter.tokenizer
    with pytest.raises(vl.VlmLensError, match=r"'zebra' -> \['<unk>'\]"):
        target_token_ids(tok, ["good", "zebra"])
    with pytest.raises(vl.VlmLensError, match=r"'very good' -> \['very', 'good'\]"):
        target_token_ids(tok, ["very good"])
    assert target_token_ids(tok, ["good", 7]) == [tok.convert_tokens_to_ids("good"), 7]


def test_target_words_take_the_in_sentence_form_with_byte_level_bpe():
    """Byte-level BPE has two tokens per word ("good" / "Ġgood"); in a sentence the level word is "Ġgood"."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["good poor fair bad excellent is the quality good", "goodness is good and poor is poor"] * 50
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=
                                                            pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    good = target_token_ids(tok, ["good"])[0]
    assert tok.convert_ids_to_tokens(good) == "Ġgood"
    assert tok.encode("the quality is good")[-1] == good


def test_topk_out_of_range(models, image):
    t = vl.trace(models["mha"], image, PROMPT)
    vocab = models["mha"].adapter.output_head.weight.shape[0]
    for bad in (0, vocab + 1, 2.5, True):
        with pytest.raises(vl.VlmLensError, match="topk"):
            t.lens(topk=bad)
    assert len(t.lens(topk=vocab)) == vocab * t.hidden.shape[0]
