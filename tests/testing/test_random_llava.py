"""random_llava: the in-memory builder behind tiny_llava (same weights as the written checkpoint), any vocabulary
size with every id decodable, any dtype, and a clear error for a vocabulary too small."""

from __future__ import annotations

import pytest
import torch

import vlm_lens as vl
from vlm_lens.testing import tiny_llava
from vlm_lens.testing.llava import VOCABULARY, random_llava


def test_same_weights_as_the_written_checkpoint(tmp_path):
    written = vl.load(tiny_llava(tmp_path, layers=2, kv_heads=2, seed=5)).model.state_dict()
    model, _ = random_llava(layers=2, kv_heads=2, seed=5)
    built = model.state_dict()
    assert written.keys() == built.keys()
    assert all(torch.equal(written[k], built[k]) for k in written)


def test_a_larger_vocabulary_decodes_every_id():
    model, processor = random_llava(layers=1, vocab=400, dtype=torch.bfloat16)
    m = vl.wrap(model, processor)
    assert model.config.text_config.vocab_size == len(processor.tokenizer) == 400
    assert m.adapter.output_head.weight.shape[0] == 400
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    texts = m.adapter.token_texts(list(range(400)))
    assert texts[:len(VOCABULARY)] == VOCABULARY and texts[-1] == f"w{400 - len(VOCABULARY) - 1}"
    assert len(set(texts)) == 400


def test_a_vocabulary_too_small_is_refused():
    with pytest.raises(vl.VlmLensError, match=rf"vocab=10: .* at least {len(VOCABULARY)} ids"):
        random_llava(vocab=10)
