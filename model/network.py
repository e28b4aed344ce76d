"""The attention-alignment model of Xu et al. (Interspeech 2019) and the baselines it beats.

    speech frames (B, T, F) ─► pool ─► BiLSTM ─► s (B, T', 2H) ───────┐
                                                                      ├─ attention: each word
    words (B, W) ─► embedding ─► BiLSTM ─► h (B, W, 2H) ──────────────┘  over all frames
                                                   a_i = Σ_j α_ij s_j    (B, W, 2H)
                               α_i = softmax_j(score(h_i, s_j) - (i/W - j/T')² / 2σ²)
    [a_i ; h_i] ─► BiLSTM ─► max over words ─┬─► dropout ─► linear ─► class logits
    s ─► max over time (speech_summary) ──────┘

Baselines trained by the same loop: speech-only and text-only (encoder ─► max pool ─►
linear), and decision-level fusion (both, each with its own loss, probabilities averaged).
The diagonal prior (σ = spec.alignment_prior, a share of the utterance; 0: none) starts
each word's attention where its speech usually is, in order along the utterance: free
attention learns no alignment on its own (every word looks at the same salient frames),
and a word's own frames are what the fusion needs to read how that word was said.
The prior narrows each word's view to its own stretch, which loses what is spread over the
whole utterance (speaking rate, pitch level and range, loudness): the speech summary, the
speech states' max over time, joins the fused words before the output layer and keeps it.
So one model does both: its words bind to how they were said, and its last layer also hears
the whole delivery. (Chosen on validation speakers over four corpora; a second, prior-free
view per word, `free_view`, and averaging in the unimodal heads, `predict_with_heads`, were
tried and are off: benchmarks/RESULTS.md. So is `residual_fusion`: the output is the fusion
head's logits plus the speech and text heads', trained as one sum, so that what each
modality says on its own reaches the prediction as in decision-level fusion, and the fusion
head learns what they say together beyond it.)
Padded frames and words are masked everywhere: in the recurrent layers (BiRNN), in the attention
and in the pooling.

The authors' code (didi/delta, AlignClassModel) differs in places, each a ModelSpec
setting: GRUs (`cell`), a 512-unit relu layer per frame (`frame_projection`), 8-head
attention (`attention: multihead`, MultiHeadAttention), attention pooling over the words
(`word_pooling`, AttentionPooling) and dropout after every encoder (`encoder_dropout`).
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.spec import CELLS, KINDS, ModelSpec


def _lengths_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]  # (B, L)


class BiRNN(nn.Module):
    """A bidirectional LSTM (or GRU) over padded sequences that padding never enters, with
    the outputs of a packed run. Each direction is a one-way RNN over the whole padded batch;
    the backward one reads every sequence reversed within its length, so its padding too
    comes after the real steps. On CPU this is several times faster than a packed run,
    which steps through ever smaller batches (benchmarks/train.py)."""

    def __init__(self, inputs: int, hidden: int, cell: str = "lstm"):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r}")
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        # forward_lstm and backward_lstm, as saved models name an LSTM's; built in the
        # parameter order of nn.LSTM(bidirectional=True), so a seed initialises both the same.
        self.directions = f"forward_{cell}", f"backward_{cell}"
        for name in self.directions:
            self.add_module(name, rnn(inputs, hidden, batch_first=True))
        if cell == "lstm":
            self._register_load_state_dict_pre_hook(_split_bidirectional_weights)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        forward_rnn, backward_rnn = (getattr(self, name) for name in self.directions)
        lengths = lengths.clamp(min=1)
        mask = _lengths_mask(lengths, x.shape[1])[..., None]
        ahead, _ = forward_rnn(x)
        back, _ = backward_rnn(reverse_within(x, lengths))
        out = torch.cat([ahead, reverse_within(back, lengths)], dim=-1)
        return out * mask  # (B, L, 2H), zeros past each length


BiLSTM = BiRNN  # its name before GRUs were a choice (an LSTM unless told otherwise)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, L, D) with each row's first `length` steps in reverse order, padding left in place."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    source = lengths[:, None].to(x.device) - 1 - steps
    source = torch.where(source >= 0, source, steps)  # (B, L)
    return x.gather(1, source[..., None].expand_as(x))


def _split_bidirectional_weights(state_dict, prefix, *_):
    """Bundles saved before BiLSTM ran its directions apart hold one bidirectional nn.LSTM
    (`lstm.weight_ih_l0`, `lstm.weight_ih_l0_reverse`, ...): rename to the two LSTMs."""
    old = prefix + "lstm."
    for key in [k for k in state_dict if k.startswith(old)]:
        name = key[len(old):]
        if name.endswith("_reverse"):
            state_dict[f"{prefix}backward_lstm.{name[:-len('_reverse')]}"] = state_dict.pop(key)
        else:
            state_dict[f"{prefix}forward_lstm.{name}"] = state_dict.pop(key)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over dim 1 of (B, L, D), ignoring padded positions."""
    return x.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)


