"""The model, and all a registered version needs to serve it: a small torch package that
knows nothing of the pipeline (a registered version ships this folder as its code).

    spec.py      what a model and its speech features are built from (plain settings)
    network.py   the attention-alignment model of Xu et al. (2019) and its baselines
    features.py  speech frames: MFCCs or spectrum, pitch and energy, normalisation
    text.py      transcripts into tokens; vocab.py, the word vocabulary
    data.py      examples into padded, length-bucketed batches
    metrics.py   WA and UA
    serving.py   a wav and its transcript -> class probabilities, as training saw them
    recognizer.py  a transcript recognised from the audio, when none is given
    pyfunc.py    serving.py as an MLflow pyfunc: what registration logs and MLflow serves
"""
