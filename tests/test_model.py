"""The network, its masking, the vocabulary, the batching and the metrics."""

import numpy as np
import pytest
import torch
import torchaudio

from model.data import Example, batch_indices, collate
from model.features import deltas
from model.metrics import attention_in_own_word, scores
from model.network import (KINDS, BiLSTM, BiRNN, LossTerms, ModelSpec, build_model,
                           diagonal_prior, model_class, prior_weights, relative_distance)
from model.vocab import Vocabulary, load_word_vectors


def examples(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [Example(f"u{i}", rng.standard_normal((int(rng.integers(40, 200)), 39))
                    .astype(np.float32), list(rng.integers(2, 30, size=int(rng.integers(1, 9)))),
                    int(rng.integers(4))) for i in range(n)]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_class_scores_and_learns(kind):
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind=kind, vocab_size=30, hidden=16, embed_dim=8,
                                  attention_dim=8, dropout=0.0))
    batch = collate(examples(8))
    output = model(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
    probs = model.log_probs(output).exp()
    assert probs.shape == (8, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(8))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(30):
        loss, _ = model.training_loss(batch)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first  # it can fit a small batch


# The settings the authors' code uses (configs/xu2019.yaml), each alone and all together.
AUTHORS = {"cell": "gru", "attention": "multihead", "attention_heads": 4,
           "word_pooling": "attention", "frame_projection": 24, "encoder_dropout": True}
VARIANTS = {"default": {}, "gru": {"cell": "gru"},
            "multihead": {"attention": "multihead", "attention_heads": 4},
            "attention_pooling": {"word_pooling": "attention"},
            "projection": {"frame_projection": 24, "encoder_dropout": True},
            "authors": AUTHORS,
            "whole_utterance": {"speech_summary": True, "free_view": True,
                                "unimodal_heads": True, "predict_with_heads": True},
            "residual_fusion": {"unimodal_heads": True, "residual_fusion": True}}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_padding_never_changes_an_utterance_score(kind, variant):
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind=kind, vocab_size=30, hidden=16, embed_dim=8,
                                  attention_dim=8, **VARIANTS[variant])).eval()
    data = examples(6, seed=1)
    together = collate(data)
    with torch.no_grad():
        batched = model.log_probs(model(together.frames, together.frame_lengths,
                                        together.words, together.word_lengths))
        for i, e in enumerate(data):
            alone = collate([e])
            single = model.log_probs(model(alone.frames, alone.frame_lengths, alone.words,
                                           alone.word_lengths))
            torch.testing.assert_close(single[0], batched[i], atol=1e-5, rtol=1e-5)


def test_bilstm_equals_a_packed_bidirectional_lstm_and_loads_its_weights():
    """The split BiLSTM gives a packed nn.LSTM(bidirectional=True)'s outputs and gradients,
    starts from the same weights for a seed, and loads a state dict saved from one."""
    lengths = torch.tensor([7, 3, 1, 5])
    x = torch.randn(4, 7, 6, requires_grad=True)
    torch.manual_seed(3)
    packed_lstm = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    torch.manual_seed(3)
    ours = BiLSTM(6, 5)
    torch.testing.assert_close(ours.backward_lstm.weight_hh_l0, packed_lstm.weight_hh_l0_reverse)

    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_lstm(packed)[0],
                                                         batch_first=True, total_length=7)
    expected_grad, = torch.autograd.grad(expected.square().sum(), x)
    out = ours(x, lengths)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out.square().sum(), x)[0], expected_grad)

    torch.manual_seed(4)
    saved = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    holder = torch.nn.Module()
    holder.lstm = saved
    loaded = BiLSTM(6, 5)
    loaded.load_state_dict(holder.state_dict())  # strict: every key renamed, none left
    torch.testing.assert_close(loaded.backward_lstm.bias_ih_l0, saved.bias_ih_l0_reverse)
    torch.testing.assert_close(loaded.forward_lstm.weight_ih_l0, saved.weight_ih_l0)