class MaxPooling(nn.Module):
    """(B, L, D) -> (B, D): the max over the real steps."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_max(x, mask)


class AttentionPooling(nn.Module):
    """(B, L, D) -> (B, D): a learnt weighted mean over the real steps, as in hierarchical
    attention networks (Yang et al. 2016) and the authors' code: u_i = tanh(W h_i + b),
    alpha = softmax over i of u_i . c."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Linear(dim, dim)
        self.context = nn.Linear(dim, 1, bias=False)  # c

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.context(torch.tanh(self.project(x))).squeeze(-1)  # (B, L)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return (weights[..., None] * x).sum(1)


def word_pooling(spec: ModelSpec) -> nn.Module:
    if spec.word_pooling == "attention":
        return AttentionPooling(2 * spec.hidden)
    return MaxPooling()


def encoder_dropout(spec: ModelSpec) -> nn.Module:
    """Dropout where the authors' code has it beside ours (ModelSpec.encoder_dropout); a
    no-op otherwise, which draws no random numbers, so models without it train as before."""
    return nn.Dropout(spec.dropout) if spec.encoder_dropout else nn.Identity()


class SpeechEncoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.pool = spec.frame_pool
        width = spec.frame_projection or spec.hidden
        self.project = nn.Linear(spec.feature_dim, width)
        # `lstm`, whatever the cell: the name saved models give the encoder's RNN.
        self.lstm = BiRNN(width, spec.hidden, spec.cell)
        self.projected_dropout = encoder_dropout(spec)
        self.state_dropout = encoder_dropout(spec)

    def forward(self, frames, frame_lengths):
        # Average consecutive frames: a 4 s turn is 400 frames, too long a chain for an LSTM.
        if self.pool > 1:
            frames, frame_lengths = pool_frames(frames, frame_lengths, self.pool)
        projected = self.projected_dropout(torch.relu(self.project(frames)))
        states = self.state_dropout(self.lstm(projected, frame_lengths))
        return states, frame_lengths  # (B, T', 2H)


