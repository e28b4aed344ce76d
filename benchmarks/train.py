"""Training speed: one epoch of the alignment model over an IEMOCAP-size training set.

    .venv/bin/python benchmarks/train.py [--corpus DIR] [--threads 2]

On the 4-class utterances of a generated IEMOCAP-size corpus (5,531; mean 4.4 s, tail to
about 30 s) it times one training epoch four ways in the same run:
- emoalign's loop: the default model, length bucketing, each LSTM direction run over the
  whole batch (model.network.BiRNN), fused Adam;
- the same with packed sequences (how BiRNN ran before; the same outputs);
- the loop before issue 36: the previous default size (hidden 64, embed 100, attention 64,
  frame_pool 5) and Adam stepping parameter by parameter, otherwise as emoalign's;
- a straightforward implementation at that size (shuffled padded batches, LSTMs run over
  the padding): the yardstick on slower machines.
It prints utterances per second, the ratios, the padding share of each, and peak RSS.
Goals (issue 36, 2 cores): 5 s or less an epoch, 2.2x the loop before or more.
"""

import argparse
import dataclasses
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
from pipelines.cli import _restart_with_training_allocator  # noqa: E402


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


# The default model's size before issue 36.
PREVIOUS_SIZE = {"hidden": 64, "embed_dim": 100, "attention_dim": 64, "frame_pool": 5}


def epoch(examples, spec, config, bucketing, device, fused=True, seed=0):
    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, fused=fused)
    batches = batch_indices([len(e.frames) for e in examples], config.train.batch_size,
                            np.random.default_rng(seed), bucketing)
    real = padded = 0
    model.train()
    start = time.perf_counter()
    for idx in batches:
        batch = collate([examples[i] for i in idx]).to(device)
        real += int(batch.frame_lengths.sum())
        padded += batch.frames.shape[0] * batch.frames.shape[1]
        loss, _ = model.training_loss(batch, None, train.loss_terms(config))  # as training
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
    # glibc's malloc set up as for training (components/environment.py), as every
    # training process starts: without it the larger previous size pays for returning its
    # memory after every batch.
    _restart_with_training_allocator()
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
        previous = dataclasses.replace(spec, **PREVIOUS_SIZE)
        t_ours, pad_ours = epoch(examples, spec, config, True, device)
        t_before, pad_before = epoch(examples, previous, config, True, device, fused=False)
        split_forward = network.BiRNN.forward
        try:
            network.BiRNN.forward = packed_forward
            t_packed, pad_packed = epoch(examples, spec, config, True, device)
            network.BiRNN.forward = padded_forward
            t_plain, pad_plain = epoch(examples, previous, config, False, device, fused=False)
        finally:
            network.BiRNN.forward = split_forward
        n = len(examples)
        for name, t, pad in (("emoalign (default model)", t_ours, pad_ours),
                             ("packed sequences (default model)", t_packed, pad_packed),
                             ("before issue 36 (previous size)", t_before, pad_before),
                             ("straightforward (previous size)", t_plain, pad_plain)):
            print(f"{name:<34} {t:6.1f} s/epoch  {n / t:6.1f} utt/s  padding "
                  f"{pad:.0%} of frames")
        print(f"emoalign's loop: {t_before / t_ours:.2f}x the loop before issue 36 (goal 2.2x), "
              f"{t_plain / t_ours:.2f}x the straightforward loop, {t_packed / t_ours:.2f}x "
              f"packed sequences; {t_ours:.1f} s an epoch (goal 5 s)")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
