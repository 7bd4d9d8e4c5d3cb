"""The mPLUG-Owl2 port inside vlm_lens: tokenization (a SentencePiece model trained here), prompt formats, the
Q-Align score, and tracing (attention rows, logit lens, generation, batches, spans) against the model's own eager
outputs and KV-cache decoding.

The model is the reference fixture's (tests/fixtures/mplug_owl2_tiny) with a tokenizer added: vlm_lens's word-level
test tokenizer (tokenizer.json) for the tracing tests, and a LLaMA-style SentencePiece model trained in this file
for the tokenization tests (which need the ``sentencepiece`` and ``protobuf`` packages). Both vocabularies are
smaller than the fixture's 256 rows.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlm_lens as vl
from vlm_lens.biqa import qalign_score, weighted_score
from vlm_lens.biqa.vocabulary import LEVELS
from vlm_lens.core.errors import VlmLensError
from vlm_lens.models.mplug_owl2 import IMAGE_TOKEN_INDEX, PROMPT_FORMATS
from vlm_lens.tracing.logit_lens import LogitLens

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mplug_owl2_tiny"
T = 9
QUESTION = "How would you rate the quality of this image?"


def _corpus() -> list[str]:
    lines = []
    for word in LEVELS:
        lines += [f"The quality of the image is {word}.",
                  f"USER: {QUESTION}\nASSISTANT: The quality of the image is {word}."] * 3
    lines += ["USER: Describe the image in one word. ASSISTANT: A red sky with a tree.",
              "What is the colour of the sky? It is blue and bright, with some noise and blur.",
              "Rate the sharpness, contrast and brightness of this photo: 1 2 3 4 5 6 7 8 9 0"] * 3
    return lines


def _write_tokenizer(folder: Path, legacy: bool) -> bytes:
    """Train a LLaMA-like SentencePiece BPE model (identity normalisation, dummy prefix, <unk>/<s>/</s> = 0/1/2)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=160, model_type="bpe",
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, byte_fallback=False, hard_vocab_limit=False, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": legacy}))
    return model.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The fixture + a word-level tokenizer.json (no optional packages needed)."""
    from vlm_lens.zoo.tokenizer import word_tokenizer

    folder = tmp_path_factory.mktemp("owl") / "mplug_owl2_tiny_words"
    shutil.copytree(FIXTURE, folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sp_checkpoint(tmp_path_factory) -> Path:
    """The fixture + a trained SentencePiece tokenizer.model, as the official checkpoints ship."""
    pytest.importorskip("sentencepiece", reason="reading LLaMA's tokenizer.model needs sentencepiece")
    pytest.importorskip("google.protobuf", reason="transformers converts tokenizer.model with protobuf")
    folder = tmp_path_factory.mktemp("owl") / "mplug_owl2_tiny_sp"
    shutil.copytree(FIXTURE, folder)
    _write_tokenizer(folder, legacy=True)
    return folder


@pytest.fixture(scope="module")
def sp(sp_checkpoint):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(sp_checkpoint / "tokenizer.model"))


@pytest.fixture(scope="module")
def sp_model(sp_checkpoint) -> vl.LensModel:
    return vl.load(sp_checkpoint)


@pytest.fixture(scope="module")
def model(checkpoint) -> vl.LensModel:
    return vl.load(checkpoint)


@pytest.fixture(scope="module")
def eager(checkpoint) -> vl.LensModel:
    return vl.load(checkpoint, attn_implementation="eager")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.open(FIXTURE / "image.png").convert("RGB")


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str = "") -> None:
    assert actual.shape == expected.shape, f"{name}: {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.float().abs().max().clamp(min=1e-12)
    err = (actual.float() - expected.float()).abs().max()
    assert err <= rel * scale, f"{name}: max |diff| {err:.3g} > {rel} x {scale:.3g}"


# ------------------------------------------------------------------------------------------------- tokenization
@pytest.mark.parametrize("text", [
    "USER: <|image|>How would you rate the quality of this image? ASSISTANT:",
    f"USER: {QUESTION}\n<|image|>\nASSISTANT: The quality of the image is",
    "USER: <|image|> Describe the image in one word. ASSISTANT:",      # a chunk that starts with a space
    "<|image|><|image|>What is the colour of the sky?",                 # markers first and adjacent
    "USER: Rate it.<|image|>",                                          # marker last
])
def test_ids_around_the_marker(sp_model, sp, text):
    """Each chunk tokenized on its own by SentencePiece, BOS on the first only, -200 between chunks."""
    chunks = text.split("<|image|>")
    reference = [1] + sp.encode(chunks[0])
    for chunk in chunks[1:]:
        reference += [IMAGE_TOKEN_INDEX] + sp.encode(chunk)
    assert sp_model.processor.tokenize(text).ids == reference


def test_special_tokens_in_a_chunk(sp_model, sp):
    """``</s>`` closing an assistant turn becomes the eos id; with legacy=True the next text gets a dummy prefix."""
    text = "USER: <|image|>Rate it. ASSISTANT: good</s>USER: Why?"
    ids = sp_model.processor.tokenize(text).ids
    head, tail = "Rate it. ASSISTANT: good", "USER: Why?"
    assert ids == [1] + sp.encode("USER: ") + [IMAGE_TOKEN_INDEX] + sp.encode(head) + [2] + sp.encode(tail)


def test_non_legacy_special_tokens_match_transformers(tmp_path, sp_checkpoint):
    """With legacy=False no dummy prefix follows a special token: the same as transformers' own LLaMA tokenizer."""
    folder = tmp_path / "nonlegacy"
    shutil.copytree(sp_checkpoint, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": False}))
    processor = vl.load(folder).processor
    text = "The quality of the image is good.</s>USER: Why?"
    assert processor.tokenize(text).ids == processor.tokenizer(text)["input_ids"]


def test_original_layout_call(model, image):
    batch = model.processor(["USER: <|image|>Rate it. ASSISTANT:", "USER: Hi ASSISTANT:"], images=[image])
    assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1
    assert batch["attention_mask"][1, 0] == 0 and batch["images"].shape == (1, 3, 56, 56)
    with pytest.raises(VlmLensError, match="1 <\\|image\\|> marker"):
        model.processor("USER: <|image|>Rate it.", images=[image, image])


# ----------------------------------------------------------------------------------------------- prompt formats
def test_prompt_formats(model):
    adapter = model.adapter
    assert adapter.format_prompt("Rate it.", 1).text == "USER: <|image|>Rate it. ASSISTANT:"
    qalign = adapter.format_prompt("", 1, style="q-align")
    assert qalign.text == f"USER: {QUESTION}\n<|image|>\nASSISTANT: The quality of the image is"
    assert qalign.text[slice(*qalign.instruction_spans[0])] == QUESTION
    inline = adapter.format_prompt("Compare <|image|> and <|image|>.", 2)
    assert inline.text == "USER: Compare <|image|> and <|image|>. ASSISTANT:"
    assert set(PROMPT_FORMATS) == {"q-instruct", "q-align"}
    with pytest.raises(VlmLensError, match="q-align"):
        adapter.format_prompt("x", 1, style="llava")
    with pytest.raises(VlmLensError, match="no system prompt"):
        adapter.format_prompt("x", 1, system="You are helpful.")
    adapter.prompt_format = "q-align"
    try:
        assert adapter.format_prompt("", 1).text == qalign.text
    finally:
        adapter.prompt_format = "q-instruct"


def test_qalign_score_is_the_level_softmax_of_the_models_logits(eager, image):
    """The one-liner equals the level softmax of the logits of a plain forward in the original layout."""
    processor = eager.processor
    ids = [processor.tokenize(word).ids[1] for word in LEVELS]
    prompt = f"USER: {QUESTION}\n<|image|>\nASSISTANT: The quality of the image is"
    batch = processor(prompt, images=[image])
    with torch.no_grad():
        logits = eager.model(input_ids=batch["input_ids"], images=batch["images"]).logits[0, -1]
    probs = torch.softmax(logits[ids], dim=-1)
    expected = float(probs @ torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert qalign_score(eager, image) == pytest.approx(expected, abs=1e-5)
    assert qalign_score(eager, image, token_ids=ids, weights="1-5") == pytest.approx(1 + 4 * expected, abs=1e-4)
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    both = qalign_score(eager, [image, flipped])
    assert both[0] == pytest.approx(expected, abs=1e-5) and both[1] == pytest.approx(qalign_score(eager, flipped),
                                                                                    abs=1e-5)


def test_qalign_score_without_tokenizer():
    """A tokenizer-less model (the raw fixture): the one Q-Align scorer on the model's logits at explicit ids."""
    from safetensors.torch import load_file

    expected = load_file(str(FIXTURE / "expected.safetensors"))
    logits = expected["logits"][:, -1]
    ids = [15, 61, 81, 170, 9]
    probs = torch.softmax(logits[0, ids], dim=-1)
    score = weighted_score(logits[:, ids], weights=[5, 4, 3, 2, 1])
    assert float(score[0]) == pytest.approx(float(probs @ torch.tensor([5.0, 4, 3, 2, 1])), abs=1e-6)


# ---------------------------------------------------------------------------------------------------- tracing
def test_trace_spans_tokens_and_segments(model, image):
    t = vl.trace(model, image, QUESTION)
    span = t.spans["image"]
    assert (len(span), span.image_index, span.grid, span.layout) == (T, 0, None, ())
    tokens = t.tokens
    image_rows = tokens[tokens.segment == "image"]
    assert image_rows.pos.tolist() == list(range(span.start, span.stop))
    assert set(image_rows.id) == {IMAGE_TOKEN_INDEX} and set(image_rows.text) == {"<|image|>"}
    assert tokens.segment.iloc[0] == "system" and tokens.text.iloc[0] == "<s>"
    instruction = tokens[tokens.segment == "instruction"]
    tokenizer = model.adapter.tokenizer
    assert instruction.id.tolist() == tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    assert instruction.pos.tolist() == list(range(span.stop, span.stop + len(instruction)))
    assert tokens.segment.tolist()[-1] == "system"      # " ASSISTANT:" is the template's


def test_trace_with_the_sentencepiece_tokenizer(sp_model, image):
    """The official tokenizer layout: the user's words are exactly the instruction, the dummy prefix is not."""
    t = vl.trace(sp_model, image, QUESTION, generate=2)
    instruction = t.tokens[t.tokens.segment == "instruction"]
    assert sp_model.adapter.tokenizer.decode(instruction.id.tolist()).strip() == QUESTION
    assert t.tokens.segment.tolist()[:t.prompt_length].count("image") == T
    assert t.tokens.segment.tolist()[t.prompt_length:] == ["response"] * len(t.response_ids)


def test_trace_equals_eager_outputs(model, eager, image):
    """Attention rows (switched attention interface over sdpa) == eager output_attentions; hidden states == the
    model's output_hidden_states; lens of the last layer == logits."""
    t = vl.trace(model, image, QUESTION, keep=vl.Keep(query_positions=[-1, 3, 10]))
    encoded = eager.adapter.encode([[image]], [eager.adapter.format_prompt(QUESTION, 1)])
    with torch.no_grad():
        out = eager.model(**eager.adapter.forward_inputs(encoded.input_ids, encoded.attention_mask,
                                                         encoded.model_inputs),
                          output_attentions=True, output_hidden_states=True)
    queries = t.query_positions
    for layer in range(2):
        close(t.attention[layer], out.attentions[layer][0][:, queries], 1e-5, f"rows of layer {layer}")
    for index in range(2):
        close(t.hidden[index], out.hidden_states[index][0], 1e-5, f"hidden {index}")
    close(model.adapter.final_norm(t.hidden[2]), out.hidden_states[2][0], 1e-5, "normed last layer")
    close(t.logits, out.logits[0, queries], 1e-5, "logits")
    lens = t.lens(topk=1, layers=[2], positions=queries.tolist())
    assert lens.token_id.tolist() == out.logits[0, queries].argmax(-1).tolist()
    lens_logits = LogitLens(model.adapter).logits(t.hidden[2][queries])
    close(lens_logits, t.logits, 1e-4, "lens of the last layer")


def test_trace_of_an_eager_model(model, eager, image):
    """An eager model is traced through its returned weights; same rows and states as the sdpa model."""
    a = vl.trace(eager, image, QUESTION, generate=2)
    b = vl.trace(model, image, QUESTION, generate=2)
    assert a.response_ids == b.response_ids
    close(a.attention, b.attention, 1e-5, "rows")
    close(a.hidden, b.hidden, 1e-5, "hidden")


def test_trace_restores_the_model(model, image):
    config = model.adapter.text_config
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.modules())
    vl.trace(model, image, QUESTION)
    assert config._attn_implementation == "sdpa"
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.modules())


