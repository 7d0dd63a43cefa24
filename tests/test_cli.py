"""The spectral-monitor command line on real files: a Lightning checkpoint from a training run,
a state dict, a pickled module, safetensors, bad inputs, and a run's TensorBoard events."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys

import pytest
import torch
from conftest import small_cnn
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import TRUST_TINY, ConvNet, image_loader, trainer

from spectral_monitor import SpectralMonitor, analyze
from spectral_monitor.cli import main


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    model = ConvNet()
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    run = trainer(
        max_steps=10,
        callbacks=[monitor, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        enable_checkpointing=True,
        logger=TensorBoardLogger(root, name="tb"),
    )
    run.fit(model, image_loader())
    return root, model, monitor


def test_analyze_lightning_checkpoint_csv_equals_analyze(trained_run, tmp_path) -> None:
    root, model, _ = trained_run
    code, text = run_cli(
        "analyze", str(root / "ckpt" / "last.ckpt"), "--csv", str(tmp_path / "t.csv")
    )
    assert code == 0
    assert "net.5" in text and "alpha_mean=" in text
    assert all(len(line) <= 100 for line in text.splitlines())
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    expected = analyze(model)
    assert [r["name"] for r in rows] == [la.name for la in expected.layers]
    for row, layer in zip(rows, expected.layers, strict=True):
        if layer.skipped is None:
            assert float(row["alpha"]) == pytest.approx(layer.alpha, rel=1e-9)
            assert float(row["lambda_max"]) == pytest.approx(layer.lambda_max, rel=1e-9)
        else:
            assert row["skipped"] == layer.skipped


def test_analyze_safetensors_state_dict_and_module(tmp_path) -> None:
    from safetensors.torch import save_file

    model = small_cnn()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.save(model, tmp_path / "module.pt")
    expected = analyze(model, conv="slices", normalize=False)
    for name in ("w.safetensors", "sd.pt"):
        code, _ = run_cli(
            "analyze", str(tmp_path / name), "--conv", "slices", "--no-normalize",
            "--json", str(tmp_path / f"{name}.json"),
        )  # fmt: skip
        assert code == 0
        import json

        data = json.loads((tmp_path / f"{name}.json").read_text())
        alphas = [row["alpha"] for row in data["layers"] if row["skipped"] is None]
        assert alphas == pytest.approx([la.alpha for la in expected.fitted], rel=1e-9)
    code, _ = run_cli("analyze", str(tmp_path / "module.pt"))
    assert code == 4  # a pickled module needs --trust-pickle
    code, text = run_cli("analyze", str(tmp_path / "module.pt"), "--trust-pickle")
    assert code == 0 and "alpha_mean=" in text


def test_analyze_writes_real_pngs(tmp_path) -> None:
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    code, _text = run_cli("analyze", str(tmp_path / "sd.pt"), "--plots", str(tmp_path / "plots"))
    assert code == 0
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 6  # alpha by layer + one ESD per fitted layer (reliable or not)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_bad_inputs_have_clear_errors_and_exit_codes(tmp_path, capsys) -> None:
    code, _ = run_cli("analyze", str(tmp_path / "missing.ckpt"))
    assert code == 3 and "no such file" in capsys.readouterr().err
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    code, _ = run_cli("analyze", str(tmp_path / "junk.bin"))
    assert code == 4 and "cannot read" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    code, _ = run_cli("analyze", str(tmp_path / "bad.safetensors"))
    assert code == 4 and "safetensors" in capsys.readouterr().err
    torch.save({"step": 3, "note": "no tensors"}, tmp_path / "empty.pt")
    code, _ = run_cli("analyze", str(tmp_path / "empty.pt"))
    assert code == 4 and "no named weight tensors" in capsys.readouterr().err
    torch.save({"norm.weight": torch.ones(8), "norm.bias": torch.zeros(8)}, tmp_path / "ln.pt")
    code, _ = run_cli("analyze", str(tmp_path / "ln.pt"))
    assert code == 5 and "no analysable layer" in capsys.readouterr().err
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    code, _ = run_cli("analyze", str(tmp_path / "sd.pt"), "--min-evals", "1")
    assert code == 2 and "min_evals" in capsys.readouterr().err
    code, _ = run_cli("history", str(tmp_path / "nowhere"))
    assert code == 3
    code, _ = run_cli("history", str(tmp_path))
    assert code == 4 and "no TensorBoard events" in capsys.readouterr().err


def test_history_reads_a_run_back(trained_run, tmp_path) -> None:
    root, _, monitor = trained_run
    code, text = run_cli("history", str(root / "tb"), "--csv", str(tmp_path / "h.csv"))
    assert code == 0
    assert "3 analyses, steps 0..10" in text and "net.7" in text
    rows = list(csv.DictReader((tmp_path / "h.csv").open()))
    assert {int(r["step"]) for r in rows} == {0, 5, 10}
    _steps, alphas = monitor.history.alpha("net.7")
    logged = [float(r["alpha"]) for r in rows if r["layer"] == "net.7"]
    assert logged == pytest.approx(alphas, rel=1e-6)


def test_console_script_and_module_entry_points(tmp_path) -> None:
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    done = subprocess.run(
        [sys.executable, "-m", "spectral_monitor", "analyze", str(tmp_path / "sd.pt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "alpha_mean=" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "spectral_monitor", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "exit codes" in done.stdout


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_output_errors_exit_6_before_the_analysis(tmp_path, capsys) -> None:
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    (tmp_path / "file").write_text("x")
    impossible = str(tmp_path / "file" / "x.out")  # a folder cannot be made under a file
    for option in ("--csv", "--json"):
        code, text = run_cli("analyze", str(tmp_path / "sd.pt"), option, impossible)
        assert code == 6 and text == ""  # nothing printed: it failed before the work
        assert f"cannot write {impossible}" in one_line_error(capsys)
        code, _ = run_cli("analyze", str(tmp_path / "sd.pt"), option, str(tmp_path))
        assert code == 6 and "is a directory" in one_line_error(capsys)
    code, _ = run_cli("analyze", str(tmp_path / "sd.pt"), "--plots", str(tmp_path / "file"))
    assert code == 6 and "not a directory" in one_line_error(capsys)
    code, _ = run_cli("history", str(tmp_path), "--csv", impossible)
    assert code == 6 and "cannot write" in one_line_error(capsys)


def test_every_output_option_creates_its_folder(tmp_path) -> None:
    """One rule for output folders: --plots created its folder, --csv and --json failed on a
    missing one; now each creates what is missing."""
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    out = tmp_path / "new" / "deeper"
    code, _ = run_cli(
        "analyze", str(tmp_path / "sd.pt"), "--csv", str(out / "csv" / "t.csv"),
        "--json", str(out / "json" / "t.json"), "--plots", str(out / "plots"),
    )  # fmt: skip
    assert code == 0
    assert (out / "csv" / "t.csv").is_file() and (out / "json" / "t.json").is_file()
    assert (out / "plots" / "alpha_by_layer.png").is_file()


def test_step_comes_from_the_lightning_checkpoint(trained_run, tmp_path) -> None:
    root, _, _ = trained_run
    checkpoint = root / "ckpt" / "last.ckpt"
    step = torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]
    code, text = run_cli(
        "analyze", str(checkpoint), "--csv", str(tmp_path / "t.csv"),
        "--json", str(tmp_path / "t.json"),
    )  # fmt: skip
    assert code == 0 and f"step {step}" in text
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert rows and {row["step"] for row in rows} == {str(step)}
    import json

    assert json.loads((tmp_path / "t.json").read_text())["step"] == step


def damage(path, offset: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for k in range(offset, offset + count):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


def test_damaged_and_truncated_files_say_where_reading_failed(tmp_path, capsys) -> None:
    """A flipped byte in the pickle was reported as "objects other than tensors ... add
    --trust-pickle"; one in a tensor loaded silently; a truncated archive gave a bare OSError or
    miniz's message; a truncated safetensors file was "not a ... safetensors file"."""
    import zipfile

    from safetensors.torch import save_file

    state = small_cnn().state_dict()
    checkpoint = {"state_dict": state, "global_step": 3}
    torch.save(checkpoint, tmp_path / "whole.ckpt")
    with zipfile.ZipFile(tmp_path / "whole.ckpt") as archive:
        members = {info.filename: info for info in archive.infolist()}
    pickle_member = next(name for name in members if name.endswith("/data.pkl"))
    tensor_member = max(members, key=lambda name: members[name].file_size)
    whole = (tmp_path / "whole.ckpt").read_bytes()

    def start_of(name: str) -> int:  # where a member's data begin
        info = members[name]
        name_length = int.from_bytes(
            whole[info.header_offset + 26 : info.header_offset + 28], "little"
        )
        extra = int.from_bytes(whole[info.header_offset + 28 : info.header_offset + 30], "little")
        return info.header_offset + 30 + name_length + extra

    cases = {
        "pickle.ckpt": (lambda p: damage(p, start_of(pickle_member) + 40), pickle_member),
        "tensor.ckpt": (lambda p: damage(p, start_of(tensor_member) + 100), tensor_member),
    }
    for name, (spoil, member) in cases.items():
        (tmp_path / name).write_bytes(whole)
        spoil(tmp_path / name)
        code, _ = run_cli("analyze", str(tmp_path / name))
        err = one_line_error(capsys)
        assert code == 4 and "damaged" in err and member in err, err
        assert "trust-pickle" not in err
        # --trust-pickle does not run the full unpickler on it either.
        code, _ = run_cli("analyze", str(tmp_path / name), "--trust-pickle")
        assert code == 4 and "damaged" in one_line_error(capsys)
    for cut in (len(whole) // 2, start_of(pickle_member) + 100, len(whole) - 10):
        (tmp_path / "cut.ckpt").write_bytes(whole[:cut])
        code, _ = run_cli("analyze", str(tmp_path / "cut.ckpt"))
        err = one_line_error(capsys)
        assert code == 4 and "truncated" in err and "byte" in err and "trust-pickle" not in err
    # A legacy (non-zip) torch file cut inside its pickle: the byte where parsing stopped.
    torch.save(checkpoint, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "legacy.pt").write_bytes(legacy[:200])
    code, _ = run_cli("analyze", str(tmp_path / "legacy.pt"))
    err = one_line_error(capsys)
    assert code == 4 and "damaged" in err and "byte" in err and "trust-pickle" not in err
    save_file(state, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    for cut in (len(data) - 20, 40):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        code, _ = run_cli("analyze", str(tmp_path / "cut.safetensors"))
        err = one_line_error(capsys)
        assert code == 4 and "truncated" in err and "not a torch" not in err, err


def test_base_that_shares_no_layer_is_an_error(tmp_path, capsys) -> None:
    """It exited 0 with every layer skipped and NaN aggregates."""
    torch.save(small_cnn().state_dict(), tmp_path / "model.pt")
    torch.manual_seed(1)
    other = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Linear(40, 5))
    torch.save({f"encoder.{k}": v for k, v in other.state_dict().items()}, tmp_path / "other.pt")
    code, text = run_cli(
        "analyze", str(tmp_path / "model.pt"), "--base", str(tmp_path / "other.pt")
    )
    err = one_line_error(capsys)
    assert code == 7 and text == "" and "share no layer" in err
    # Same names, other shapes: nothing to subtract either.
    torch.save(small_cnn().state_dict(), tmp_path / "same.pt")
    resized = {
        k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in small_cnn().state_dict().items()
    }
    torch.save(resized, tmp_path / "resized.pt")
    code, _ = run_cli("analyze", str(tmp_path / "model.pt"), "--base", str(tmp_path / "resized.pt"))
    assert code == 7 and "share no layer" in one_line_error(capsys)
    code, text = run_cli("analyze", str(tmp_path / "model.pt"), "--base", str(tmp_path / "same.pt"))
    assert code == 0  # W - W_base = 0 everywhere: each layer skipped with its reason, no error
    assert "skipped" in text


class Block(torch.nn.Module):
    """Defined in BERT's order: self-attention (query, key), attention output, then output."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = torch.nn.ModuleDict(
            {
                "self": torch.nn.ModuleDict(
                    {"query": torch.nn.Linear(16, 16), "key": torch.nn.Linear(16, 16)}
                ),
                "output": torch.nn.ModuleDict({"dense": torch.nn.Linear(16, 16)}),
            }
        )
        self.output = torch.nn.ModuleDict({"dense": torch.nn.Linear(16, 16)})


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.ModuleDict(
            {"layer": torch.nn.ModuleList(Block() for _ in range(12))}
        )
        self.classifier = torch.nn.Linear(16, 4)


def table_names(text: str) -> list[str]:
    """The name cells of the layer rows of a printed table (a whole name on its own line
    counts for the row under it)."""
    lines = text.splitlines()
    names, pending = [], None
    for line in lines[2:]:
        if line.startswith(("alpha_mean=", "note:", "left out:", "wrote ")):
            break
        if not re.search(r" \d+x\d+ ", line):  # a row has its shape; a whole name has not
            pending = line
            continue
        names.append(pending or line.split()[0])
        pending = None
    return names


def test_table_names_are_distinct_and_layers_in_model_order(tmp_path) -> None:
    """Names cut from the left at 22 characters printed layer.0 and layer.1's queries alike;
    a safetensors file (keys sorted as strings) listed layer.10 before layer.2."""
    from safetensors.torch import save_file

    model = Encoder()
    expected = [la.name for la in analyze(model).layers]
    assert expected[:4] == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.output.dense",
    ]
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    code, text = run_cli("analyze", str(tmp_path / "sd.pt"), "--csv", str(tmp_path / "sd.csv"))
    assert code == 0
    assert [r["name"] for r in csv.DictReader((tmp_path / "sd.csv").open())] == expected
    names = table_names(text)
    assert len(names) == len(expected) == len(set(names))  # one row each, none printed alike
    assert all(len(line) <= 100 for line in text.splitlines())
    for shown, full in zip(names, expected, strict=True):
        pattern = "^" + ".*".join(map(re.escape, shown.split("…"))) + "$"
        assert re.match(pattern, full), (shown, full)  # a short form of its own name
    code, text = run_cli(
        "analyze", str(tmp_path / "w.safetensors"), "--csv", str(tmp_path / "s.csv")
    )
    assert code == 0
    got = [r["name"] for r in csv.DictReader((tmp_path / "s.csv").open())]
    blocks = [int(n.split(".")[2]) for n in got if n.startswith("encoder.layer.")]
    # The file's keys are sorted as strings, so the definition order is not known: blocks in
    # numeric order (layer.2 before layer.10), within a block numeric-aware key order.
    assert blocks == sorted(blocks) and len(blocks) == len(expected) - 1
    assert sorted(got) == sorted(expected)
    assert len(set(table_names(text))) == len(expected)


def test_save_pretrained_gpt2_gives_the_module_s_layers(tmp_path) -> None:
    """save_pretrained leaves out lm_head (tied to transformer.wte): the file gave 8 layers and
    another alpha_mean than analyze(model), without a word why."""
    import json

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=300, n_positions=32, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "gpt2")
    expected = analyze(model)
    assert "lm_head" in [la.name for la in expected.layers]
    weights = tmp_path / "gpt2" / "model.safetensors"
    code, text = run_cli("analyze", str(weights), "--json", str(tmp_path / "g.json"))
    assert code == 0
    assert "lm_head is tied to transformer.wte and is not stored in this file" in text
    rows = json.loads((tmp_path / "g.json").read_text())["layers"]
    assert [r["name"] for r in rows] == [la.name for la in expected.layers]
    assert [r["alpha"] for r in rows] == pytest.approx(
        [la.alpha for la in expected.layers], rel=1e-6
    )
    # Without the config beside it the file cannot show the tie: the CLI names it.
    (tmp_path / "gpt2" / "config.json").unlink()
    code, text = run_cli("analyze", str(weights))
    assert code == 0 and "lm_head may be tied to transformer.wte" in text


def test_unreadable_files_say_what_they_are_without_a_pickle_hint(tmp_path, capsys) -> None:
    (tmp_path / "empty.ckpt").write_bytes(b"")
    code, _ = run_cli("analyze", str(tmp_path / "empty.ckpt"))
    err = one_line_error(capsys)
    assert code == 4 and "is empty" in err and "trust-pickle" not in err
    (tmp_path / "notes.pt").write_text("epoch 3, loss 0.12\n")
    code, _ = run_cli("analyze", str(tmp_path / "notes.pt"))
    err = one_line_error(capsys)
    assert code == 4 and "not a torch checkpoint" in err and "trust-pickle" not in err
    torch.save(small_cnn(), tmp_path / "module.pt")  # a whole module: the hint applies
    code, _ = run_cli("analyze", str(tmp_path / "module.pt"))
    assert code == 4 and "--trust-pickle" in one_line_error(capsys)
    code, _ = run_cli("history", str(tmp_path / "notes.pt"))
    assert code == 4 and "not a directory" in one_line_error(capsys)


def test_format_is_detected_by_content_not_name(tmp_path) -> None:
    from safetensors.torch import save_file

    model = small_cnn()
    save_file(model.state_dict(), tmp_path / "weights.bin")  # safetensors under another name
    torch.save(model.state_dict(), tmp_path / "weights.safetensors")  # and the reverse
    expected = [la.alpha for la in analyze(model).fitted]
    for name in ("weights.bin", "weights.safetensors"):
        code, _ = run_cli("analyze", str(tmp_path / name), "--csv", str(tmp_path / "t.csv"))
        assert code == 0, name
        rows = list(csv.DictReader((tmp_path / "t.csv").open()))
        alphas = [float(r["alpha"]) for r in rows if not r["skipped"]]
        assert alphas == pytest.approx(expected, rel=1e-9), name


def test_history_of_a_directory_with_steps_written_twice_counts_each_once(tmp_path) -> None:
    """Two runs in one log dir without a restart marker: a step written twice is shown once,
    with the value written last; λmax is matched to alpha at that step; "last" is the latest."""
    from torch.utils.tensorboard import SummaryWriter

    def write(steps: list[int], offset: float, started: int) -> None:
        writer = SummaryWriter(str(tmp_path / "new"))
        for step in steps:
            writer.add_scalar("spectral/alpha/fc", 2.0 + offset + step / 100, step)
            writer.add_scalar("spectral/lambda_max/fc", 10.0 + offset + step, step)
        writer.close()
        # Named as two processes started `started` seconds after the epoch would name them:
        # TensorBoard reads a directory's files in name order.
        (tmp_path / "tb").mkdir(exist_ok=True)
        (written,) = (tmp_path / "new").iterdir()
        written.rename(tmp_path / "tb" / f"events.out.tfevents.{started}.host.{started}.0")

    write([0, 20, 40, 60], 0.0, started=1_700_000_000)
    # The resumed run: 40 and 60 again, other values.
    write([40, 60, 80], 0.5, started=1_700_000_100)
    code, text = run_cli("history", str(tmp_path / "tb"), "--csv", str(tmp_path / "h.csv"))
    assert code == 0
    assert "5 analyses, steps 0..80" in text
    rows = list(csv.DictReader((tmp_path / "h.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 20, 40, 60, 80]
    got = {int(r["step"]): (float(r["alpha"]), float(r["lambda_max"])) for r in rows}
    assert got[20] == pytest.approx((2.2, 30.0))
    assert got[40] == pytest.approx((2.9, 50.5)) and got[60] == pytest.approx((3.1, 70.5))
    fc = next(line for line in text.splitlines() if line.startswith("fc "))
    first, last = fc.split()[1:3]
    assert (float(first), float(last)) == pytest.approx((2.0, 3.3))  # last = step 80's


def test_help_does_not_import_lightning_or_matplotlib() -> None:
    code = (
        "import sys\nfrom spectral_monitor.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('lightning', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
