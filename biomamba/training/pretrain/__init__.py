"""`bmamba pretrain`: HuBERT-style masked prediction of k-means pseudo-labels.

Modules: `labels` (features, k-means, label files), `objective` (masking, the loss, the heads),
`data` (crops with their labels), `runner` (the options and the run: `runner.pretrain`).

HuBERT's recipe (fairseq ``examples/hubert``; defaults here are its published ones):

- labels: phase 1 clusters 39-d MFCC (13 + deltas + delta-deltas, `biomamba.training.mfcc`) into 100
  k-means clusters; phase 2 clusters the features of a chosen layer of the phase-1 model (default
  the middle one: HuBERT used layer 6 of 12) into 500. k-means is `biomamba.training.kmeans.fit_kmeans`
  (mini-batch, streamed over the files in random order, on a random ``kmeans_fraction`` of them);
  labels are cached per recording as .npy in ``out/labels/<source>-k<K>/``. Layer features are
  RMS-normalised per frame before clustering (HuBERT's post-LN layers are normalised; our pre-norm
  residual stream is not), and they are computed streaming, chunk by chunk with carried state,
  so long recordings take flat memory;
- masking: span starts drawn with probability mask_prob / mask_length per frame (rounded
  randomly), at least ``min_masks`` spans, spans of mask_length frames that may overlap (about
  57 % of frames at 0.8 / 10); masked frames are replaced by a learned embedding before the
  encoder (`compute_mask`). Unlike fairseq we do not trim every row to the batch's smallest
  masked count (``require_same_masks``): spans stay whole;
- loss: the encoder output projected to ``final_dim`` (256), cosine similarity with learned label
  embeddings divided by a temperature (0.1), cross-entropy on the masked frames only; the CNN's
  gradient scaled by 0.1. HuBERT adds a feature penalty (mean square of the CNN features, weight
  10). Here it is an option with default 0. The front-end type is not the reason: HuBERT-Large
  trains this same layer-norm conv front end with weight 10. What was measured here: on the phoebe
  cross-validation (edge: a 48-channel CNN against HuBERT's 512, 400 steps per phase against
  250-400k, the front end then frozen for fine-tuning), weight 10 shrank the CNN features about 20x
  and left every pre-trained model at chance, weight 0 did not (recipes/README.md); which of the
  narrow CNN, the few steps and the frozen front end matters most was not separated;
- optimisation: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01, lr 5e-4, linear warm-up over 8 %
  of the steps then linear decay to 0, gradient clip 10.

Our encoder is causal (the streaming contract), so with HuBERT's loss a masked frame is predicted
from the past only: mostly a prediction of the future, scored on none of the frames that
fine-tuning and detection see. Recipes (``recipe``; compared with linear probes of the frozen
encoder by ``recipes/compare_pretraining.sh``, evidence in ``recipes/results/pretraining_probes.md``):

- ``delayed`` (the default for BioMamba; no ``recipe`` given): ``causal`` below with the masked
  frame t predicted from the output at t + ``delay`` (default 10 frames, 200 ms: one span), so the
  prediction has seen what follows the span; the delay exists only in pre-training (the head is
  dropped; fine-tuning and detection have no latency). Chosen in the comparison of
  recipes/README.md: every recipe's encoder beat a random one under linear probes and the probes did
  not tell the recipes apart; fine-tuned on InsectSet32, ``delayed`` and ``future`` scored best (mean
  of 3 fine-tuning seeds 0.412 each, against 0.353 for the teacher's student, 0.359 distilled, 0.392
  causal and 0.399 from scratch: only delayed/future over the teacher is near two standard errors),
  and it needs no teacher;
- ``bidirectional-teacher``: phase 1 trains a bidirectional teacher
  (`biomamba.bidirectional.BidirectionalBioMamba`: every layer adds a forward and a time-reversed
  Mamba2, "ExtBiMamba");
  phase 2 clusters the teacher's layer and trains the causal student on those labels (by default
  initialised from the teacher's forward branch and front end);
- ``distill``: phase 1 is the same teacher; phase 2 distils every teacher layer into the causal
  student on every frame (`objective.DistillModel`: DistilHuBERT's heads and L1 - log sigmoid(cos)
  loss), no k-means and no masking: the student learns what a model that saw both sides of the
  crop computes, from the past alone, on exactly the frames detection scores;
- ``causal``: the plain recipe above with the causal BioMamba in both phases;
- ``future``: the causal recipe plus ``future_frames`` heads (default 4): head k predicts, from the
  causal state at frame t, the label of frame t + k, on every frame (NEST-RQ-like next-token
  prediction added to the masked loss, weight ``future_weight``).

Phase 2 reads labels from ``labels_from`` (default ``init``) and, unless ``from_scratch``, starts
the model from ``init``. The run folder is `biomamba.training.runs`'s; ``last/`` holds the encoder as
an ordinary checkpoint (task "embed"; `BioMamba.load` and ``bmamba train --init`` take it) plus
``heads.safetensors`` (mask embedding, projections, label embeddings) and the training state.
"""
