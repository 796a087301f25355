"""bmamba pretrain: masking, the loss, label features and k-means labels, the recipes, resume."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from test_train import cli_app, make_class_folder, tone
from typer.testing import CliRunner

from biomamba import BioMamba
from biomamba.audio import read_audio
from biomamba.bidirectional import BidirectionalBioMamba
from biomamba.loading import LAST, model_from_init
from biomamba.training.kmeans import assign, fit_kmeans, load_centroids
from biomamba.training.mfcc import mfcc_model_frames
from biomamba.training.pretrain.data import IGNORE, PretrainDataset, collate_pretrain
from biomamba.training.pretrain.labels import layer_features, mfcc_features
from biomamba.training.pretrain.objective import (
    DistillModel,
    PretrainModel,
    compute_mask,
    distill_loss,
    label_loss,
    mask_span_starts,
)
from biomamba.training.pretrain.runner import PretrainConfig, pretrain
from biomamba.training.runs import TrainingInterrupted
from biomamba.transformer import TransformerBaseline
from conftest import perturb_

SR = 16000


def tiny_pretrain(audio, out, **kw) -> PretrainConfig:
    # the plain causal recipe unless a test names another: these tests check the mechanics, and the
    # causal model is half the teacher's size
    base = dict(audio=[str(audio)], out=out, preset="tiny", steps=4, crop_s=1.0, batch_size=2, clusters=6,
                device="cpu", save_every=None, seed=0, recipe="causal")
    return PretrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- masking


def _expected_masked_fraction(T: int, p: float, L: int, min_masks: int) -> float:
    """Exact expectation of the masked fraction of a row of T frames under HuBERT's draw:
    n = max(min_masks, int(p T / L + u)) distinct starts among C = T - L + 1; frame t is unmasked
    when none of the w starts that would cover it is drawn: C(C - w, n) / C(C, n)."""
    C = T - L + 1
    x = p * T / L
    total = 0.0
    for n, prob in ((math.floor(x), 1 - (x - math.floor(x))), (math.floor(x) + 1, x - math.floor(x))):
        n = min(max(min_masks, n), C)
        masked = 0.0
        for t in range(T):
            w = min(t, C - 1) - max(0, t - L + 1) + 1
            masked += 1 - (math.comb(C - w, n) / math.comb(C, n) if C - w >= n else 0.0)
        total += prob * masked / T
    return total


def test_masked_fraction_matches_hubert():
    T, runs = 250, 400   # a 5 s crop
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    mask = compute_mask(torch.full((runs,), T), T, 0.8, 10, 2, g)
    fraction = mask.float().mean(1)
    expected = _expected_masked_fraction(T, 0.8, 10, 2)
    assert 0.52 < expected < 0.58   # HuBERT's "about 57 %" (fewer at the row ends)
    assert abs(float(fraction.mean()) - expected) < 4 * float(fraction.std()) / math.sqrt(runs)


def test_masks_are_whole_spans_within_valid_frames():
    rng = np.random.default_rng()
    lengths = torch.tensor(rng.integers(12, 200, size=64))
    seed = int(rng.integers(1 << 31))
    mask = compute_mask(lengths, 200, 0.8, 10, 2, torch.Generator().manual_seed(seed))
    # the same draws, replayed: the mask is exactly the union of the spans
    g = torch.Generator().manual_seed(seed)
    for b, n in enumerate(lengths.tolist()):
        starts = mask_span_starts(n, 0.8, 10, 2, g)
        assert len(starts) >= 2 and len(set(starts.tolist())) == len(starts)
        assert int(starts.max()) + 10 <= n                         # every span fits in the row
        want = torch.zeros(200, dtype=torch.bool)
        for s in starts.tolist():
            want[s : s + 10] = True
        assert torch.equal(mask[b], want)
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, mask[b].numpy().astype(int), 0])))[::2]
        assert (runs >= 10).all()                                   # spans of 10, overlapping or not
        assert not mask[b, n:].any()


# --------------------------------------------------------------------------- the loss


def test_cosine_temperature_loss_against_hand_computation():
    rng = np.random.default_rng()
    B, T, F, K, tau = 2, 7, 5, 4, 0.1
    proj = rng.standard_normal((B, T, F))
    emb = rng.standard_normal((K, F))
    labels = rng.integers(0, K, (B, T))
    labels[1, -2:] = IGNORE
    select = rng.random((B, T)) < 0.5
    select[0, 0] = True
    loss, correct, n = label_loss(torch.tensor(proj, dtype=torch.float32), torch.tensor(emb, dtype=torch.float32),
                                  torch.tensor(labels), torch.tensor(select), tau)
    terms, hits = [], 0
    for b in range(B):
        for t in range(T):
            if not select[b, t] or labels[b, t] == IGNORE:
                continue
            s = [proj[b, t] @ emb[k] / (np.linalg.norm(proj[b, t]) * np.linalg.norm(emb[k])) / tau for k in range(K)]
            terms.append(np.log(np.sum(np.exp(s))) - s[labels[b, t]])
            hits += int(np.argmax(s) == labels[b, t])
    assert n == len(terms) and int(correct) == hits
    assert abs(float(loss) - np.mean(terms)) < 1e-5


def _batch(rng, B=2, T=30):
    audio = torch.tensor(rng.standard_normal((B, 80 + 320 * T)) * 0.1, dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 5, (B, T)))
    labels[1, T - 5 :] = IGNORE
    lengths = torch.tensor([T, T - 5])
    mask = compute_mask(lengths, T, generator=torch.Generator().manual_seed(int(rng.integers(1000))))
    return audio, lengths, labels, mask


def test_feature_penalty_and_cnn_gradient_scale():
    rng = np.random.default_rng()
    audio, lengths, labels, mask = _batch(rng)
    grads, outs = [], []
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        model = PretrainModel(perturb_(BioMamba.from_preset("tiny", task="embed")), 5, cnn_grad_scale=scale,
                              feature_penalty=10.0)   # HuBERT's weight (the option; our default is 0)
        out = model(audio, lengths, labels, mask)
        out["loss"].backward()
        grads.append(model.encoder.frontend.conv[0].weight.grad.clone())
        outs.append(out)
        features = model.encoder.frontend.conv_features(audio)
        valid = torch.arange(30)[None] < lengths[:, None]
        assert torch.allclose(out["penalty"], features.pow(2).mean(-1)[valid].mean(), rtol=1e-5)
        assert torch.allclose(out["loss"], out["masked_loss"] + 10 * out["penalty"], rtol=1e-5)
    assert torch.allclose(outs[0]["loss"], outs[1]["loss"])             # same forward
    want = 0.1 * grads[0]
    assert float((grads[1] - want).abs().max()) < 1e-4 * float(want.abs().max())


def test_masked_frames_enter_the_encoder_as_the_mask_embedding():
    rng = np.random.default_rng()
    audio, lengths, labels, mask = _batch(rng)
    model = PretrainModel(BioMamba.from_preset("tiny", task="embed"), 5)
    seen = {}
    model.encoder.layers[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model(audio, lengths, labels, mask)
    frames = model.encoder.frontend(audio)
    x = seen["x"]
    assert torch.equal(x[mask], model.mask_embedding.expand(int(mask.sum()), -1))
    assert torch.allclose(x[~mask], frames[~mask], atol=1e-6)


def test_future_heads_predict_later_labels():
    """With future heads, the extra loss is the mean over k of the loss of head k at t against t+k."""
    rng = np.random.default_rng()
    audio, lengths, labels, mask = _batch(rng)
    model = PretrainModel(BioMamba.from_preset("tiny", task="embed"), 5, future_frames=2).eval()
    out = model(audio, lengths, labels, mask)
    frames = torch.where(mask[..., None], model.mask_embedding, model.encoder.frontend(audio))
    hidden = model.encoder.encode(frames)
    valid = torch.arange(30)[None] < lengths[:, None]
    want = sum(label_loss(model.future_proj[k - 1](hidden[:, :-k]), model.label_embeddings, labels[:, k:],
                          valid[:, k:], 0.1)[0] for k in (1, 2)) / 2
    assert torch.allclose(out["future_loss"], want, rtol=1e-5)


def test_delayed_target_reads_each_masked_frame_d_frames_later():
    """Oracle: frame by frame, the masked frame t with t + d valid is scored by the cross-entropy
    of the cosine logits of the output at t + d against t's label (float64), averaged."""
    rng = np.random.default_rng()
    audio, lengths, labels, mask = _batch(rng)
    d = int(rng.integers(1, 8))
    model = perturb_(PretrainModel(BioMamba.from_preset("tiny", task="embed"), 5, delay=d)).eval()
    with torch.no_grad():
        out = model(audio, lengths, labels, mask)
        frames = torch.where(mask[..., None], model.mask_embedding, model.encoder.frontend(audio))
        projected = model.proj(model.encoder.encode(frames)).double()
    embeddings = torch.nn.functional.normalize(model.label_embeddings.detach().double(), dim=-1)
    losses = []
    for b in range(2):
        for t in range(30 - d):
            if mask[b, t] and t + d < lengths[b] and labels[b, t] != IGNORE:
                logits = torch.nn.functional.normalize(projected[b, t + d], dim=0) @ embeddings.T / 0.1
                losses.append(float(torch.logsumexp(logits, 0) - logits[labels[b, t]]))
    assert len(losses) > 5
    assert float(out["masked_loss"]) == pytest.approx(np.mean(losses), rel=1e-5)


