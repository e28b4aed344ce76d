"""Training speed: one epoch of the alignment model over an IEMOCAP-size training set.

    .venv/bin/python benchmarks/train.py [--corpus DIR] [--threads 2]

On the 4-class utterances of a generated IEMOCAP-size corpus (5,531; mean 4.4 s, tail to
about 30 s) it times one training epoch four ways in the same run: the project's loop
(length bucketing, each LSTM direction run over the whole batch: model.network.BiLSTM), the
same with packed sequences (the loop before; the same outputs), the project's LSTMs without
bucketing, and a straightforward implementation of the same model (shuffled padded batches,
LSTMs run over the padding). It prints utterances per second, the ratios, the padding share
of each, and peak RSS. Goal: an IEMOCAP-size epoch in 60 s or less on 2 CPU cores.
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from components import feature_store, features, ingest, outputs, train, validate  # noqa: E402
from components.config import load_config  # noqa: E402
from corpora import sample_corpus  # noqa: E402
from model import network  # noqa: E402
from model.data import batch_indices, collate  # noqa: E402
from model.network import build_model  # noqa: E402
from model.spec import ModelSpec  # noqa: E402
from model.serving import Inputs  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402


def padded_forward(self, x, lengths):
    """The straightforward LSTM: both directions over the padded tensor, padding included."""
    back, _ = self.backward_lstm(x.flip(1))
    return torch.cat([self.forward_lstm(x)[0], back.flip(1)], dim=-1)


def packed_forward(self, x, lengths):
    """Each direction packed, so it steps through ever smaller batches: the outputs of
    model.network.BiLSTM, the way the loop ran before it."""
    def packed_run(lstm, inputs):
        lengths_cpu = lengths.cpu().clamp(min=1)
        packed = pack_padded_sequence(inputs, lengths_cpu, batch_first=True,
                                      enforce_sorted=False)
        return pad_packed_sequence(lstm(packed)[0], batch_first=True,
                                   total_length=x.shape[1])[0]

    back = packed_run(self.backward_lstm, network.reverse_within(x, lengths))
    return torch.cat([packed_run(self.forward_lstm, x),
                      network.reverse_within(back, lengths)], dim=-1)


def epoch(examples, spec, config, bucketing, device, seed=0):
    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = batch_indices([len(e.frames) for e in examples], config.train.batch_size,
                            np.random.default_rng(seed), bucketing)
    real = padded = 0
    model.train()
    start = time.perf_counter()
    for idx in batches:
        batch = collate([examples[i] for i in idx]).to(device)
        real += int(batch.frame_lengths.sum())
        padded += batch.frames.shape[0] * batch.frames.shape[1]
        loss, _ = model.training_loss(batch, None, train.loss_terms(config, 1))  # as training
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="release root (default: generate one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="emoalign-train-"))
    try:
        corpus = args.corpus
        if corpus is None:
            corpus = scratch / "IEMOCAP_full_release"
            sample_corpus.generate(corpus, 10_039, seed=0, workers=len(os.sched_getaffinity(0)))
        config = load_config()
        ingest.run(corpus, scratch / "ingest")
        validate.run(scratch / "ingest", scratch / "validated", config.ingest.classes,
                     config.validate)
        features.run(scratch / "validated", scratch / "store", config.features)
        store = feature_store.FeatureStore(scratch / "store")
        rows = outputs.labelled_rows(scratch / "validated", config.ingest.classes)
        vocab = Vocabulary.build(rows["transcript"])
        inputs = Inputs(vocab, store.normalizer(None), config.ingest.classes)
        examples = store.examples(inputs, rows.index.tolist(), rows)
        seconds = np.array([len(e.frames) for e in examples]) / 100
        print(f"device {device} ({args.threads} CPU threads); {len(examples)} utterances, "
              f"mean {seconds.mean():.2f} s, longest {seconds.max():.1f} s")
        spec = ModelSpec.of(config.model, n_classes=4, feature_dim=store.spec.dim,
                            vocab_size=len(vocab),
                            unimodal_heads=config.train.unimodal_loss > 0)
        t_bucket, pad_bucket = epoch(examples, spec, config, True, device)
        t_shuffled, pad_shuffled = epoch(examples, spec, config, False, device)
        split_forward = network.BiLSTM.forward
        try:
            network.BiLSTM.forward = packed_forward
            t_packed, pad_packed = epoch(examples, spec, config, True, device)
            network.BiLSTM.forward = padded_forward
            t_plain, pad_plain = epoch(examples, spec, config, False, device)
        finally:
            network.BiLSTM.forward = split_forward
        n = len(examples)
        for name, t, pad in (("bucketing + split BiLSTM (emoalign)", t_bucket, pad_bucket),
                             ("bucketing + packed sequences (before)", t_packed, pad_packed),
                             ("split BiLSTM, no bucketing", t_shuffled, pad_shuffled),
                             ("straightforward: padded, no packing", t_plain, pad_plain)):
            print(f"{name:<38} {t:6.1f} s/epoch  {n / t:6.1f} utt/s  padding "
                  f"{pad:.0%} of frames")
        print(f"speed-up of emoalign's loop: {t_packed / t_bucket:.2f}x over packed sequences, "
              f"{t_shuffled / t_bucket:.2f}x over no bucketing, "
              f"{t_plain / t_bucket:.2f}x over the straightforward loop")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