def test_generation_trace_equals_cached_decoding(model, image):
    t = vl.trace(model, image, QUESTION, generate=5)
    response = t.response_ids
    assert len(response) >= 1
    # teacher-forced logits at the positions that predicted the answer reproduce it (greedy)
    assert t.logits.argmax(-1)[:len(response)].tolist() == response
    # step-by-step KV-cache decoding gives the same hidden states at every position
    encoded = model.adapter.encode([[image]], [model.adapter.format_prompt(QUESTION, 1)])
    inputs = model.adapter.forward_inputs(encoded.input_ids, encoded.attention_mask, encoded.model_inputs)
    steps = []
    with torch.no_grad():
        out = model.model(**inputs, use_cache=True, output_hidden_states=True)
        steps.append(out.hidden_states)
        mask, cache = out.attention_mask, out.cache
        for token in response:  # the trace holds every response token as an input position
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            out = model.model(input_ids=torch.tensor([[token]]), attention_mask=mask, cache=cache, use_cache=True,
                              output_hidden_states=True)
            cache = out.cache
            steps.append(out.hidden_states)
    for layer in range(3):
        stepwise = torch.cat([s[layer][0] for s in steps])
        traced = t.hidden[layer] if layer < 2 else model.adapter.final_norm(t.hidden[layer])
        close(traced, stepwise, 1e-4, f"hidden {layer} vs cached decoding")


