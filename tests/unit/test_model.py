"""The model's representation API, presets and activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from pretrain.model import ModelConfig, VideoLanguageModel, count_parameters, resolve


@pytest.fixture(scope="module")
def inputs(device: torch.device) -> dict:
    """Three clips and texts, padded, on `device` (--device)."""
    g = torch.Generator().manual_seed(0)
    B, M, N = 3, 7, 6
    frame_mask = torch.ones(B, M, dtype=torch.bool)
    frame_mask[0, 4:] = False
    text_mask = torch.ones(B, N, dtype=torch.bool)
    text_mask[1, 3:] = False
    cpu = {
        "frames": torch.randn(B, M, 64, generator=g),
        "frame_mask": frame_mask,
        "input_ids": torch.randint(1000, 2000, (B, N), generator=g),
        "text_mask": text_mask,
    }
    return {k: v.to(device) for k, v in cpu.items()}


@pytest.fixture(scope="module")
def model(device: torch.device) -> VideoLanguageModel:
    torch.manual_seed(0)
    return VideoLanguageModel(ModelConfig()).eval().to(device)


def test_every_representation_has_its_documented_shape(model, inputs) -> None:
    fr, fm, ids, tm = inputs["frames"], inputs["frame_mask"], inputs["input_ids"], inputs["text_mask"]
    e_v, e_t = model.embed_video(fr, fm), model.embed_text(ids, tm)
    o_v, o_t = model.cross(e_v, fm, e_t, tm)
    d, V = model.config.hidden, model.vocab_size
    assert e_v.shape == o_v.shape == model.mcb_v2t(o_v, fm).shape == model.mfm_head(o_v).shape == (3, 7, d)
    assert e_t.shape == o_t.shape == model.mcb_t2v(o_t, tm).shape == (3, 6, d)
    assert model.mlm_logits(o_t).shape == (3, 6, V)
    assert model.fusion_score(e_v, fm, e_t, tm).shape == (3,)
    assert model.mfm_regress(o_v).shape == model.mask_frames(fr, fm, True).shape == (3, 7, 64)  # raw Dv
    assert torch.all(e_v[0, 4:] == 0)  # padded frames carry nothing


def test_mask_frames_adds_the_mask_vector_to_masked_frames_only(model, inputs) -> None:
    fr, fm = inputs["frames"].clone(), inputs["frame_mask"]
    fr[0, 4:] = 1e3  # junk in the padded frames
    mfm = fm & (torch.arange(7, device=fm.device) % 3 == 1)  # (B, M)
    vec = model.mfm_mask_vector
    assert vec.shape == (64,) and 0.01 < vec.std().item() < 0.04  # HERO's init, normal std 0.02
    learned, zeroed = model.mask_frames(fr, mfm, learned=True), model.mask_frames(fr, mfm, learned=False)
    assert torch.equal(learned[~mfm], fr[~mfm]) and torch.equal(zeroed[~mfm], fr[~mfm])  # padding included
    assert torch.equal(learned[mfm], vec.detach().expand(int(mfm.sum()), 64))
    assert torch.all(zeroed[mfm] == 0)


def test_padding_does_not_change_the_valid_outputs(model, inputs) -> None:
    fr, fm, ids, tm = inputs["frames"].clone(), inputs["frame_mask"], inputs["input_ids"], inputs["text_mask"]
    o_v, o_t = model.cross(model.embed_video(fr, fm), fm, model.embed_text(ids, tm), tm)
    fr[0, 4:] = 1e3  # junk in the padded frames
    o_v2, o_t2 = model.cross(model.embed_video(fr, fm), fm, model.embed_text(ids, tm), tm)
    torch.testing.assert_close(o_v[0, :4], o_v2[0, :4])
    torch.testing.assert_close(o_t, o_t2)


def test_mlm_decoder_is_tied_to_the_word_embeddings(model) -> None:
    words = model.text.get_input_embeddings().weight
    assert any(p is words for _, p in model.external_parameters())
    names = [n for n, p in model.named_parameters() if p is words]
    assert len(names) == 1  # one tensor, no copy


def test_activation_checkpointing_gives_the_same_outputs_and_gradients(inputs) -> None:
    fr, fm, ids, tm = inputs["frames"], inputs["frame_mask"], inputs["input_ids"], inputs["text_mask"]
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        m = VideoLanguageModel(ModelConfig(activation_checkpointing=checkpointing)).train().to(fr.device)
        torch.manual_seed(1)  # the same dropout masks
        o_v, o_t = m.cross(m.embed_video(fr, fm), fm, m.embed_text(ids, tm), tm)
        (o_v.sum() + o_t.pow(2).sum()).backward()
        results.append([o_v.detach(), m.frame_proj.weight.grad, m.text.embeddings.word_embeddings.weight.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_presets_and_overrides() -> None:
    tiny = resolve(ModelConfig())
    assert (tiny.hidden, tiny.cross_layers, tiny.frame_dim) == (384, 2, 64)
    base = resolve(ModelConfig(preset="base"))
    assert (base.hidden, base.cross_layers, base.frame_dim, base.text_encoder) == (768, 6, 4352, "roberta-base")
    assert resolve(ModelConfig(preset="base", cross_layers=3)).cross_layers == 3
    with pytest.raises(ValueError, match="huge"):
        resolve(ModelConfig(preset="huge"))
    with pytest.raises(ValueError, match="divisible"):
        resolve(ModelConfig(hidden=100, heads=6))


def test_base_preset_builds_without_weights() -> None:
    model = VideoLanguageModel(ModelConfig(preset="base", text_pretrained=False))
    assert 150e6 < count_parameters(model) < 260e6
    assert model.text.config.hidden_size == 768 and model.frame_proj.in_features == 4352


def test_a_new_model_is_in_training_mode_throughout() -> None:
    """from_pretrained leaves the text encoder in eval mode; training must not start that way."""
    model = VideoLanguageModel(ModelConfig())
    assert all(m.training for m in model.modules())


def test_text_pooling_is_the_encoders_own() -> None:
    """auto: the packaged MiniLM (a sentence-transformers model trained with mean pooling) -> mean; a BERT
    -> [CLS]; RoBERTa (no sentence-level pretraining objective) -> mean; anything else is an error."""
    from pretrain.pooling import encoder_pooling

    assert resolve(ModelConfig()).text_pooling == "mean"
    assert resolve(ModelConfig(preset="base")).text_pooling == "mean"  # roberta-base
    assert encoder_pooling("bert-base-uncased") == "cls" and encoder_pooling("roberta-large") == "mean"
    assert resolve(ModelConfig(text_pooling="cls")).text_pooling == "cls"
    with pytest.raises(ValueError, match="text_pooling"):
        resolve(ModelConfig(text_pooling="max"))


def test_frames_are_standardised_with_the_corpus_statistics(model, inputs) -> None:
    fr, fm = inputs["frames"], inputs["frame_mask"]
    g = torch.Generator().manual_seed(5)
    mean, std = torch.randn(64, generator=g).to(fr.device), (torch.rand(64, generator=g) + 0.5).to(fr.device)
    standardised = model.embed_video((fr - mean) / std, fm)  # identity statistics: the fixture's fresh model
    try:
        model.set_frame_stats(mean, std)
        torch.testing.assert_close(model.embed_video(fr, fm), standardised)
        assert "frame_mean" in model.state_dict() and "frame_std" in model.state_dict()  # exports carry them
    finally:
        model.set_frame_stats(torch.zeros(64, device=fr.device), torch.ones(64, device=fr.device))
    with pytest.raises(ValueError, match="frame_dim"):
        model.set_frame_stats(torch.zeros(32), torch.ones(32))


COLLAPSE_TEXTS = [
    "now you cut the onion with a sharp knife",
    "the car engine needs new oil every year",
    "paint the fence with a wide brush",
    "my grandmother loved to knit warm scarves",
    "tighten the bolt on the bicycle wheel",
    "the stock market fell sharply today",
    "whisk two eggs with sugar until fluffy",
    "he scored a goal in the last minute",
]


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_unrelated_texts_and_videos_get_different_embeddings_at_init(preset: str) -> None:
    """The collapse guard, for every preset, at initialisation: unrelated texts and unrelated videos must
    not share one sentence / video vector (the mean pairwise cosine that training logs, sentence_cos and
    video_cos). Texts: 8 sentences on unrelated topics. Videos: 8 clips of ResNet-like features
    (non-negative, each dimension with its own scale, so the raw features share a large mean), with the
    model standardising them by the corpus statistics as training does (feature_stats.json). base:
    roberta-base is not on this machine and nothing is downloaded, so the packaged MiniLM's weights stand
    in for its text encoder; every other part is the preset's."""
    from pretrain.model import MINILM, build_model, load_tokenizer
    from pretrain.objectives import mean_pairwise_cosine
    from pretrain.pooling import masked_mean

    cfg = ModelConfig(preset=preset, **({"text_encoder": MINILM} if preset == "base" else {}))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    dim = resolve(cfg).frame_dim
    g = torch.Generator().manual_seed(1)
    frames = torch.relu(torch.randn(8, 20, dim, generator=g)) * (2 * torch.rand(dim, generator=g))  # (8, 20, Dv)
    corpus = frames.reshape(-1, dim)
    model.set_frame_stats(corpus.mean(0), corpus.std(0))
    enc = load_tokenizer(cfg)(COLLAPSE_TEXTS, padding=True, return_tensors="pt")
    ids, tm, fm = enc["input_ids"], enc["attention_mask"].bool(), torch.ones(8, 20, dtype=torch.bool)
    with torch.no_grad():
        sentences = model.sentence(model.embed_text(ids, tm), tm)  # (8, d)
        videos = masked_mean(model.embed_video(frames, fm), fm)  # (8, d)
    assert mean_pairwise_cosine(sentences) < 0.5, "sentence vectors of unrelated texts collapsed"
    assert mean_pairwise_cosine(videos) < 0.5, "video vectors of unrelated clips collapsed"