def test_a_bigru_equals_a_packed_bidirectional_gru():
    lengths = torch.tensor([7, 3, 1, 5])
    x = torch.randn(4, 7, 6)
    torch.manual_seed(3)
    packed_gru = torch.nn.GRU(6, 5, batch_first=True, bidirectional=True)
    torch.manual_seed(3)
    ours = BiRNN(6, 5, "gru")
    assert [n for n, _ in ours.named_parameters()][0] == "forward_gru.weight_ih_l0"
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_gru(packed)[0],
                                                         batch_first=True, total_length=7)
    torch.testing.assert_close(ours(x, lengths), expected)


@pytest.mark.parametrize("attention", ["additive", "dot", "multihead"])
def test_attention_weights_cover_only_real_frames(attention):
    model = build_model(ModelSpec(kind="align", vocab_size=30, hidden=16, embed_dim=8,
                                  attention_dim=8, attention=attention, frame_pool=5)).eval()
    batch = collate(examples(4, seed=2))
    with torch.no_grad():
        _, weights = model(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths,
                           return_attention=True)
    pooled = (batch.frame_lengths + 4) // 5
    for i in range(4):
        torch.testing.assert_close(weights[i].sum(-1), torch.ones(weights.shape[1]))
        assert torch.all(weights[i, :, pooled[i]:] == 0)


def test_the_authors_variant_shapes_and_layers():
    """GRUs, a 24-unit frame projection, 4-head attention whose weights are the heads' mean,
    attention pooling over the words and dropout after each encoder: shapes, and the
    layers that are (or are not) there."""
    torch.manual_seed(0)
    spec = ModelSpec(kind="align", vocab_size=30, hidden=16, embed_dim=8, frame_pool=5,
                     alignment_prior=0.0, **AUTHORS)
    model = build_model(spec)
    names = dict(model.named_parameters())
    assert names["speech.project.weight"].shape == (24, 39)
    assert names["speech.lstm.forward_gru.weight_ih_l0"].shape == (3 * 16, 24)
    assert names["fusion.backward_gru.weight_hh_l0"].shape == (3 * 16, 16)
    assert names["attention.query.weight"].shape == (32, 32)
    assert names["pool.context.weight"].shape == (1, 32)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 6
    plain = build_model(ModelSpec(kind="align", vocab_size=30))
    assert sum(isinstance(m, torch.nn.Dropout) for m in plain.modules()) == 2
    assert not any("gru" in n or "pool." in n for n, _ in plain.named_parameters())

    batch = collate(examples(5, seed=2))
    model.eval()
    with torch.no_grad():
        out = model.outputs(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
        # The heads' own weights, averaged, are what attention_outputs returns.
        text = model.text(batch.words, batch.word_lengths)
        speech, steps = model.speech(batch.frames, batch.frame_lengths)
        mask = torch.arange(speech.shape[1])[None] < steps[:, None]
        attention = model.attention
        q = attention.query(text).view(5, -1, 4, 8).transpose(1, 2)
        k = attention.key(speech).view(5, -1, 4, 8).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask[:, None, None],
                                                                   float("-inf"))
        heads = scores.softmax(-1)  # (B, 4, W, T')
    assert out.logits.shape == (5, 4)
    assert out.attention.shape == (5, batch.words.shape[1], speech.shape[1])
    torch.testing.assert_close(out.attention, heads.mean(1))
    assert not torch.allclose(heads[:, 0], heads[:, 1])


def test_multihead_needs_heads_that_divide_the_states():
    with pytest.raises(ValueError, match="3 heads do not divide 32"):
        build_model(ModelSpec(kind="align", vocab_size=30, hidden=16, attention="multihead",
                              attention_heads=3))