def test_batch_equals_unbatched(model, image):
    flipped = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    prompts = [QUESTION, "Describe the image in one word, with a tree and the sky."]
    batch = vl.trace(model, [image, [flipped, image]], prompts, generate=3)
    for i, (pictures, prompt) in enumerate(zip([image, [flipped, image]], prompts)):
        alone = vl.trace(model, pictures, prompt, generate=3)
        assert batch[i].tokens.equals(alone.tokens)
        assert {k: v.to_dict() for k, v in batch[i].spans.items()} == {k: v.to_dict() for k, v in alone.spans.items()}
        close(batch[i].hidden, alone.hidden, 1e-4, f"hidden of sample {i}")
        close(batch[i].attention, alone.attention, 1e-4, f"attention of sample {i}")
        close(batch[i].logits, alone.logits, 1e-4, f"logits of sample {i}")
    spans = batch[1].image_spans
    assert [(s.image_index, len(s)) for s in spans] == [(0, T), (1, T)] and spans[1].start == spans[0].stop


def test_more_markers_than_images_in_a_trace(model, image):
    with pytest.raises(VlmLensError, match="placeholder|<\\|image\\|>"):
        vl.trace(model, image, "Compare <|image|> with <|image|>.")
    with pytest.raises(VlmLensError, match="2 times for 1 image"):
        vl.trace(model, image, "USER: <|image|><|image|> ASSISTANT:", template=False)


def test_tiny_checkpoint_has_the_official_layout(tmp_path, image):
    """The docs' stand-in checkpoint: the original's key layout, loads and traces through vl.load."""
    import re

    from safetensors import safe_open

    from vlm_lens.testing.mplug_owl2 import tiny_mplug_owl2

    def layout(file: Path) -> set[str]:
        with safe_open(str(file), framework="pt") as handle:
            return {re.sub(r"\.\d+\.", ".N.", k) for k in handle.keys() if "inv_freq" not in k}

    folder = tiny_mplug_owl2(tmp_path / "tiny", layers=3)
    assert layout(folder / "model.safetensors") == layout(FIXTURE / "model.safetensors")
    t = vl.trace(vl.load(folder), image, QUESTION, generate=2)
    assert len(t.spans["image"]) == T and t.hidden.shape[0] == 4
