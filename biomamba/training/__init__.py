"""The training wing: everything that changes weights, above the model side.

- `train`: ``bmamba train``, fine-tuning for classification or detection;
- `pretrain`: ``bmamba pretrain``, HuBERT-style pre-training (`labels`, `objective`, `data`, `runner`);
- `evaluate`: ``bmamba eval``, and the datasets and batched inference train's validation shares;
- `loop`: the training loop (`fit`) with seeding, LR schedule, NaN guard, resume;
- `runs`: the run folder (``--out``: last/, best/, log.jsonl, args.json) and training errors;
- `devices`: device, AMP, DDP under torchrun, rank-0 output;
- `kmeans`, `mfcc`: pre-training's k-means and Kaldi MFCC features.

It imports the model side (`biomamba.model`, `biomamba.loading`, ...), torch and scikit-learn;
nothing outside it imports it except the CLI (``tests/test_layering.py`` checks).
"""