def test_attention_pooling_weighs_real_words_only():
    from model.network import AttentionPooling

    torch.manual_seed(0)
    pool = AttentionPooling(6)
    x = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pooled = pool(x, mask)
    x_changed = x.clone()
    x_changed[0, 2:] = 100.0  # padding: never weighed
    torch.testing.assert_close(pool(x_changed, mask), pooled)
    u = torch.tanh(pool.project(x[0, :2])) @ pool.context.weight[0]
    torch.testing.assert_close(pooled[0], u.softmax(0) @ x[0, :2])


def test_settings_added_since_are_saved_only_when_used():
    """A bundle keeps the spec's keys in SAVED_ORDER, as it always has; a setting added
    since appears only when it is not its default, so a model without it saves the same
    bytes, and a bundle saved before it existed loads with its default."""
    plain = ModelSpec(kind="align", vocab_size=30, alignment_prior=0.0,
                      speech_summary=False).to_dict()
    assert list(plain) == list(ModelSpec.SAVED_ORDER)
    # The prior and the summary are on by default, but a bundle without their keys was
    # built without them.
    assert ModelSpec(kind="align", vocab_size=30).to_dict() == {
        **plain, "alignment_prior": 0.05, "speech_summary": True}
    authors = ModelSpec(kind="align", vocab_size=30, alignment_prior=0.0,
                        speech_summary=False, **AUTHORS).to_dict()
    assert list(authors)[:len(plain)] == list(plain)
    assert {k: authors[k] for k in list(authors)[len(plain):]} == {
        k: v for k, v in AUTHORS.items() if k != "attention"}
    assert ModelSpec.from_dict(plain) == ModelSpec(kind="align", vocab_size=30,
                                                   alignment_prior=0.0, speech_summary=False)
    assert ModelSpec.from_dict(authors).cell == "gru"