def test_distill_loss_is_distilhuberts():
    """L1 averaged over frames and dimensions minus log sigmoid of each frame's cosine, over the
    valid frames only, against a float64 loop."""
    rng = np.random.default_rng()
    predicted, target = (torch.tensor(rng.standard_normal((2, 9, 6)), dtype=torch.float32) for _ in range(2))
    valid = torch.arange(9)[None] < torch.tensor([9, 4])[:, None]
    loss, l1, cosine = distill_loss(predicted, target, valid)
    rows = [(predicted[b, t].double().numpy(), target[b, t].double().numpy())
            for b in range(2) for t in range(9) if valid[b, t]]
    l1_want = np.mean([np.abs(p - t).mean() for p, t in rows])
    cos = [p @ t / np.linalg.norm(p) / np.linalg.norm(t) for p, t in rows]
    want = l1_want - np.mean([-np.log1p(np.exp(-c)) for c in cos])
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert (float(l1), float(cosine)) == pytest.approx((l1_want, np.mean(cos)), rel=1e-5)


def test_distillation_targets_are_the_frozen_teachers_layers_on_the_whole_crop():
    """Each head learns one teacher layer (RMS-normalised) computed on the unmasked crop, padding
    excluded; the teacher gets no gradient and is not part of the saved heads."""
    rng = np.random.default_rng()
    audio, lengths, _, _ = _batch(rng)
    teacher = perturb_(BidirectionalBioMamba.from_preset("tiny", task="embed"))
    model = DistillModel(perturb_(BioMamba.from_preset("tiny", task="embed")), teacher)
    out = model(audio, lengths)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(k.startswith("_teacher") for k in model.state_dict())
    assert set(model.heads_state_dict()) == {"heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias"}
    with torch.no_grad():
        hidden = model.encoder.encode(model.encoder.frontend(audio))
        want = 0.0
        for b, n in enumerate(lengths.tolist()):   # row by row: the teacher sees exactly the valid frames
            _, layers = teacher.encode_layers(teacher.frontend(audio[b : b + 1, : 80 + 320 * n]))
            for head, layer in zip(model.heads, layers):
                target = layer[0].double()
                target = target / target.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
                predicted = head(hidden[b, :n]).double()
                cos = torch.nn.functional.cosine_similarity(predicted, target, dim=-1)
                # per-row sums, divided by all valid frames below (the loss averages over frames)
                want += float(((predicted - target).abs().mean(-1) - torch.nn.functional.logsigmoid(cos)).sum())
    assert float(out["loss"].detach()) == pytest.approx(want / int(lengths.sum()), rel=1e-4)


