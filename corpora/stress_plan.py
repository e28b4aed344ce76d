"""`emoalign sample-corpus --stress`: utterances whose label is which emotion word is stressed.

Each utterance names two emotions of different classes in neutral carrier words ("first I
felt furious and then I was cheerful about the letter") and stresses one of them; the label
is the stressed word's class. Neither modality alone can tell it:
- the words hold both emotions, and which one is stressed is drawn apart from their order,
  so a text-only model is right at best half the time;
- the delivery is the speaker's neutral one except on the stressed word, whose emphasis
  (louder, higher, slower) is the same for every class, so the prosody says *where* the
  emotion is but not *which*. The stressed word's sound does say which for a word heard in
  training: 30+ words per class make that hard, not impossible (speech alone reaches UA
  0.556 under leave-one-session-out, chance 0.25; benchmarks/RESULTS.md).
A model that ties the stress it hears to the word it reads at that moment gets it all,
which is the alignment the model of Xu et al. is built to learn.

This module plans (the words, the stressed one, the emphasis); corpora.tts_corpus speaks
the plan, and corpora.sample_corpus lays the utterances out as IEMOCAP does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The four classes, as IEMOCAP codes (happy without `exc`: one code per class, so the label
# file's code is the stressed word's class and nothing is merged).
CODES = ("neu", "hap", "ang", "sad")

# Single [a-z] words, so the transcript's tokens are the spoken words one for one. At least
# 30 per class: a speech model has to hear a class in many sounds, not memorise a few.
VOCABULARY = {
    "neu": "calm fine ordinary okay alright steady composed collected relaxed neutral "
           "indifferent unmoved level normal usual average balanced moderate settled quiet "
           "detached impartial unbothered placid tranquil untroubled undisturbed mild sober "
           "casual reserved unremarkable unconcerned easygoing patient measured".split(),
    "hap": "happy cheerful delighted joyful glad thrilled elated pleased ecstatic overjoyed "
           "jubilant merry jolly gleeful blissful euphoric radiant upbeat sunny chirpy buoyant "
           "grateful excited proud hopeful amused playful lively giddy carefree exuberant "
           "triumphant beaming thankful charmed lighthearted".split(),
    "ang": "angry furious livid irate enraged outraged mad annoyed irritated cross fuming "
           "seething incensed infuriated indignant hostile resentful vexed agitated "
           "exasperated heated raging irked aggravated frustrated provoked offended spiteful "
           "belligerent grumpy fierce bitter hateful cranky testy riled".split(),
    "sad": "sad unhappy miserable depressed gloomy sorrowful heartbroken downcast dejected "
           "despondent melancholy mournful glum forlorn lonely hopeless grieving tearful "
           "wretched desolate blue crushed devastated disheartened discouraged somber woeful "
           "doleful downhearted despairing bereft hurt low dismal morose weepy lonesome".split(),
}

# {a} and {b} are the two emotion words, in the utterance's order; the other slots are
# neutral fillers. Varied so that no position or template names the label.
TEMPLATES = (
    "first I felt {a} and then I was {b} about the {thing}",
    "{who} looked {a} at {time} but {b} after the {thing}",
    "I was {a} when the {thing} came and {b} by {time}",
    "we were {a} on the way to the {place} and {b} on the way back",
    "she sounded {a} on the phone and {b} when we met at the {place}",
    "he seemed {a} before the {thing} and {b} after it",
    "at {time} I felt {a} and later {b}",
    "the {thing} left me {a} and {who} {b}",
    "I went from {a} to {b} in one {span}",
    "they were {a} about the {thing} and {b} about the {place}",
    "honestly I am {a} and a little {b} today",
    "{who} was {a} yesterday and {b} this {span}",
    "so {who} came in {a} and went out {b}",
    "you could tell I was {a} at the {place} and {b} at home",
)
FILLERS = {
    "thing": "letter news meeting call message visit report trip decision interview delivery "
             "result bill game party exam".split(),
    "time": "noon lunch dinner midnight breakfast ten six".split(),
    "who": ["my sister", "my brother", "the neighbour", "our manager", "his father",
            "her friend", "the driver", "my mother", "the teacher"],
    "place": "station office airport market hospital school bank park library".split(),
    "span": "day week hour morning afternoon evening".split(),
}

# The emphasis on the stressed word, relative to the utterance's own delivery: (median,
# spread, weakest) per utterance. loudness and rate are log-normal multipliers, pitch a
# normal raise of the pitch level (0.2: 20 % higher). Spread so that emphasis is a range
# a model must generalise over; bounded so that no utterance comes near no stress at all.
EMPHASIS = {"loudness": (1.8, 0.15, 1.3), "pitch": (0.2, 0.05, 0.08), "rate": (0.72, 0.08, 0.9)}


@dataclass(frozen=True)
class StressPlan:
    """The two emotion words of an utterance, which one is stressed, and how."""

    index: int         # the stressed word, in UtterancePlan.words (= the transcript's words)
    word: str
    code: str          # its class: the utterance's label
    other_index: int   # the unstressed emotion word
    other_word: str
    other_code: str
    loudness: float    # amplitude multiplier
    pitch: float       # pitch level raise, relative
    rate: float        # speaking-rate multiplier (< 1: slower)

    def truth(self) -> dict:
        """What the truth file says: the stressed word, both emotion words in transcript
        order, the emphasis."""
        words = sorted([(self.index, self.word, self.code),
                        (self.other_index, self.other_word, self.other_code)])
        return {"index": self.index, "word": self.word, "class": self.code,
                "first": self.index < self.other_index,
                "emotion_words": [{"index": i, "word": w, "class": c} for i, w, c in words],
                "loudness": self.loudness, "pitch": self.pitch, "rate": self.rate}


def allocate(n: int) -> dict[str, int]:
    """Equal counts per class (the first classes take the remainder): every one reachable."""
    if n < len(CODES):
        raise ValueError(f"a stressed corpus needs at least {len(CODES)} utterances")
    return {c: n // len(CODES) + (1 if i < n % len(CODES) else 0) for i, c in enumerate(CODES)}


def _pick(rng: np.random.Generator, items) -> str:
    return items[int(rng.integers(len(items)))]


def plan_utterance(rng: np.random.Generator, code: str) -> tuple[str, StressPlan]:
    """The transcript and the stress plan of an utterance labelled `code`.
    A fixed number of draws whatever the outcome, so one utterance never shifts the next."""
    other_code = _pick(rng, [c for c in CODES if c != code])
    word, other_word = _pick(rng, VOCABULARY[code]), _pick(rng, VOCABULARY[other_code])
    template = _pick(rng, TEMPLATES)
    fill = {slot: _pick(rng, choices) for slot, choices in FILLERS.items()}
    # The stressed word comes first or second with equal odds, apart from its class.
    first = bool(rng.random() < 0.5)
    z = rng.standard_normal(3)
    words = template.format(a="{a}", b="{b}", **fill).split()
    a, b = words.index("{a}"), words.index("{b}")
    index, other_index = (a, b) if first else (b, a)
    words[index], words[other_index] = word, other_word
    (loud, loud_sd, loud_min), (pitch, pitch_sd, pitch_min), (rate, rate_sd, rate_max) = \
        EMPHASIS.values()
    stress = StressPlan(
        index=index, word=word, code=code,
        other_index=other_index, other_word=other_word, other_code=other_code,
        loudness=round(max(loud_min, loud * float(np.exp(loud_sd * z[0]))), 3),
        pitch=round(max(pitch_min, pitch + pitch_sd * float(z[1])), 3),
        rate=round(min(rate_max, rate * float(np.exp(rate_sd * z[2]))), 3),
    )
    text = " ".join(words)
    return text[0].upper() + text[1:] + ".", stress


def describe() -> dict:
    """The corpus-level settings, for the truth file."""
    return {"codes": list(CODES), "vocabulary": {c: list(v) for c, v in VOCABULARY.items()},
            "templates": list(TEMPLATES), "fillers": {k: list(v) for k, v in FILLERS.items()},
            "emphasis": {k: {"median": m, "spread": s, "weakest": w}
                         for k, (m, s, w) in EMPHASIS.items()}}