def test_unimodal_heads_classify_each_encoder_and_prediction_ignores_them():
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind="align", vocab_size=30, hidden=16, embed_dim=8,
                                  attention_dim=8, unimodal_heads=True)).eval()
    batch = collate(examples(5, seed=3))
    with torch.no_grad():
        out = model.outputs(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
        speech_logits, text_logits = out.unimodal
        assert speech_logits.shape == text_logits.shape == (5, 4)
        torch.testing.assert_close(model(batch.frames, batch.frame_lengths, batch.words,
                                         batch.word_lengths), out.logits)
        # The speech head sees speech only, the text head words only.
        shuffled = batch.words.clone()
        shuffled[shuffled > 0] = 7
        other = model.outputs(batch.frames, batch.frame_lengths, shuffled, batch.word_lengths)
        torch.testing.assert_close(other.unimodal[0], speech_logits)
        assert not torch.allclose(other.unimodal[1], text_logits)
    # A bundle saved before the heads existed has no such key in its spec and still loads.
    plain = ModelSpec(kind="align", vocab_size=30).to_dict()
    del plain["unimodal_heads"]
    assert not hasattr(build_model(ModelSpec(**plain)), "speech_head")


def distance_from_the_diagonal(attention, word_lengths, step_lengths) -> float:
    """How far the words' attention sits from their place on the diagonal, as a share of
    the utterance: the mean over the real words."""
    _, w, t = attention.shape
    far = (attention * relative_distance(word_lengths, step_lengths, w, t).abs()).sum(-1)
    return far[torch.arange(w)[None, :] < word_lengths[:, None]].mean().item()


def test_the_diagonal_prior_starts_each_word_at_its_place_and_content_can_move_it():
    words, steps = torch.tensor([4, 2]), torch.tensor([20, 10])
    prior = diagonal_prior(words, steps, 4, 20, width=0.1)
    # Word i of W peaks at the step j of T where (j + 0.5) / T is (i + 0.5) / W.
    assert prior[0].argmax(-1).tolist() == [2, 7, 12, 17]
    assert prior[1, :2, :10].argmax(-1).tolist() == [2, 7]
    # Untrained, the model's attention sits on the diagonal with the prior, not without.
    batch = collate(examples(6, seed=5))
    distance = {}
    for width in (0.0, 0.1):
        torch.manual_seed(0)
        model = build_model(ModelSpec(kind="align", vocab_size=30, hidden=16, embed_dim=8,
                                      attention_dim=8, alignment_prior=width)).eval()
        with torch.no_grad():
            out = model.outputs(batch.frames, batch.frame_lengths, batch.words,
                                batch.word_lengths)
        distance[width] = distance_from_the_diagonal(out.attention, batch.word_lengths,
                                                    out.speech_lengths)
    assert distance[0.1] < 0.5 * distance[0.0]
    # A bias, not a mask: scores strong enough take a word anywhere in the utterance.
    scores = torch.zeros(1, 4, 20)
    scores[0, 0, 19] = 50.0
    weights = torch.softmax(scores + prior[:1], -1)
    assert weights[0, 0].argmax() == 19 and weights[0, 1].argmax() == 7


def test_a_bundle_saved_before_the_prior_existed_loads_without_it():
    saved = ModelSpec(kind="align", vocab_size=30).to_dict()
    del saved["alignment_prior"]
    assert ModelSpec.from_dict(saved).alignment_prior == 0.0
    assert ModelSpec.from_dict({**saved, "alignment_prior": 0.1}).alignment_prior == 0.1
    del saved["speech_summary"]  # and before the summary: its output layer reads words only
    assert not ModelSpec.from_dict(saved).speech_summary
    assert build_model(ModelSpec.from_dict(saved)).out.in_features == 2 * saved["hidden"]


def test_attention_in_own_word_against_spread_evenly():
    weights = np.array([[0.8, 0.2, 0.0, 0.0],   # word 0 on its own steps
                        [0.25, 0.25, 0.25, 0.25]])  # word 1 everywhere
    # Steps of 0.05 s: word 0 covers steps 0-1; word 1 runs past the end, so steps 2-3.
    spans = {0: (0.0, 0.1), 1: (0.1, 0.25)}
    mass, share = attention_in_own_word(weights, spans, step_seconds=0.05)
    np.testing.assert_allclose(mass, [1.0, 0.5])
    np.testing.assert_allclose(share, [0.5, 0.5])


def test_prior_lift_is_the_priors_own_attention_on_each_words_speech():
    """Two words over four steps of 0.25 s, each word spoken over half the utterance.
    By hand, at width 0.1: word 0 sits at 1/4, the steps at 1/8, 3/8, 5/8
    and 7/8, so its prior scores are -d^2 / (2 * 0.1^2) = -0.78125, -0.78125, -7.03125,
    -19.53125, and the mass on its own two steps is 2 / (2 + e^-6.25 + e^-18.75)."""
    from components.evaluate import _alignment_summary

    by_hand = 2 / (2 + np.exp(-6.25) + np.exp(-18.75))  # 0.999036
    prior = prior_weights(2, 4, 0.1).numpy()
    np.testing.assert_allclose(prior[0], np.exp([-0.78125, -0.78125, -7.03125, -19.53125])
                               / np.exp([-0.78125, -0.78125, -7.03125, -19.53125]).sum(),
                               rtol=1e-6)
    trained = np.array([[0.7, 0.2, 0.1, 0.0], [0.0, 0.1, 0.2, 0.7]])  # 0.9 on their own
    case = {"weights": trained, "prior_weights": prior, "step_seconds": 0.25,
            "spans": {0: (0.0, 0.5), 1: (0.5, 1.0)}}
    summary = _alignment_summary([case])
    assert summary["lift"] == pytest.approx(0.9 / 0.5)
    assert summary["prior_lift"] == pytest.approx(by_hand / 0.5, rel=1e-6)  # 1.99807
    assert summary["lift_over_prior"] == pytest.approx(0.9 / by_hand, rel=1e-6)
    # No prior: its own weights are spread evenly, a lift of exactly 1.
    flat = _alignment_summary([{**case, "prior_weights": prior_weights(2, 4, 0).numpy()}])
    assert flat["prior_lift"] == pytest.approx(1.0)


def test_ua_is_mean_recall_not_precision():
    labels = [0, 0, 0, 0, 1, 1, 2, 3]
    predicted = [0, 0, 0, 0, 0, 0, 2, 3]
    s = scores(labels, predicted, ["a", "b", "c", "d"])
    assert s["wa"] == 6 / 8
    assert s["ua"] == pytest.approx((1 + 0 + 1 + 1) / 4)
    assert s["per_class"]["a"]["precision"] == pytest.approx(4 / 6)
    assert s["confusion"] == [[4, 0, 0, 0], [2, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert s["confusion_normalized"][1] == [1.0, 0, 0, 0]


def test_vocabulary_and_unknown_words(tmp_path):
    vocab = Vocabulary.build(["Hello there.", "Hello [LAUGHTER] you!"])
    assert vocab.words[:3] == ["<pad>", "<unk>", "hello"]
    assert vocab.encode("hello stranger") == [2, 1]
    assert vocab.encode("") == [1]
    assert Vocabulary.from_list(vocab.to_list()).ids == vocab.ids
    vectors = tmp_path / "glove.txt"
    vectors.write_text("hello 1 2 3\nzebra 4 5 6\n")
    matrix, found = load_word_vectors(vectors, vocab, 3)
    assert found == 1 and matrix[2].tolist() == [1, 2, 3] and matrix[0].tolist() == [0, 0, 0]
    vectors.write_text("hello 1 2\n")
    with pytest.raises(ValueError, match="expected a word and 3 numbers"):
        load_word_vectors(vectors, vocab, 3)


def test_the_authors_tokens_and_a_word_limit():
    from model.text import Tokenizer

    text = "Oh, I'm fine. Really?! [LAUGHTER]"
    assert Tokenizer()(text) == ["oh", "i'm", "fine", "really"]
    assert Tokenizer(punctuation=True)(text) == ["oh", ",", "i'm", "fine", ".", "really", "?",
                                                 "!"]
    assert Tokenizer(punctuation=True, max_words=3)(text) == ["oh", ",", "i'm"]
    assert Tokenizer().to_dict() == {}  # today's: nothing new in a bundle
    limited = Tokenizer(punctuation=True, max_words=3)
    assert Tokenizer.from_dict(limited.to_dict()) == limited
    vocab = Vocabulary.build(["Oh, fine.", "Fine!"], tokenizer=limited)
    assert vocab.words[2] == "fine" and "," in vocab.ids and "!" in vocab.ids
    assert vocab.encode("fine, fine, fine.") == [vocab.ids["fine"], vocab.ids[","],
                                                 vocab.ids["fine"]]


def test_word_vectors_draw_unknown_words_as_asked(tmp_path):
    vocab = Vocabulary.build(["hello there you"])
    vectors = tmp_path / "glove.txt"
    vectors.write_text("hello 1 2 3\n")
    normal, _ = load_word_vectors(vectors, vocab, 3)
    uniform, found = load_word_vectors(vectors, vocab, 3, unknown="uniform")
    assert found == 1 and uniform[2].tolist() == [1, 2, 3] and not uniform[0].any()
    unknown = uniform[[1, 3, 4]]
    assert np.abs(unknown).max() <= 1 and np.abs(unknown).max() > 0.3
    assert np.abs(normal[[1, 3, 4]]).max() < 0.5


def test_bucketing_cuts_padding_and_covers_everything():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 3000, size=500).tolist()

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b)
                   for b in batches)

    bucketed = batch_indices(lengths, 32, np.random.default_rng(1), bucketing=True)
    plain = batch_indices(lengths, 32, np.random.default_rng(1), bucketing=False)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(500))
    assert padding(bucketed) < 0.2 * padding(plain)