# --------------------------------------------------------------------------- features and labels


def _write(path, audio):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SR, subtype="FLOAT")
    return path


@pytest.mark.parametrize("seconds", [0.031, 0.5, 2.3417])
def test_streamed_mfcc_features_equal_whole_recording(tmp_path, seconds):
    rng = np.random.default_rng()
    audio = (0.3 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    path = _write(tmp_path / "a.wav", audio)
    blocks = list(mfcc_features(path, block_s=0.13))     # many small blocks
    streamed = np.concatenate(blocks)
    whole = mfcc_model_frames(torch.from_numpy(read_audio(path))).numpy()
    assert streamed.shape == whole.shape == (math.ceil(len(audio) / 320), 39)
    np.testing.assert_allclose(streamed, whole, rtol=1e-4, atol=1e-3)


def test_streamed_layer_features_equal_whole_run(tmp_path):
    rng = np.random.default_rng()
    audio = (0.3 * rng.standard_normal(int(1.713 * SR))).astype(np.float32)
    path = _write(tmp_path / "a.wav", audio)
    model = perturb_(BioMamba.from_preset("tiny", task="embed")).eval()
    streamed = np.concatenate(list(layer_features(model, 1, path, chunk_s=0.3)))
    with torch.no_grad():
        out = model.frontend(torch.nn.functional.pad(torch.from_numpy(audio)[None], (80, 320 * 86 - len(audio))))
        _, _, layers = model.encode_with_state(out, return_layers=True)
    x = layers[0][0].double().numpy()
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
    assert streamed.shape == want.shape
    np.testing.assert_allclose(streamed, want, atol=2e-4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_class_folder(root / "audio", per_class=3, seconds=1.2, seed=5)


@pytest.fixture(scope="module")
def phase1(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("p1") / "run"
    return pretrain(tiny_pretrain(corpus, out, kmeans_fraction=1.0)), out


def _labels(run_result) -> tuple[list, list]:
    folder = run_result["labels"]
    index = json.loads((Path(folder) / "index.json").read_text())
    labels = [np.load(Path(folder) / f"{i:06d}.npy") for i in range(len(index["files"]))]
    return index["files"], labels


def test_phase1_labels_are_kmeans_of_mfcc(phase1):
    result, _ = phase1
    files, labels = _labels(result)
    centroids = load_centroids(Path(result["labels"]) / "centroids.npy")
    assert centroids.shape == (6, 39)
    for f, y in zip(files, labels):
        feats = mfcc_model_frames(torch.from_numpy(read_audio(f))).numpy()
        assert np.mean(assign(feats, centroids) == y) > 0.99   # float rounding may flip a tie


def test_phase2_labels_come_from_the_chosen_layer(corpus, phase1, tmp_path):
    _, p1_out = phase1
    corpus_files = json.loads((p1_out / "args.json").read_text())["audio"]
    results = {layer: pretrain(tiny_pretrain(corpus, tmp_path / f"l{layer}", phase=2, init=p1_out, layer=layer,
                                             kmeans_fraction=1.0, labels_only=True))
               for layer in (1, 2)}
    encoder = BioMamba.load(p1_out / LAST)
    direct = {}
    for layer, result in results.items():
        files, labels = _labels(result)
        assert files == corpus_files
        feats = []
        for f in files:   # the layer's output computed here, whole recording at once
            audio = torch.from_numpy(read_audio(f))
            with torch.no_grad():
                frames = encoder.frontend(torch.nn.functional.pad(audio[None], (80, (-len(audio)) % 320)))
                x = encoder.encode_with_state(frames, return_layers=True)[2][layer - 1][0].double().numpy()
            feats.append((x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)).astype(np.float32))
        direct[layer] = feats
        centroids = load_centroids(Path(result["labels"]) / "centroids.npy")
        # k-means on these features, the recordings in the order pretrain feeds them (seeded shuffle)
        order = np.random.default_rng(0).permutation(len(feats))
        own = fit_kmeans([feats[i] for i in order], 6, seed=0, n_init=20)
        gap = np.sqrt(((own[:, None] - centroids[None]) ** 2).sum(-1)).min(1)
        assert gap.max() < 1e-3, gap
        for x, y in zip(feats, labels):
            assert np.mean(assign(x, centroids) == y) > 0.99
    l1, l2 = _labels(results[1])[1], _labels(results[2])[1]
    # labels of another layer differ: compare the partitions (cluster ids are arbitrary)
    a, b = np.concatenate(l1), np.concatenate(l2)
    assert any(len(set(b[a == c])) > 1 for c in set(a))
    assert "layer1" in results[1]["label_source"] and "layer2" in results[2]["label_source"]


def test_default_layer_is_the_middle_one(corpus, phase1, tmp_path):
    _, p1_out = phase1
    result = pretrain(tiny_pretrain(corpus, tmp_path / "p2", phase=2, init=p1_out, labels_only=True, clusters=3))
    assert "-layer1-" in result["label_source"]   # tiny has 2 layers -> layer 1 (HuBERT: 6 of 12)


# --------------------------------------------------------------------------- runs


def test_pretrain_phase1_through_cli_and_loads_as_biomamba(corpus, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli_app("pretrain"), [
        "pretrain", str(corpus), "--preset", "tiny", "--steps", "12", "--crop", "1s", "--batch-size", "3",
        "--clusters", "6", "--lr", "2e-3", "--warmup", "0", "--out", str(out), "--device", "cpu",
        "--kmeans-fraction", "1", "--save-every", "0", "--recipe", "causal"])
    assert result.exit_code == 0, result.output
    model = BioMamba.load(out / LAST)
    assert model.task == "embed"
    config = json.loads((out / LAST / "config.json").read_text())
    assert config["pretraining"]["clusters"] == 6 and config["pretraining"]["recipe"] == "causal"
    heads = load_file(str(out / LAST / "heads.safetensors"))
    assert heads["label_embeddings"].shape == (6, 256) and heads["mask_embedding"].shape == (64,)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["train_masked_loss"] > log[-1]["train_masked_loss"]   # 12 steps over 3 epochs


def test_default_recipe_is_delayed_for_biomamba():
    """No --recipe (API and CLI alike) means the delayed recipe for BioMamba (recipes/README.md:
    the probe comparison) and HuBERT's for the Transformer (test below)."""
    import typer

    command = typer.main.get_command(cli_app("pretrain")).commands["pretrain"]
    cli_default = next(p.default for p in command.params if p.name == "recipe")
    assert PretrainConfig.__dataclass_fields__["recipe"].default is None and cli_default is None


def test_bidirectional_teacher_recipe(corpus, tmp_path):
    teacher = pretrain(tiny_pretrain(corpus, tmp_path / "t1", recipe="bidirectional-teacher", kmeans_fraction=1.0))
    assert json.loads((tmp_path / "t1" / LAST / "config.json").read_text())["architecture"] == "biomamba-bidirectional"
    student = pretrain(tiny_pretrain(corpus, tmp_path / "t2", recipe="bidirectional-teacher", phase=2,
                                     init=tmp_path / "t1", kmeans_fraction=1.0))
    assert "biomamba-bidirectional-layer1" in student["label_source"]
    assert teacher["steps"] == student["steps"] == 4
    assert BioMamba.load(tmp_path / "t2" / LAST).task == "embed"   # the student is causal


def test_transformer_baseline_takes_hubert_recipe(corpus, tmp_path):
    """--architecture transformer: both phases; phase-2 labels from the middle of ITS layers (the
    tiny baseline has 1 layer, so layer 1), computed on whole pieces (attention cannot stream);
    the result fine-tunes as a Transformer; a BioMamba-only recipe is refused."""
    pretrain(tiny_pretrain(corpus, tmp_path / "p1", architecture="transformer", kmeans_fraction=1.0,
                           recipe=PretrainConfig.recipe))   # the default recipe means HuBERT's for it
    config = json.loads((tmp_path / "p1" / LAST / "config.json").read_text())
    assert config["architecture"] == "transformer" and config["pretraining"]["recipe"] == "hubert"
    result = pretrain(tiny_pretrain(corpus, tmp_path / "p2", architecture="transformer", phase=2,
                                    init=tmp_path / "p1", kmeans_fraction=1.0))
    assert result["label_source"].startswith("transformer-layer1-")

    tuned = model_from_init(tmp_path / "p2", "classify", ["a", "b"])
    assert isinstance(tuned, TransformerBaseline)
    with pytest.raises(ValueError, match="HuBERT's own recipe"):
        pretrain(tiny_pretrain(corpus, tmp_path / "p3", architecture="transformer", recipe="future"))


def test_future_recipe_adds_heads(corpus, tmp_path):
    result = pretrain(tiny_pretrain(corpus, tmp_path / "f", recipe="future", kmeans_fraction=1.0))
    heads = load_file(str(tmp_path / "f" / LAST / "heads.safetensors"))
    assert {f"future_proj.{k}.weight" for k in range(4)} <= heads.keys()
    assert result["final"]["train_future_loss"] > 0


def test_default_recipe_runs_delayed_and_records_its_delay(corpus, tmp_path):
    result = pretrain(tiny_pretrain(corpus, tmp_path / "d", recipe=None, kmeans_fraction=1.0))
    config = json.loads((tmp_path / "d" / LAST / "config.json").read_text())
    assert config["pretraining"]["delay"] == 10 and config["pretraining"]["recipe"] == "delayed"
    assert result["final"]["train_masked_loss"] > 0


def test_distill_recipe(corpus, tmp_path):
    """Phase 1 trains the bidirectional teacher; phase 2 distils it into a causal student, with no
    k-means labels; the teacher's checkpoint is unchanged."""
    pretrain(tiny_pretrain(corpus, tmp_path / "t1", recipe="distill", kmeans_fraction=1.0))
    before = load_file(str(tmp_path / "t1" / LAST / "model.safetensors"))
    result = pretrain(tiny_pretrain(corpus, tmp_path / "t2", recipe="distill", phase=2, init=tmp_path / "t1"))
    assert result["label_source"].startswith("distill-biomamba-bidirectional-") and result["clusters"] is None
    assert not (tmp_path / "t2" / "labels").exists()
    log = [json.loads(x) for x in (tmp_path / "t2" / "log.jsonl").read_text().splitlines()]
    assert {"train_l1", "train_cosine"} <= log[-1].keys()
    student = BioMamba.load(tmp_path / "t2" / LAST)
    assert student.task == "embed"
    after = load_file(str(tmp_path / "t1" / LAST / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="leave --labels-only out"):
        pretrain(tiny_pretrain(corpus, tmp_path / "t3", recipe="distill", phase=2, init=tmp_path / "t1",
                               labels_only=True))
    with pytest.raises(ValueError, match="HuBERT's own recipe"):
        pretrain(tiny_pretrain(corpus, tmp_path / "t4", architecture="transformer", recipe="distill"))


def test_bidirectional_model_reverses_within_each_rows_length():
    torch.manual_seed(0)
    model = perturb_(BidirectionalBioMamba.from_preset("tiny", task="embed")).eval()
    rng = np.random.default_rng()
    frames = torch.tensor(rng.standard_normal((2, 20, 64)), dtype=torch.float32)
    mask = torch.arange(20)[None] < torch.tensor([20, 13])[:, None]
    with torch.no_grad():
        batched = model.encode(frames, mask)
        alone = model.encode(frames[1:, :13])
        assert torch.allclose(batched[1, :13], alone[0], atol=1e-5)   # padding does not leak in
        changed = frames.clone()
        changed[0, 15:] += 1.0
        assert not torch.allclose(model.encode(changed, mask)[0, :15], batched[0, :15])   # it looks ahead


def test_pretrain_resume_after_interrupt_is_exact(corpus, tmp_path, monkeypatch):
    straight = pretrain(tiny_pretrain(corpus, tmp_path / "a", steps=5, kmeans_fraction=1.0))
    real = PretrainModel.forward
    calls = {"n": 0}

    def interrupting(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args)

    monkeypatch.setattr(PretrainModel, "forward", interrupting)
    with pytest.raises(TrainingInterrupted):
        pretrain(tiny_pretrain(corpus, tmp_path / "b", steps=5, kmeans_fraction=1.0))
    monkeypatch.setattr(PretrainModel, "forward", real)
    resumed = pretrain(tiny_pretrain(corpus, tmp_path / "b", steps=5, kmeans_fraction=1.0, resume=True))
    assert resumed["steps"] == straight["steps"] == 5
    for name in ("model.safetensors", "heads.safetensors"):
        a, b = load_file(str(tmp_path / "a" / LAST / name)), load_file(str(tmp_path / "b" / LAST / name))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_crops_carry_left_context_and_labels(tmp_path):
    rng = np.random.default_rng()
    audio = tone(1.37, 800.0, rng)
    path = _write(tmp_path / "a.wav", audio)
    frames = math.ceil(len(audio) / 320)
    labels = np.arange(frames, dtype=np.int16)
    np.save(tmp_path / "l.npy", labels)
    ds = PretrainDataset([path], [tmp_path / "l.npy"], crop_s=0.4, seed=int(rng.integers(1000)))
    padded = np.concatenate([np.zeros(80, np.float32), audio, np.zeros(320 * frames - len(audio), np.float32)])
    for i in range(len(ds)):
        for epoch in range(3):
            ds.set_epoch(epoch)
            x, y = ds[i]
            start = int(y[0])
            assert torch.equal(y, torch.arange(start, start + len(y)))
            np.testing.assert_allclose(x.numpy(), padded[320 * start : 320 * (start + len(y)) + 80], atol=1e-7)
    batch = collate_pretrain([ds[0], (torch.zeros(80 + 320 * 3), torch.zeros(3, dtype=torch.int64))])
    assert batch["labels"][1, 3:].eq(IGNORE).all() and batch["frame_lengths"].tolist() == [20, 3]


def test_random_crop_lengths(tmp_path):
    """Issue 10 item 3: with min_crop_s each crop's length is drawn in [min, max] frames, per
    (seed, epoch, item), and its labels still line up with its audio."""
    rng = np.random.default_rng(0)
    audio = tone(6.0, 800.0, rng)
    path = _write(tmp_path / "a.wav", audio)
    frames = math.ceil(len(audio) / 320)
    np.save(tmp_path / "l.npy", np.arange(frames, dtype=np.int16))
    ds = PretrainDataset([path], [tmp_path / "l.npy"], crop_s=1.0, seed=3, min_crop_s=0.2)
    padded = np.concatenate([np.zeros(80, np.float32), audio, np.zeros(320 * frames - len(audio), np.float32)])
    lengths = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x, y = ds[i]
            start = int(y[0])
            assert torch.equal(y, torch.arange(start, start + len(y)))
            np.testing.assert_allclose(x.numpy(), padded[320 * start : 320 * (start + len(y)) + 80], atol=1e-7)
            lengths.append(len(y))
    assert min(lengths) >= 10 and max(lengths) <= 50 and len(set(lengths)) > 10
    ds.set_epoch(1)
    assert torch.equal(ds[2][1], ds[2][1])                                 # reproducible
    fixed = PretrainDataset([path], [tmp_path / "l.npy"], crop_s=1.0, seed=3)
    assert {len(fixed[i][1]) for i in range(len(fixed))} == {50}
    with pytest.raises(ValueError, match="longer than the crop"):
        PretrainDataset([path], [tmp_path / "l.npy"], crop_s=1.0, min_crop_s=2.0)