def pool_frames(frames, lengths, pool: int):
    """Mean of each run of `pool` frames, counting real frames only, so an utterance pools
    the same alone as beside longer ones. (B, T, F) -> (B, ceil(T/pool), F)."""
    b, t, f = frames.shape
    steps = -(-t // pool)
    padded = F.pad(frames, (0, 0, 0, steps * pool - t))  # padding frames are zeros
    sums = padded.view(b, steps, pool, f).sum(2)
    starts = torch.arange(steps, device=lengths.device) * pool
    counts = (lengths[:, None] - starts[None, :]).clamp(0, pool)  # (B, T')
    pooled = sums / counts.clamp(min=1)[..., None].to(sums.dtype)
    return pooled, torch.div(lengths + pool - 1, pool, rounding_mode="floor")


class TextEncoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embed = nn.Embedding(spec.vocab_size, spec.embed_dim, padding_idx=0)
        self.lstm = BiRNN(spec.embed_dim, spec.hidden, spec.cell)
        self.dropout = nn.Dropout(spec.dropout)
        self.state_dropout = encoder_dropout(spec)

    def forward(self, words, word_lengths):
        states = self.lstm(self.dropout(self.embed(words)), word_lengths)
        return self.state_dropout(states)  # (B, W, 2H)


class Attention(nn.Module):
    """Each word state attends over all speech states; returns aligned speech + weights."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.kind = spec.attention
        d = 2 * spec.hidden
        if self.kind == "additive":  # Bahdanau: v^T tanh(W_w h_i + W_s s_j)
            self.w_word = nn.Linear(d, spec.attention_dim, bias=False)
            self.w_speech = nn.Linear(d, spec.attention_dim)
            self.v = nn.Linear(spec.attention_dim, 1, bias=False)
        else:  # scaled dot product of projected queries and keys
            self.query = nn.Linear(d, spec.attention_dim)
            self.key = nn.Linear(d, spec.attention_dim)

    def forward(self, words, speech, speech_mask, bias=None, free_view=False):
        """`bias` (B, W, T'), when given, is added to the scores before the softmax: the
        diagonal prior (`diagonal_prior`). With `free_view`, the speech the same scores
        pick without the bias is joined to the aligned speech (B, W, 4H); the weights
        returned are the biased ones."""
        if self.kind == "additive":
            # (B, W, T', A), the largest tensor of the model: tanh in place spares a copy
            # (the sum is not needed for the backward pass; tanh's output is).
            hidden = self.w_word(words)[:, :, None, :] + self.w_speech(speech)[:, None, :, :]
            scores = self.v(hidden.tanh_()).squeeze(-1)
        else:
            scores = self.query(words) @ self.key(speech).transpose(1, 2)
            scores = scores / self.key.out_features ** 0.5
        scores = scores.masked_fill(~speech_mask[:, None, :], float("-inf"))  # (B, W, T')
        weights = torch.softmax(scores if bias is None else scores + bias, dim=-1)
        aligned = weights @ speech  # (B, W, 2H)
        if free_view:
            aligned = torch.cat([aligned, torch.softmax(scores, dim=-1) @ speech], dim=-1)
        return aligned, weights  # (B, W, 2H or 4H), (B, W, T')


class MultiHeadAttention(nn.Module):
    """The authors' alignment (didi/delta, AlignClassModel): scaled dot-product attention in
    `attention_heads` heads, each word state the query, the speech states keys and values,
    all projected to 2H and split into heads of 2H / heads, the heads' outputs joined and
    projected back to 2H. Same interface as Attention; its weights are the heads' mean."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        d = 2 * spec.hidden
        if d % spec.attention_heads:
            raise ValueError(f"{spec.attention_heads} heads do not divide {d} values")
        self.heads = spec.attention_heads
        self.query, self.key, self.value = (nn.Linear(d, d) for _ in range(3))
        self.out = nn.Linear(d, d)

    def forward(self, words, speech, speech_mask, bias=None):
        """`bias` (B, W, T'), when given, is added to every head's scores (as in
        Attention)."""
        def split(x):  # (B, L, 2H) -> (B, heads, L, 2H / heads)
            return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.query(words)), split(self.key(speech)), split(self.value(speech))
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, heads, W, T')
        if bias is not None:
            scores = scores + bias[:, None]
        scores = scores.masked_fill(~speech_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        joined = (weights @ v).transpose(1, 2).reshape(words.shape)  # (B, W, 2H)
        return self.out(joined), weights.mean(1)  # (B, W, 2H), (B, W, T')


@dataclass(frozen=True)
class LossTerms:
    """Weights of the loss terms beside the classification loss, for the models that have
    them: the unimodal heads' losses (AlignModel)."""

    unimodal: float = 0.0


class EmotionModel(nn.Module):
    """What every model says about itself, so that training, evaluation and serving never
    ask which kind it is: the modalities it reads, its training loss and its class
    probabilities. The defaults are a single classifier's."""

    modalities: frozenset = frozenset({"speech", "text"})
    # Fuses the modalities inside the network: it learns to do without either when some
    # training utterances come without one (train.modality_dropout).
    joint_fusion = False
    # Word-over-frame attention that `attention_outputs` returns, to plot and to score.
    has_attention = False
    # Can train a speech-only and a text-only head beside its own (ModelSpec.unimodal_heads).
    has_unimodal_heads = False

    def log_probs(self, output: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities (B, C) from what forward returned."""
        return torch.log_softmax(output.float(), -1)

    def training_loss(self, batch, weight=None, terms: LossTerms = LossTerms()):
        """(the loss to minimise, what forward returned) on one batch (model/data.py)."""
        output = self(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
        return F.cross_entropy(output.float(), batch.labels, weight=weight), output


class AlignOutputs(NamedTuple):
    logits: torch.Tensor          # (B, C)
    attention: torch.Tensor       # (B, W, T')
    speech_lengths: torch.Tensor  # (B,) steps after frame pooling
    unimodal: tuple | None        # (speech-only, text-only) logits, with unimodal heads


class AlignModel(EmotionModel):
    joint_fusion = has_attention = has_unimodal_heads = True

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.speech = SpeechEncoder(spec)
        self.text = TextEncoder(spec)
        self.attention = (MultiHeadAttention if spec.attention == "multihead" else
                          Attention)(spec)
        self.alignment_prior = spec.alignment_prior
        self.aligned_dropout = encoder_dropout(spec)
        self.free_view = spec.free_view and spec.alignment_prior > 0
        self.fusion = BiRNN((4 + 2 * self.free_view) * spec.hidden, spec.hidden, spec.cell)
        self.pool = word_pooling(spec)
        self.dropout = nn.Dropout(spec.dropout)
        self.speech_summary = spec.speech_summary
        self.predict_with_heads = spec.predict_with_heads
        self.residual_fusion = spec.residual_fusion and spec.unimodal_heads
        self.out = nn.Linear(2 * spec.hidden * (1 + spec.speech_summary), spec.n_classes)
        if spec.unimodal_heads:
            self.speech_head = nn.Linear(2 * spec.hidden, spec.n_classes)
            self.text_head = nn.Linear(2 * spec.hidden, spec.n_classes)

    def forward(self, frames, frame_lengths, words, word_lengths, return_attention=False):
        """The fusion head's logits (B, C); with predict_with_heads, the three heads'
        (3, B, C), which log_probs averages."""
        out = self.outputs(frames, frame_lengths, words, word_lengths)
        logits = out.logits
        if self.predict_with_heads and out.unimodal is not None:
            logits = torch.stack([logits, *out.unimodal])
        return (logits, out.attention) if return_attention else logits

    def log_probs(self, output: torch.Tensor) -> torch.Tensor:
        if output.dim() == 3:  # the heads' logits: their probabilities averaged
            return torch.log(torch.softmax(output.float(), -1).mean(0))
        return torch.log_softmax(output.float(), -1)

    def outputs(self, frames, frame_lengths, words, word_lengths) -> AlignOutputs:
        """Everything training needs. The unimodal heads classify each encoder's states on
        their own: trained on the fusion loss alone, each encoder learns only what the
        other lacks, and the modality learnt first starves the other. A loss on each
        encoder's own prediction (gradient blending, Wang et al. 2020) keeps both as good
        as the single-modality models; prediction uses the fusion head only."""
        speech, speech_lengths = self.speech(frames, frame_lengths)
        speech_mask = _lengths_mask(speech_lengths, speech.shape[1])
        text = self.text(words, word_lengths)
        word_mask = _lengths_mask(word_lengths, words.shape[1])
        prior = None
        if self.alignment_prior > 0:
            prior = diagonal_prior(word_lengths, speech_lengths, words.shape[1],
                                   speech.shape[1], self.alignment_prior)
        if self.free_view:
            aligned, weights = self.attention(text, speech, speech_mask, prior, free_view=True)
        else:
            aligned, weights = self.attention(text, speech, speech_mask, prior)
        aligned = self.aligned_dropout(aligned)
        fused = self.fusion(torch.cat([aligned, text], dim=-1), word_lengths)
        pooled = self.pool(fused, word_mask)
        whole_speech = masked_max(speech, speech_mask)
        if self.speech_summary:
            pooled = torch.cat([pooled, whole_speech], dim=-1)
        logits = self.out(self.dropout(pooled))
        unimodal = None
        if hasattr(self, "speech_head"):
            unimodal = (self.speech_head(self.dropout(whole_speech)),
                        self.text_head(self.dropout(masked_max(text, word_mask))))
            if self.residual_fusion:  # a product of the three heads' distributions
                logits = logits + unimodal[0] + unimodal[1]
        return AlignOutputs(logits, weights, speech_lengths, unimodal)

    attention_outputs = outputs

    def training_loss(self, batch, weight=None, terms: LossTerms = LossTerms()):
        """The fusion loss, plus the unimodal heads' losses where `terms` weighs them
        (`outputs` says why they help)."""
        out = self.outputs(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
        loss = F.cross_entropy(out.logits.float(), batch.labels, weight=weight)
        if out.unimodal is not None:
            loss = loss + terms.unimodal * _mean_loss(torch.stack(out.unimodal).float(),
                                                      batch.labels, weight)
        return loss, out.logits


def _mean_loss(outputs: torch.Tensor, labels: torch.Tensor, weight=None) -> torch.Tensor:
    """The mean of the cross-entropy of each classifier's logits in (K, B, C)."""
    return sum(F.cross_entropy(o, labels, weight=weight) for o in outputs) / len(outputs)


def relative_distance(word_lengths, step_lengths, w: int, t: int) -> torch.Tensor:
    """(B, W, T) how far step j of T is from word i of W, as a share of the utterance: the
    word's place i/W against the step's j/T."""
    device = word_lengths.device
    word_pos = (torch.arange(w, device=device)[None, :] + 0.5) / word_lengths[:, None]
    step_pos = (torch.arange(t, device=device)[None, :] + 0.5) / step_lengths[:, None]
    return word_pos[:, :, None] - step_pos[:, None, :]


def diagonal_prior(word_lengths, step_lengths, w: int, t: int, width: float) -> torch.Tensor:
    """A log-Gaussian bias on the attention scores around the diagonal: word i of W starts
    out attending near step j of T where j/T is close to i/W, and its content scores move it
    from there. Speech follows its words in order, so this is where a word's frames usually
    are, and unlike a loss on the weights it holds at prediction too."""
    return -relative_distance(word_lengths, step_lengths, w, t) ** 2 / (2 * width ** 2)


def prior_weights(n_words: int, n_steps: int, width: float) -> torch.Tensor:
    """(W, T) the attention the diagonal prior gives on its own, with no content scores:
    softmax over the steps of `diagonal_prior`; spread evenly when there is no prior
    (width 0). What a trained model's alignment is measured against (`prior_lift`)."""
    if width <= 0:
        return torch.full((n_words, n_steps), 1 / n_steps)
    bias = diagonal_prior(torch.tensor([n_words]), torch.tensor([n_steps]), n_words, n_steps,
                          width)[0]
    return torch.softmax(bias, dim=-1)


class UnimodalModel(EmotionModel):
    """One modality alone, the baselines' building block: its encoder, max-pooled over its
    steps, then a linear layer."""

    modality = ""  # named by each subclass, below

    def __init__(self, spec: ModelSpec):
        super().__init__()
        # The encoder is named after its modality, as the weights of saved models name it.
        self.add_module(self.modality, self.make_encoder(spec))
        self.dropout = nn.Dropout(spec.dropout)
        self.out = nn.Linear(2 * spec.hidden, spec.n_classes)

    def forward(self, frames, frame_lengths, words, word_lengths):
        states, lengths = self.encode(frames, frame_lengths, words, word_lengths)
        return self.out(self.dropout(masked_max(states, _lengths_mask(lengths,
                                                                      states.shape[1]))))


class SpeechModel(UnimodalModel):
    modality, modalities = "speech", frozenset({"speech"})
    make_encoder = SpeechEncoder

    def encode(self, frames, frame_lengths, words, word_lengths):
        return self.speech(frames, frame_lengths)


class TextModel(UnimodalModel):
    modality, modalities = "text", frozenset({"text"})
    make_encoder = TextEncoder

    def encode(self, frames, frame_lengths, words, word_lengths):
        return self.text(words, word_lengths), word_lengths


class LateFusion(EmotionModel):
    """Decision-level fusion: a speech and a text model, each trained on its own loss;
    the prediction averages their class probabilities."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.speech_model = SpeechModel(spec)
        self.text_model = TextModel(spec)

    def forward(self, frames, frame_lengths, words, word_lengths):
        # (2, B, C): the loss treats each branch on its own; `log_probs` averages them.
        return torch.stack([self.speech_model(frames, frame_lengths, words, word_lengths),
                            self.text_model(frames, frame_lengths, words, word_lengths)])

    def log_probs(self, output: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.softmax(output.float(), -1).mean(0))

    def training_loss(self, batch, weight=None, terms: LossTerms = LossTerms()):
        """Both branches learn from the labels, each on its own."""
        output = self(batch.frames, batch.frame_lengths, batch.words, batch.word_lengths)
        return _mean_loss(output.float(), batch.labels, weight), output


MODEL_CLASSES = {"align": AlignModel, "speech": SpeechModel, "text": TextModel,
                 "late_fusion": LateFusion}
assert set(MODEL_CLASSES) == set(KINDS)


def model_class(kind: str) -> type[EmotionModel]:
    """What a model of this kind is, before one is built: its class."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}")
    return MODEL_CLASSES[kind]


def build_model(spec: ModelSpec) -> EmotionModel:
    return model_class(spec.kind)(spec)
