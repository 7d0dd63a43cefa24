"""Every layer kind, on real modules: each layer's alpha equals the fit of eigenvalues computed
here, independently, from the matrix the README says that kind stands for; and the module path,
the state-dict path and the CLI give the same layers and numbers."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from spectral_monitor import SpectralAnalysis, SpectralTracker, analyze, fit_power_law
from spectral_monitor.cli import main
from spectral_monitor.demo.models import CharTransformer, ImageClassifier
from spectral_monitor.weights.layers import register_layer


def expected_fit(matrix: torch.Tensor, rows: int | None = None, scale: float = 1.0):
    """The power-law fit of σ² of ``matrix`` (float64 SVD), divided by ``rows`` (normalize)."""
    sv = torch.linalg.svdvals(matrix.detach().double())
    evals = (sv**2).numpy() * scale / (rows if rows is not None else 1)
    return fit_power_law(np.sort(evals))


def check(report, expected: dict[str, torch.Tensor], normalize: bool = True) -> None:
    """Each named layer's alpha and λmax equal the independent fit of its expected matrix."""
    for name, matrix in expected.items():
        layer = report.layer(name)
        assert layer.skipped is None, (name, layer.skipped)
        fit = expected_fit(matrix, matrix.shape[0] if normalize else None)
        assert layer.alpha == pytest.approx(fit.alpha, rel=1e-6), name
        top = torch.linalg.svdvals(matrix.detach().double())[0].item() ** 2
        assert layer.lambda_max == pytest.approx(
            top / (matrix.shape[0] if normalize else 1), rel=1e-6
        )


def names(report) -> list[str]:
    return [layer.name for layer in report.layers]


# --- attention ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_packed_projections(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(48, 4, batch_first=batch_first)
    model = nn.Sequential(mha)
    report = analyze(model, precision="float64")
    assert names(report) == ["0.in_proj.q", "0.in_proj.k", "0.in_proj.v", "0.out_proj"]
    assert {la.kind for la in report.layers[:3]} == {"attention"}
    w = mha.in_proj_weight
    check(report, {"0.in_proj.q": w[:48], "0.in_proj.k": w[48:96], "0.in_proj.v": w[96:]})
    check(report, {"0.out_proj": mha.out_proj.weight})
    by_weights = analyze(model.state_dict(), precision="float64")
    assert names(by_weights) == names(report)
    assert [la.alpha for la in by_weights.layers] == [la.alpha for la in report.layers]


def test_multihead_attention_separate_projections() -> None:
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(32, 4, kdim=24, vdim=40, batch_first=True)
    assert mha.in_proj_weight is None
    report = analyze(nn.ModuleDict({"attn": mha}), precision="float64")
    assert names(report) == ["attn.in_proj.q", "attn.in_proj.k", "attn.in_proj.v", "attn.out_proj"]
    assert report.layer("attn.in_proj.k").shape == (32, 24)
    check(
        report,
        {
            "attn.in_proj.q": mha.q_proj_weight,
            "attn.in_proj.k": mha.k_proj_weight,
            "attn.in_proj.v": mha.v_proj_weight,
        },
    )
    by_weights = analyze(nn.ModuleDict({"attn": mha}).state_dict(), precision="float64")
    assert names(by_weights) == names(report)
    assert [la.alpha for la in by_weights.layers] == [la.alpha for la in report.layers]


def test_transformer_encoder_layers() -> None:
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    report = analyze(encoder, precision="float64")
    block = [
        "self_attn.in_proj.q", "self_attn.in_proj.k", "self_attn.in_proj.v",
        "self_attn.out_proj", "linear1", "linear2",
    ]  # fmt: skip
    assert names(report) == [f"layers.{i}.{n}" for i in range(2) for n in block]
    w = encoder.layers[1].self_attn.in_proj_weight
    check(
        report,
        {
            "layers.1.self_attn.in_proj.v": w[64:],
            "layers.1.linear1": encoder.layers[1].linear1.weight,
        },
    )
    decoder = nn.TransformerDecoderLayer(32, 4, dim_feedforward=64)
    assert "multihead_attn.in_proj.k" in names(analyze(decoder))