def test_deltas_equal_torchaudio():
    c = torch.randn(100, 13)
    torch.testing.assert_close(deltas(c).T, torchaudio.functional.compute_deltas(
        c.T.contiguous(), win_length=5), atol=1e-5, rtol=1e-5)


def _cpu_has_a_bf16_lstm() -> bool:
    """oneDNN runs an LSTM under bf16 autocast only on CPUs with AVX512-BF16 or AMX; on
    AVX2-only CPUs (many AMD EPYCs) it refuses ("could not create a primitive descriptor").
    Training autocasts on CUDA alone, so this is the test's limit, not the product's."""
    lstm = torch.nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 2, 4))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_trains_like_float32(kind):
    """The arithmetic of the CUDA path (bf16 autocast; -inf masks, packing and softmax under
    it), run on the CPU's autocast: no CUDA here, so this is as close as a test gets."""
    if not _cpu_has_a_bf16_lstm():
        pytest.skip("this CPU has no bf16 LSTM kernel (oneDNN needs AVX512-BF16 or AMX)")
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind=kind, vocab_size=30, hidden=16, embed_dim=8,
                                  attention_dim=8, dropout=0.0))
    batch = collate(examples(6, seed=5))

    def loss_and_grads(bf16: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.training_loss(batch)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()
                                       if p.grad is not None])

    loss32, grads32 = loss_and_grads(False)
    loss16, grads16 = loss_and_grads(True)
    assert np.isfinite(loss16) and torch.isfinite(grads16).all()
    assert loss16 != loss32  # autocast really ran in bf16
    assert loss16 == pytest.approx(loss32, rel=0.05)
    cosine = torch.nn.functional.cosine_similarity(grads16, grads32, dim=0)
    assert cosine > 0.95


