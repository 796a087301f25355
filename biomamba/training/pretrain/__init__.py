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
  10) that keeps the scale of its GroupNorm front end's output down. Here it is an option with
  default 0: our front end has a per-frame LayerNorm and GELU after every conv, so the penalty can
  only be lowered by driving the last layer's activations into GELU's flat negative side, which
  makes the features nearly constant; the front end is then frozen for fine-tuning. On the phoebe
  cross-validation weight 10 left every pre-trained model at chance and weight 0 did not (the
  numbers are in recipes/README.md);
- optimisation: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01, lr 5e-4, linear warm-up over 8 %
  of the steps then linear decay to 0, gradient clip 10.

Our encoder is causal (the streaming contract), so a masked frame is predicted from the past only.
Recipes (``recipe``):

- ``bidirectional-teacher`` (the default): phase 1 trains a bidirectional teacher
  (`biomamba.bidirectional.BidirectionalBioMamba`: every layer adds a forward and a time-reversed
  Mamba2, "ExtBiMamba");
  phase 2 clusters the teacher's layer and trains the causal student on those labels (by default
  initialised from the teacher's forward branch and front end). Chosen over ``causal`` on the
  phoebe cross-validation (accuracies, noise and costs in recipes/README.md);
- ``causal``: the plain recipe above with the causal BioMamba in both phases;
- ``future``: the causal recipe plus ``future_frames`` heads (default 4): head k predicts, from the
  causal state at frame t, the label of frame t + k, on every frame (NEST-RQ-like next-token
  prediction added to the masked loss, weight ``future_weight``).

Phase 2 reads labels from ``labels_from`` (default ``init``) and, unless ``from_scratch``, starts
the model from ``init``. The run folder is `biomamba.training.runs`'s; ``last/`` holds the encoder as
an ordinary checkpoint (task "embed"; `BioMamba.load` and ``bmamba train --init`` take it) plus
``heads.safetensors`` (mask embedding, projections, label embeddings) and the training state.
"""
