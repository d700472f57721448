"""Mixed precision and the other speed options of training (specs/training.md §3b)."""
import pytest

torch = pytest.importorskip("torch")

from detector import engine  # noqa: E402
from detector.checkpoint import load_checkpoint  # noqa: E402
from detector.modeling import Detector  # noqa: E402
from detector.modeling import objective as objective_module  # noqa: E402
from detector.runtime import autocast  # noqa: E402
from detector.train import train  # noqa: E402
from tests.detector.test_train_smoke import _fixed_batch, tiny_config  # noqa: E402

pytestmark = pytest.mark.torch

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("amp_digits")


@pytest.mark.parametrize("name", ["demo", "demo_piou"])  # Dynamic ATSS (reads predictions); Pseudo-IoU
def test_bf16_forward_leaves_assignment_and_losses_in_float32(data_root, name, monkeypatch):
    """The head runs in bfloat16 under autocast; the objective casts its outputs to float32
    before decoding, so the assigner sees float32 and assigns exactly as on the float32 copy."""
    config = tiny_config(data_root, name, "solver.amp=bf16")
    batch, num_classes = _fixed_batch(config)
    torch.manual_seed(0)
    model = Detector(config, num_classes).train()
    from detector.data.collate import pad_targets

    targets = pad_targets(batch.targets, device=CPU)
    seen = []
    original = objective_module.assign

    def spy(options, priors, targets, pred_boxes, *args, **kwargs):
        seen.append((priors.points.dtype, pred_boxes.dtype))
        return original(options, priors, targets, pred_boxes, *args, **kwargs)

    monkeypatch.setattr(objective_module, "assign", spy)
    with torch.no_grad(), autocast(CPU, "bf16"):
        outputs = model(batch.images)
    assert outputs.cls_logits.dtype == torch.bfloat16  # the autocast really ran
    size = tuple(batch.images.shape[-2:])
    mixed = model.losses(outputs, targets, size, iteration=3, max_iterations=10)
    as_float = outputs._replace(cls_logits=outputs.cls_logits.float(), box_regression=outputs.box_regression.float(),
                                quality_logits=None if outputs.quality_logits is None else outputs.quality_logits.float())
    reference = model.losses(as_float, targets, size, iteration=3, max_iterations=10)
    assert seen == [(torch.float32, torch.float32)] * 2
    torch.testing.assert_close(mixed.assignment.matched_gt, reference.assignment.matched_gt, rtol=0, atol=0)
    torch.testing.assert_close(mixed.assignment.matched_metric, reference.assignment.matched_metric, rtol=0, atol=0)
    for key in reference.terms:
        assert mixed.terms[key].dtype == torch.float32
        torch.testing.assert_close(mixed.terms[key], reference.terms[key], rtol=0, atol=0)


def test_bf16_training_resumes_exactly(tmp_path):
    config = tiny_config(tmp_path / "data", "demo_atss", "data.digits_num_train=16", "solver.batch_size=4",
                         "solver.epochs=1", "solver.steps=()", "solver.amp=bf16")
    train(config, tmp_path / "straight", progress=False, evaluate_at_end=False)
    assert train(config, tmp_path / "resumed", progress=False, stop_after=2, evaluate_at_end=False) is None
    train(config, tmp_path / "resumed", resume=True, progress=False, evaluate_at_end=False)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pth"), load_checkpoint(tmp_path / "resumed" / "last.pth")
    assert a["iteration"] == b["iteration"] == 4 and "scaler" not in a  # bf16 needs no loss scaling
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)


def test_fp16_is_refused_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the CPU refusal is tested on CPU-only machines")
    from detector.train import main

    config = tiny_config(tmp_path / "data", "demo_atss", "solver.amp=fp16")
    with pytest.raises(ValueError, match="solver.amp=fp16: float16 training needs a CUDA device"):
        train(config, tmp_path / "run", progress=False, evaluate_at_end=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo_atss", "solver.amp=fp16", f"data.root={tmp_path / 'data'}", f"output_dir={tmp_path / 'runs'}"])
    assert exit_info.value.code == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_scaler_state_is_checkpointed_and_resumed(tmp_path):
    config = tiny_config(tmp_path / "data", "demo_atss", "data.digits_num_train=16", "solver.batch_size=4",
                         "solver.epochs=1", "solver.steps=()", "solver.amp=fp16", "device=cuda")
    assert train(config, tmp_path / "run", progress=False, stop_after=2, evaluate_at_end=False) is None
    state = load_checkpoint(tmp_path / "run" / "last.pth")
    assert state["scaler"]["scale"] > 0
    train(config, tmp_path / "run", resume=True, progress=False, evaluate_at_end=False)
    assert load_checkpoint(tmp_path / "run" / "last.pth")["iteration"] == 4


def test_channels_last_computes_the_same_step(data_root):
    """NHWC memory format changes the kernels' summation order, not the step."""
    results = []
    for flag in ("false", "true"):
        config = tiny_config(data_root, "demo_atss", f"solver.channels_last={flag}", "solver.warmup=none")
        batch, num_classes = _fixed_batch(config)
        torch.manual_seed(0)
        model = Detector(config, num_classes)
        if flag == "true":
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = engine.build_optimizer(config, model)
        result = engine.train_step(model, batch, config, optimizer, CPU, iteration=0, max_iterations=10)
        results.append((result, [p.detach().clone() for p in model.parameters()]))
    (plain, weights), (nhwc, weights_nhwc) = results
    assert not plain.skipped and not nhwc.skipped
    assert nhwc.terms["loss"] == pytest.approx(plain.terms["loss"], rel=1e-4)
    for a, b in zip(weights, weights_nhwc):
        torch.testing.assert_close(a, b.contiguous(), rtol=1e-4, atol=1e-5)