def test_bootstrap_intervals_hold_the_scores_and_narrow_with_more_utterances():
    from model.metrics import bootstrap_intervals

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    noisy = np.where(rng.random(2000) < 0.7, labels, rng.integers(0, 4, 2000))
    sessions = np.repeat([1, 2], 1000)
    perfect = bootstrap_intervals(labels[:80], labels[:80], sessions[:80], 4, 200)
    assert perfect == {"ua": (1.0, 1.0), "wa": (1.0, 1.0)}
    widths = []
    for n in (80, 2000):
        got = bootstrap_intervals(labels[:n], noisy[:n], sessions[:n], 4, 500, seed=1)
        wa = float(np.mean(labels[:n] == noisy[:n]))
        assert got["wa"][0] < wa < got["wa"][1]
        widths.append(got["ua"][1] - got["ua"][0])
    assert widths[1] < widths[0] / 3  # 25 times the data: about a fifth of the width



@pytest.mark.parametrize("kind, reads, fuses, attends", [
    ("align", {"speech", "text"}, True, True), ("late_fusion", {"speech", "text"}, False, False),
    ("speech", {"speech"}, False, False), ("text", {"text"}, False, False)])
def test_a_model_says_what_it_reads_and_does(kind, reads, fuses, attends):
    """Training and evaluation ask the model, never its kind: what it reads decides the
    masking, the word vectors and the ablation; joint fusion the modality dropout."""
    model = build_model(ModelSpec(kind=kind, vocab_size=30, hidden=8, embed_dim=8,
                                  attention_dim=8))
    assert model.modalities == reads == model_class(kind).modalities
    assert (model.joint_fusion, model.has_attention) == (fuses, attends)
    batch = collate(examples(4, seed=2))
    loss, output = model.training_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert model.log_probs(output).shape == (4, 4)


def test_late_fusion_learns_each_branch_and_averages_probabilities():
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind="late_fusion", vocab_size=30, hidden=8, embed_dim=8,
                                  dropout=0.0)).eval()
    batch = collate(examples(4, seed=3))
    loss, output = model.training_loss(batch)
    speech, text = output
    each = [torch.nn.functional.cross_entropy(o, batch.labels) for o in (speech, text)]
    torch.testing.assert_close(loss, (each[0] + each[1]) / 2)
    mean = (speech.softmax(-1) + text.softmax(-1)) / 2
    torch.testing.assert_close(model.log_probs(output).exp(), mean)


