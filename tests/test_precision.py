"""Device and precision choice: int8 fidelity, `auto` calibration remembered in the home,
a broken candidate refused, `status` saying what runs and why. Nothing here depends on the
CPU class: where bf16 or int8 can't run, the logic must still choose correctly."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import ModelUnavailable
from indexer.precision import (
    MIN_COSINE,
    ChoiceStore,
    calibrate,
    calibration_pixels,
    choose_device,
    cpu_candidates,
    cpu_signature,
    fixed_precision,
    isa_flags,
)
from tests.assets.tiny_models import make_synthetic_dataset, materialize_tiny_clip
from tests.helpers import picture, run_cli

# --- device and fixed precision (pure logic: CUDA and Apple GPUs can't run here) ---


@pytest.mark.parametrize(
    ("cuda", "mps", "want"),
    [(True, False, "cuda"), (False, True, "mps"), (True, True, "cuda"), (False, False, "cpu")],
)
def test_auto_device_prefers_cuda_then_apple_silicon_then_the_cpu(cuda, mps, want) -> None:
    assert choose_device("auto", cuda=cuda, mps=mps) == want
    assert fixed_precision("auto", want) == (None if want == "cpu" else "fp16")


def test_a_requested_device_that_is_missing_is_a_clear_error() -> None:
    with pytest.raises(ModelUnavailable, match="no CUDA device"):
        choose_device("cuda", cuda=False, mps=True)
    with pytest.raises(ModelUnavailable, match="MPS"):
        choose_device("mps", cuda=True, mps=False)
    assert choose_device("cpu", cuda=True, mps=True) == "cpu"
    assert choose_device("mps", cuda=False, mps=True) == "mps"


def test_forced_precisions_and_int8_only_on_the_cpu() -> None:
    assert fixed_precision("fp32", "cpu") == "fp32"
    assert fixed_precision("int8", "cpu") == "int8"
    assert fixed_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ModelUnavailable, match="CPU only"):
        fixed_precision("int8", "mps")


def test_candidates_follow_what_the_cpu_and_install_offer() -> None:
    avx2_only = cpu_candidates(has_bf16=False, int8_missing=None)
    assert avx2_only["fp32"] is None and avx2_only["int8"] is None
    assert "bfloat16" in str(avx2_only["bf16"])
    bare = cpu_candidates(has_bf16=True, int8_missing="ONNX Runtime is not installed")
    assert bare["bf16"] is None and bare["int8"] == "ONNX Runtime is not installed"
    laptop = "model name\t: Some Laptop CPU\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
    assert isa_flags(laptop) == ["avx2", "fma"]
    server = "flags\t: avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
    assert isa_flags(server)[-3:] == ["amx_tile", "amx_bf16", "amx_int8"]


# --- the calibration rule, on fakes ---


class FakeRunner:
    """Embeds by a fixed projection; `noise` spoils fidelity, `cost` (s) fakes slowness."""

    def __init__(self, noise: float = 0.0, cost: float = 0.0, seed: int = 0) -> None:
        self.noise, self.cost = noise, cost
        self.rng = np.random.default_rng(seed)
        self.proj = np.random.default_rng(42).normal(size=(12, 8))

    def _unit(self, x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        x = x + self.noise * self.rng.normal(size=x.shape)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if self.cost:
            import time

            time.sleep(self.cost)
        flat = pixels.reshape(len(pixels), -1)[:, :12].astype(np.float64) + 1
        return self._unit(flat @ self.proj)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        codes = np.array([[ord(c) for c in (t * 12)[:12]] for t in texts], np.float64)
        return self._unit(codes @ self.proj)


def test_calibration_picks_the_fastest_faithful_and_refuses_a_broken_one() -> None:
    pixels = calibration_pixels(16)

    def crash() -> FakeRunner:
        raise RuntimeError("no kernel for this CPU")

    choice = calibrate(
        FakeRunner(),
        {
            "fp32": lambda: FakeRunner(cost=0.02),
            "bf16": "no native bfloat16 on this CPU",
            "faithful": lambda: FakeRunner(noise=1e-3, cost=0.005),
            "broken": lambda: FakeRunner(noise=1.0),  # fastest, but wrong
            "crashes": crash,
        },
        pixels,
    )
    assert choice.precision == "faithful", choice
    trials = {t.precision: t for t in choice.trials}
    assert trials["broken"].refused and "drifted" in trials["broken"].refused
    assert trials["broken"].min_cosine is not None and trials["broken"].min_cosine < MIN_COSINE
    assert trials["bf16"].refused == "no native bfloat16 on this CPU"
    assert "no kernel" in str(trials["crashes"].refused)
    assert trials["faithful"].refused is None and trials["fp32"].refused is None
    assert "faithful" in choice.reason
    # Nothing faithful: float32, said so.
    fallback = calibrate(FakeRunner(), {"broken": lambda: FakeRunner(noise=1.0)}, pixels)
    assert fallback.precision == "fp32" and "no candidate kept fidelity" in fallback.reason


# --- the real model: the tiny trained CLIP ---


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return materialize_tiny_clip(tmp_path_factory.mktemp("trained_clip"))


def _int8_missing() -> str | None:
    from indexer import int8

    missing = int8.available()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"int8 must be tested in CI: {missing}")
    return missing


def test_int8_embeddings_stay_within_cosine_099_of_float32(trained) -> None:
    from indexer.encoder import ClipEncoder

    if missing := _int8_missing():
        pytest.skip(missing)
    config, checkpoint = trained
    ref = ClipEncoder(str(config), str(checkpoint), device="cpu", precision="fp32")
    int8 = ClipEncoder(str(config), str(checkpoint), device="cpu", precision="int8")
    assert int8.precision == "int8" and int8.choice.reason == "forced by PIXSEARCH_PRECISION"
    images = [picture(seed, (120 + 10 * seed, 90)) for seed in range(12)]
    texts = ["a red circle", "two blue squares on a green background", "a yellow triangle"]
    for a, b in (
        (ref.embed_images(images), int8.embed_images(images)),
        (ref.embed_texts(texts), int8.embed_texts(texts)),
    ):
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
        assert (a * b).sum(axis=1).min() >= MIN_COSINE
    # Distinct inputs stay distinct: int8 is not a constant.
    assert float(int8.embed_texts(texts[:2]).prod(axis=0).sum()) < 0.999


def test_the_int8_probe_tells_whether_this_cpus_products_saturate() -> None:
    from indexer import int8

    if missing := _int8_missing():
        pytest.skip(missing)
    # Exact with VNNI or AMX, each pair clipped to int16 on AVX2: any other value is a broken
    # probe, which would pick the wrong weights on some CPU.
    values = set(int8.probe_products().ravel().tolist())
    assert values in ({int8.PROBE_EXACT}, {int8.PROBE_CLIPPED})
    assert int8.products_saturate() == (values == {int8.PROBE_CLIPPED})


@pytest.mark.parametrize("seven_bit", [False, True])
def test_both_int8_graphs_stay_within_cosine_099_on_this_cpu(
    trained, tmp_path: Path, seven_bit: bool
) -> None:
    """The AVX2 graph (7-bit weights) and the VNNI one, each run here whatever this CPU is."""
    import open_clip
    import torch

    from indexer import int8
    from indexer.encoder import prepare_pixels
    from indexer.runners import Preprocess, normalised, unit_rows

    if missing := _int8_missing():
        pytest.skip(missing)
    config, checkpoint = trained
    open_clip.add_model_config(config)
    model = open_clip.create_model(config.stem, pretrained=str(checkpoint)).eval()
    towers = int8.Int8Towers(model, tmp_path, "tiny", towers=("image",), seven_bit=seven_bit)
    assert [p.name for p in tmp_path.iterdir()] == [
        "tiny.image.int8w7.onnx" if seven_bit else "tiny.image.int8.onnx"
    ]
    pre = Preprocess.of(model)
    pixels = np.stack([prepare_pixels(picture(seed, (120, 90)), pre) for seed in range(12)])
    x = normalised(pixels, pre, "cpu").contiguous()
    with torch.no_grad():
        want = unit_rows(model.encode_image(x))
    got = unit_rows(towers.encode_image(x.numpy()))
    assert (want * got).sum(axis=1).min() >= MIN_COSINE


def test_auto_calibrates_once_remembers_in_the_home_and_status_says_why(
    trained, tmp_path: Path, monkeypatch, capsys, caplog
) -> None:
    from indexer.encoder import ClipEncoder, model_key

    config, checkpoint = trained
    home = tmp_path / "home"
    key = model_key(str(config), str(checkpoint))
    with caplog.at_level(logging.INFO, logger="indexer.autoprecision"):
        first = ClipEncoder(str(config), str(checkpoint), device="cpu", home=home).load()
    assert "calibrated" in caplog.text
    stored = ChoiceStore(home).get(key, cpu_signature())
    assert stored is not None and stored.precision == first.precision
    assert stored.reason.startswith("auto: fastest within cosine 0.99")
    names = {t.precision for t in stored.trials}
    assert names == {"fp32", "bf16", "int8"}  # each tried, or refused with a reason
    for trial in stored.trials:
        assert trial.refused is not None or trial.min_cosine >= MIN_COSINE  # type: ignore[operator]

    # The second load reads the home's choice and measures nothing: plant a recognisable one.
    data = json.loads((home / "precision.json").read_text())
    entry = data[ChoiceStore.key(key, cpu_signature())]
    entry.update(precision="fp32", reason="auto: planted by the test")
    (home / "precision.json").write_text(json.dumps(data))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="indexer.autoprecision"):
        second = ClipEncoder(str(config), str(checkpoint), device="cpu", home=home).load()
    assert "calibrated" not in caplog.text
    assert (second.precision, second.choice.reason) == ("fp32", "auto: planted by the test")

    for name, value in {
        "PIXSEARCH_HOME": str(home),
        "PIXSEARCH_MODEL": str(config),
        "PIXSEARCH_PRETRAINED": str(checkpoint),
        "PIXSEARCH_DEVICE": "cpu",
    }.items():
        monkeypatch.setenv(name, value)
    res = run_cli(capsys, "status", "--json")
    assert res.code == 0, res.err
    info = res.json()
    assert (info["device"], info["precision"]) == ("cpu", "fp32")  # type: ignore[index]
    assert info["precision_reason"] == "auto: planted by the test"  # type: ignore[index]
    res = run_cli(capsys, "status")
    assert "precision_reason: auto: planted by the test" in res.out
    assert "int8" in res.out  # the trials: what was measured, or why it could not run
    monkeypatch.setenv("PIXSEARCH_PRECISION", "fp32")
    info = run_cli(capsys, "status", "--json").json()
    assert info["precision_reason"] == "forced by PIXSEARCH_PRECISION"  # type: ignore[index]


def test_a_candidate_that_breaks_fidelity_is_refused_on_the_real_model(trained) -> None:
    import open_clip

    from indexer.autoprecision import calibrate_model, int8_cache, int8_graph_name
    from indexer.encoder import model_key
    from indexer.runners import Parts, Preprocess, TorchRunner

    config, checkpoint = trained
    open_clip.add_model_config(config)
    model = open_clip.create_model(config.stem, pretrained=str(checkpoint)).eval()
    tokenizer = open_clip.get_tokenizer(config.stem)
    name = int8_graph_name(model_key(str(config), str(checkpoint)), str(checkpoint))
    parts = Parts(Preprocess.of(model), tokenizer, int8_cache(), name)

    class Broken:
        """The fp32 model with its pictures' colour channels swapped: fast, plausible, wrong."""

        def __init__(self) -> None:
            import copy

            import torch

            self.inner = TorchRunner(copy.deepcopy(model), parts, "cpu", torch.float32)

        def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
            return self.inner.embed_pixels(np.ascontiguousarray(pixels[..., ::-1]))

        def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
            return self.inner.embed_texts(texts)

    choice = calibrate_model(model, parts, extra={"broken": Broken})
    trials = {t.precision: t for t in choice.trials}
    assert trials["broken"].refused is not None and "drifted" in trials["broken"].refused
    assert choice.precision != "broken"
    assert trials["fp32"].refused is None  # float32 itself always qualifies


def test_int8_eval_recall_matches_float32(trained, env, tmp_path: Path, monkeypatch, capsys):
    if missing := _int8_missing():
        pytest.skip(missing)
    config, checkpoint = trained
    data = make_synthetic_dataset(tmp_path / "shapes", seed=1234, count=60)
    monkeypatch.setenv("PIXSEARCH_MODEL", str(config))
    monkeypatch.setenv("PIXSEARCH_PRETRAINED", str(checkpoint))
    recall = {}
    for precision in ("fp32", "int8"):
        monkeypatch.setenv("PIXSEARCH_PRECISION", precision)
        res = run_cli(capsys, "eval", str(data), "--json")
        assert res.code == 0, res.err
        recall[precision] = res.json()["text_to_image"]["recall@1"]  # type: ignore[index]
    assert recall["fp32"] >= 0.8, recall  # the model is good at this: the check means something
    assert abs(recall["int8"] - recall["fp32"]) <= 0.01, recall
