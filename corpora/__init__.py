"""Synthetic corpora in the exact IEMOCAP layout: what `emoalign sample-corpus`, the default
run's data/, the tests and the benchmarks are made from.

- `sample_corpus`: plans a corpus (codes in IEMOCAP's proportions, dialogs, speakers, words)
  and speaks it with a built-in synthesiser;
- `tts_corpus`: speaks the same plan with espeak-ng, with room noise;
- `flite_corpus`: speaks the same plan with flite, with the same room noise;
- `stress_plan`: a plan where the class depends on which word the speaker stresses.

No pipeline step imports this package: the steps read any IEMOCAP release alike, and the
one thing they know of a generated one (its marker file) is part of the IEMOCAP format
(components/iemocap.py).
"""