def test_align_loss_adds_the_terms_it_is_given():
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind="align", vocab_size=30, hidden=8, embed_dim=8,
                                  attention_dim=8, dropout=0.0, unimodal_heads=True))
    batch = collate(examples(4, seed=4))
    plain, _ = model.training_loss(batch)
    heads, _ = model.training_loss(batch, terms=LossTerms(unimodal=1.0))
    assert heads > plain


def test_the_whole_utterance_options_each_add_what_they_say():
    """speech_summary: the output layer also reads the speech's max over time; free_view:
    each word also reads the speech the same scores pick without the prior; predict_with_heads:
    prediction averages the fusion head's and the unimodal heads' probabilities."""
    from model.network import Attention, masked_max

    torch.manual_seed(0)
    base = dict(kind="align", vocab_size=30, hidden=16, embed_dim=8, attention_dim=8,
                dropout=0.0, unimodal_heads=True)
    batch = collate(examples(5, seed=4))
    inputs = (batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
    model = build_model(ModelSpec(**base, speech_summary=True)).eval()
    assert model.out.in_features == 4 * 16
    with torch.no_grad():
        model.out.weight[:, :32] = 0  # the fused words' half: what is left is the speech's
        speech, lengths = model.speech(batch.frames, batch.frame_lengths)
        mask = torch.arange(speech.shape[1])[None, :] < lengths[:, None]
        expected = masked_max(speech, mask) @ model.out.weight[:, 32:].T + model.out.bias
        torch.testing.assert_close(model(*inputs), expected)

    spec = ModelSpec(**base, free_view=True)
    attention = Attention(spec).eval()
    words, speech = torch.randn(2, 3, 32), torch.randn(2, 7, 32)
    speech_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    prior = diagonal_prior(torch.tensor([3, 2]), torch.tensor([7, 4]), 3, 7, 0.1)
    with torch.no_grad():
        both, weights = attention(words, speech, speech_mask, prior, free_view=True)
        aligned, same_weights = attention(words, speech, speech_mask, prior)
        free, _ = attention(words, speech, speech_mask)
    torch.testing.assert_close(both, torch.cat([aligned, free], -1))
    torch.testing.assert_close(weights, same_weights)
    assert not torch.allclose(aligned, free)
    assert build_model(spec).fusion.forward_lstm.input_size == 6 * 16

    model = build_model(ModelSpec(**base, predict_with_heads=True)).eval()
    with torch.no_grad():
        out = model.outputs(*inputs)
        heads = torch.stack([out.logits, *out.unimodal]).softmax(-1).mean(0)
        torch.testing.assert_close(model.log_probs(model(*inputs)).exp(), heads)
        assert not torch.allclose(heads, out.logits.softmax(-1))


def test_residual_fusion_predicts_and_trains_on_the_three_heads_logits_summed():
    torch.manual_seed(0)
    base = dict(kind="align", vocab_size=30, hidden=16, embed_dim=8, attention_dim=8,
                dropout=0.0, unimodal_heads=True)
    batch = collate(examples(5, seed=4))
    inputs = (batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
    plain = build_model(ModelSpec(**base)).eval()
    summed = build_model(ModelSpec(**base, residual_fusion=True)).eval()
    summed.load_state_dict(plain.state_dict())  # the same weights: only the output differs
    with torch.no_grad():
        out = plain.outputs(*inputs)
        expected = out.logits + out.unimodal[0] + out.unimodal[1]
        torch.testing.assert_close(summed(*inputs), expected)
        loss, _ = summed.training_loss(batch)
        torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(expected,
                                                                            batch.labels))