def test_every_attention_goes_through_sdpa(device, monkeypatch) -> None:
    """Training's attention calls torch's scaled_dot_product_attention (flash / memory-efficient kernels on a
    GPU): once per layer of the text encoder, the video encoder, T_cross and each MCB."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = VideoLanguageModel(ModelConfig(text_layers=2, cross_layers=2)).train().to(device)
    assert model.text.config._attn_implementation == "sdpa"
    calls, sdpa = [], F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(args[0].shape)  # (B, heads, L, d_head)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    B, M, N = 2, 5, 4
    ids = torch.randint(1000, 2000, (B, N), device=device)
    tm, fm = torch.ones(B, N, dtype=torch.bool, device=device), torch.ones(B, M, dtype=torch.bool, device=device)
    tm[1, 2:], fm[0, 3:] = False, False
    e_t = model.embed_text(ids, tm)
    e_v = model.embed_video(torch.randn(B, M, 64, device=device), fm)
    assert len(calls) == 2 + 1  # 2 text layers, 1 video layer (tiny preset)
    o_v, o_t = model.cross(e_v, fm, e_t, tm)
    model.mcb_v2t(o_v, fm), model.mcb_t2v(o_t, tm)
    assert len(calls) == 3 + 2 + 1 + 1
    assert calls[3][2] == M + N and calls[-1][1] == model.config.heads