# --- GPT-2 and BERT-like models built here ---------------------------------------------------


class Conv1D(nn.Module):
    """GPT-2's Conv1D as transformers writes it: weight (in, out), y = x W + b."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)


class GPT2Block(nn.Module):
    def __init__(self, dim: int, conv: type[nn.Module] = Conv1D) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = conv(3 * dim, dim), conv(dim, dim)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = conv(4 * dim, dim), conv(dim, 4 * dim)


class GPT2Like(nn.Module):
    """Token and position embeddings, Conv1D blocks, an LM head tied to the token embedding."""

    def __init__(
        self, vocab: int = 300, dim: int = 48, depth: int = 2, conv: type[nn.Module] = Conv1D
    ) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(64, dim)
        self.h = nn.ModuleList([GPT2Block(dim, conv) for _ in range(depth)])
        if conv is not Conv1D:  # transformers' Conv1D initialises nothing random by itself
            with torch.no_grad():
                for block in self.h:
                    for p in block.parameters():
                        p.normal_(0, 0.02) if p.dim() == 2 else None
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(self.wte(ids)))


class BertLike(nn.Module):
    def __init__(self, vocab: int = 200, dim: int = 32) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, dim)
        self.embeddings.position_embeddings = nn.Embedding(64, dim)
        self.embeddings.token_type_embeddings = nn.Embedding(2, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.pooler = nn.Linear(dim, dim)


def test_gpt2_conv1d_is_a_transposed_linear_and_tied_weights_count_once() -> None:
    model = GPT2Like()
    report = analyze(model, precision="float64")
    assert names(report) == [
        *(
            f"h.{i}.{n}"
            for i in range(2)
            for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        ),
        "lm_head",
    ]
    c_fc = model.h[0].mlp.c_fc
    assert (
        report.layer("h.0.mlp.c_fc").shape == (192, 48)
        and report.layer("h.0.mlp.c_fc").kind == "linear"
    )
    check(
        report, {"h.0.mlp.c_fc": c_fc.weight.T, "h.1.attn.c_attn": model.h[1].attn.c_attn.weight.T}
    )
    # With embeddings asked for, the tied weight is analysed once, under its first name.
    every = analyze(model, kinds="all")
    assert names(every)[:2] == ["wte", "wpe"] and "lm_head" not in names(every)
    assert every.layer("wte").kind == "embedding"


@pytest.mark.parametrize(
    "build",
    [
        GPT2Like,
        BertLike,
        lambda: CharTransformer(dim=32, depth=1),
        lambda: ImageClassifier(width=8),
    ],
    ids=["gpt2", "bert", "char_transformer", "image_classifier"],
)
def test_module_state_dict_and_cli_agree(build, tmp_path) -> None:
    model = build()
    for kinds in (None, "all"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CharTransformer's bare `pos` parameter is left out
            by_module = analyze(model, kinds=kinds)
            by_weights = analyze(model.state_dict(), kinds=kinds)
        assert names(by_weights) == names(by_module)
        for a, b in zip(by_module.layers, by_weights.layers, strict=True):
            assert (a.kind, a.shape, a.skipped) == (b.kind, b.shape, b.skipped)
            assert b.alpha == a.alpha or (np.isnan(a.alpha) and np.isnan(b.alpha))
            assert b.lambda_max == a.lambda_max or a.skipped is not None
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    out = io.StringIO()
    assert (
        main(["analyze", str(tmp_path / "weights.pt"), "--csv", str(tmp_path / "t.csv")], out=out)
        == 0
    )
    import csv

    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    expected = (
        analyze(model) if not isinstance(model, CharTransformer) else by_module_default(model)
    )
    assert [r["name"] for r in rows] == names(expected)
    for row, layer in zip(rows, expected.layers, strict=True):
        if layer.skipped is None:
            assert float(row["alpha"]) == pytest.approx(layer.alpha, rel=1e-12)


def by_module_default(model: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze(model)


def test_compiled_model_and_its_state_dict_keep_the_names() -> None:
    model = GPT2Like()
    compiled = torch.compile(model)
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    plain = analyze(model)
    assert names(analyze(compiled)) == names(plain)
    by_weights = analyze(compiled.state_dict())
    assert names(by_weights) == names(plain)
    assert [la.alpha for la in by_weights.layers] == [la.alpha for la in plain.layers]
    ddp_style = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert names(analyze(ddp_style)) == names(plain)


# --- convolutions and RNNs --------------------------------------------------------------------


def test_conv1d_conv3d_and_transposed_conv_matrices() -> None:
    torch.manual_seed(5)
    model = nn.ModuleDict(
        {
            "c1": nn.Conv1d(6, 40, 5),
            "c3": nn.Conv3d(4, 24, 3),
            "t2": nn.ConvTranspose2d(16, 30, 3),
            "g": nn.Conv1d(16, 32, 3, groups=2),
        }
    )
    flat = analyze(model, precision="float64")
    assert [la.kind for la in flat.layers] == ["conv1d", "conv3d", "conv2d", "conv1d"]
    t2 = model["t2"].weight.transpose(0, 1)  # (in, out, k, k) -> (out, in, k, k)
    assert flat.layer("t2").shape == (30, 16, 3, 3)
    check(
        flat,
        {
            "c1": model["c1"].weight.reshape(40, -1),
            "c3": model["c3"].weight.reshape(24, -1),
            "t2": t2.reshape(30, -1),
            "g": model["g"].weight.reshape(32, -1),  # groups stacked along the rows
        },
    )
    sliced = analyze(model, conv="slices", precision="float64", normalize=False, min_evals=5)
    c3 = model["c3"].weight
    pooled = np.sort(
        np.concatenate(
            [
                torch.linalg.svdvals(c3[:, :, i, j, k].detach().double()).numpy() ** 2
                for i in range(3)
                for j in range(3)
                for k in range(3)
            ]
        )
    )
    assert sliced.layer("c3").num_evals == 27 * 4
    assert sliced.layer("c3").alpha == pytest.approx(fit_power_law(pooled).alpha, rel=1e-6)
    # Conv2d slices are halved (WeightWatcher's conv2d_norm), other convolutions are not.
    t2_slices = np.concatenate(
        [
            torch.linalg.svdvals(t2[:, :, i, j].detach().double()).numpy() ** 2
            for i in range(3)
            for j in range(3)
        ]
    )
    assert sliced.layer("t2").lambda_max == pytest.approx(t2_slices.max() / 2, rel=1e-6)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_rnn_weights_are_matrices(cls) -> None:
    torch.manual_seed(6)
    rnn = cls(12, 24, num_layers=2, bidirectional=True)
    report = analyze(nn.ModuleDict({"rnn": rnn}), precision="float64", min_evals=5)
    expected = [
        f"rnn.weight_{w}_l{k}{s}" for k in range(2) for s in ("", "_reverse") for w in ("ih", "hh")
    ]
    assert names(report) == expected and {la.kind for la in report.layers} == {"rnn"}
    check(
        report,
        {
            "rnn.weight_ih_l1_reverse": rnn.weight_ih_l1_reverse,
            "rnn.weight_hh_l0": rnn.weight_hh_l0,
        },
    )
    assert names(analyze(nn.ModuleDict({"rnn": rnn}).state_dict(), min_evals=5)) == expected


# --- what is not analysed -------------------------------------------------------------------


class Int8Linear(nn.Linear):
    """A Linear subclass holding int8 codes and a scale, as weight-only quantizers do."""

    def __init__(self) -> None:
        super().__init__(64, 64, bias=False)
        codes = torch.randint(-127, 128, (64, 64), dtype=torch.int8)
        del self.weight
        self.register_buffer("weight", codes)


def test_non_floating_and_quantized_weights_are_skipped_not_analysed_raw() -> None:
    model = nn.Sequential(Int8Linear(), nn.Linear(64, 32))
    report = analyze(model)
    assert "non-floating weight (torch.int8)" in report.layer("0").skipped
    assert np.isnan(report.layer("0").alpha) and report.layer("1").skipped is None
    from_weights = analyze(model.state_dict())
    assert from_weights.layer("0").skipped == report.layer("0").skipped
    quantized = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(nn.Linear(64, 64)), {nn.Linear}, dtype=torch.qint8
    )
    layer = analyze(quantized).layer("0")
    assert "quantized module" in layer.skipped and np.isnan(layer.alpha)


def test_left_out_weights_are_named_once_in_analyze_tracker_and_cli(tmp_path) -> None:
    class WithBareParameters(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.pos = nn.Parameter(torch.randn(1, 128, 64))  # no layer kind covers it
            self.small = nn.Parameter(torch.randn(8, 8))  # too small to mention
            self.table = nn.Embedding(100, 64)  # covered by a kind (not selected by default)

    model = WithBareParameters()
    with pytest.warns(UserWarning, match=r"1 weight\(s\).*pos 1x128x64") as record:
        analyze(model)
    assert not any("small" in str(w.message) or "table" in str(w.message) for w in record)
    tracker = SpectralTracker(every_n_steps=1, mode="sync")
    with pytest.warns(UserWarning, match="pos 1x128x64") as record:
        for step in range(3):
            tracker.step(model, step)
    assert sum("pos 1x128x64" in str(w.message) for w in record) == 1
    tracker.close()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    out = io.StringIO()
    assert main(["analyze", str(tmp_path / "w.pt"), "--min-evals", "2"], out=out) == 0
    assert "left out: 1 weight(s)" in out.getvalue() and "pos 1x128x64" in out.getvalue()


def test_kinds_argument_and_seed_selection() -> None:
    torch.manual_seed(7)
    model = nn.ModuleDict(
        {"emb": nn.Embedding(50, 32), "mha": nn.MultiheadAttention(32, 2), "fc": nn.Linear(32, 32)}
    )
    assert names(analyze(model)) == [
        "mha.in_proj.q", "mha.in_proj.k", "mha.in_proj.v", "mha.out_proj", "fc",
    ]  # fmt: skip
    assert names(analyze(model, kinds=["embedding", "linear"])) == ["emb", "mha.out_proj", "fc"]
    assert names(analyze(model.state_dict(), kinds="embedding")) == ["emb"]
    with pytest.raises(ValueError, match="kinds"):
        analyze(model, kinds=["dense"])
    # The seed's class keeps its own selection: Linear and Conv2d modules only.
    assert sorted(SpectralAnalysis(model).fit_power_law()) == [1, 2]


def test_conv2d_argument_is_deprecated_but_works(cnn) -> None:
    with pytest.warns(FutureWarning, match="conv2d= is deprecated"):
        old = analyze(cnn, conv2d="slices")
    assert old.conv2d == "slices"
    assert [la.alpha for la in old.layers][1:] == [
        la.alpha for la in analyze(cnn, conv="slices").layers
    ][1:]
    with pytest.raises(ValueError, match="contradicts"):
        analyze(cnn, conv2d="flatten", conv="slices")


def test_registered_layer_class() -> None:
    class LowRank(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.u = nn.Parameter(torch.randn(96, 12))
            self.v = nn.Parameter(torch.randn(12, 80))
            self.inner = nn.Linear(8, 8)  # not visited: the registered function covers the module

    register_layer(LowRank, lambda m: {"": m.u @ m.v, "v": m.v}, kind="lowrank")
    model = nn.Sequential(LowRank())
    report = analyze(model, precision="float64")
    assert names(report) == ["0", "0.v"] and report.layer("0").kind == "lowrank"
    check(report, {"0": model[0].u @ model[0].v, "0.v": model[0].v})
    assert names(analyze(model, kinds="linear")) == []


# --- LoRA (real peft) and deltas from a base model -------------------------------------------


def _lora_model(targets: list[str]):
    import peft  # the test extra installs it: a broken install fails, never skips

    # peft adapts GPT-2's Conv1D only in its transformers class (fan_in_fan_out); ours reads it.
    from transformers.pytorch_utils import Conv1D as HFConv1D

    base = GPT2Like(conv=HFConv1D)
    config = peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False, fan_in_fan_out=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return base, peft.get_peft_model(copy.deepcopy(base), config)


def test_peft_lora_effective_adapter_and_base() -> None:
    base, model = _lora_model(["c_attn", "c_fc"])
    layer = model.base_model.model.h[0].attn.c_attn
    scale = layer.scaling["default"]
    delta = scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight  # (out, in)
    w = layer.base_layer.weight.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = copy.deepcopy(model).merge_and_unload()  # peft's own effective weights
    effective = analyze(model, precision="float64")
    assert names(effective) == names(analyze(base))  # the base layers' names
    check(effective, {"h.0.attn.c_attn": merged.h[0].attn.c_attn.weight.T})
    check(effective, {"h.0.attn.c_attn": w + delta})
    adapter = analyze(model, lora="adapter", precision="float64", min_evals=4)
    check(adapter, {"h.0.attn.c_attn": delta})
    assert adapter.layer("h.0.attn.c_attn").num_evals == 48  # rank 4: the rest are zeros
    frozen = analyze(model, lora="base", precision="float64")
    check(frozen, {"h.0.attn.c_attn": w, "h.1.mlp.c_fc": base.h[1].mlp.c_fc.weight.T})
    # Deltas from the base model: W + scale·B·A − W is the adapter.
    fine_tuned = analyze(model, base=base, precision="float64", min_evals=4)
    check(fine_tuned, {"h.0.attn.c_attn": delta})
    assert "all-zero" in fine_tuned.layer("h.0.attn.c_proj").skipped  # not adapted: no change
    # In a state dict the scale is not stored: said so, unless the frozen weight is asked for.
    state = model.state_dict()
    assert "LoRA scale" in analyze(state).layer("h.0.attn.c_attn").skipped
    check(analyze(state, lora="base", precision="float64"), {"h.0.attn.c_attn": w})


def test_base_delta_from_module_state_dict_and_cli(tmp_path) -> None:
    base = GPT2Like()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    report = analyze(tuned, base=base.state_dict(), precision="float64")
    c_fc = tuned.h[0].mlp.c_fc.weight - base.h[0].mlp.c_fc.weight
    check(report, {"h.0.mlp.c_fc": c_fc.T})
    assert names(analyze(tuned, base=base)) == names(report)
    torch.save(tuned.state_dict(), tmp_path / "tuned.pt")
    torch.save(base.state_dict(), tmp_path / "base.pt")
    out = io.StringIO()
    args = ["analyze", str(tmp_path / "tuned.pt"), "--base", str(tmp_path / "base.pt")]
    assert main([*args, "--csv", str(tmp_path / "d.csv")], out=out) == 0
    import csv

    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "d.csv").open())}
    expected = analyze(tuned, base=base)
    assert float(rows["h.0.mlp.c_fc"]["alpha"]) == pytest.approx(
        expected.layer("h.0.mlp.c_fc").alpha, rel=1e-9
    )
    partial = analyze(tuned, base={"h.0.mlp.c_fc.weight": base.h[0].mlp.c_fc.weight})
    assert "no layer 'lm_head' in the base model" in partial.layer("lm_head").skipped


def test_peft_model_inside_a_parent_module_keeps_the_base_names() -> None:
    base, model = _lora_model(["c_attn"])
    parent = nn.ModuleDict({"net": model})
    assert names(analyze(parent)) == [f"net.{n}" for n in names(analyze(base))]
    assert names(analyze(parent.state_dict(), lora="base")) == names(analyze(parent))
