"""The distiller's student is the same bits whatever the machine's thread count (issue 17)."""

import torch

from node.config import DistillConfig
from node.data import spec_of
from node.distiller import distill_student
from node.models import Ensemble, build_model
from simulations.scenario import load_scenario
from tests.conftest import ROOT


def teachers() -> list[torch.nn.Module]:
    """Two digits teachers with BN statistics of their own (what fast inverts)."""
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        t = build_model("digits-cnn-bn", (1, 8, 8), 10)
        with torch.no_grad():
            t.train()
            for _ in range(5):
                t(torch.rand(64, 1, 8, 8) * 16 * (seed + 1) / 2)
        out.append(t.eval())
    return out


def student_bytes(cfg: DistillConfig, ambient_threads: int) -> bytes:
    saved = torch.get_num_threads()
    torch.set_num_threads(ambient_threads)
    try:
        members = teachers()
        blob, _, _ = distill_student(
            [{"teacher": t} for t in members], Ensemble(members), [1.0, 1.0], cfg, spec_of("digits"), seed=0
        )
        assert torch.get_num_threads() == ambient_threads  # the simulation's setting is given back
        return blob
    finally:
        torch.set_num_threads(saved)


def quickstart_distill(**changes) -> DistillConfig:
    """The quickstart's distillation, shortened to seconds."""
    cfg = load_scenario(ROOT / "simulations" / "scenarios" / "quickstart.yaml").distill
    return cfg.model_copy(update={"samples": 384, "steps": 120, "device": "cpu", **changes})


def test_the_student_is_the_same_at_one_and_two_threads():
    cfg = quickstart_distill()
    assert cfg.threads == 1
    assert student_bytes(cfg, 1) == student_bytes(cfg, 2)


def test_unpinned_threads_change_the_student_so_the_pin_is_what_keeps_it():
    """The control: with every core (threads 0) the same seed gives other bits at another thread count."""
    cfg = quickstart_distill(threads=0)
    assert student_bytes(cfg, 1) != student_bytes(cfg, 2)


def test_a_start_model_is_where_the_student_begins():
    """distill.init: with a vanishing learning rate the student ends where it started, the given weights."""
    from node.artifacts import Expected, deserialize, sha256

    cfg = quickstart_distill(student="digits-cnn-bn", lr=1e-9, steps=2, samples=128)
    members = teachers()
    start = members[1]
    blob, _, _ = distill_student(
        [{"teacher": t} for t in members], Ensemble(members), [1.0, 1.0], cfg, spec_of("digits"), seed=0, start=start
    )
    student = deserialize(blob, sha256(blob), Expected(("digits-cnn-bn",), (1, 8, 8), 10))
    weights = {k: v for k, v in start.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.allclose(student.state_dict()[k], v, atol=1e-5) for k, v in weights.items())
    fresh, _, _ = distill_student(
        [{"teacher": t} for t in members], Ensemble(members), [1.0, 1.0], cfg, spec_of("digits"), seed=0
    )
    assert fresh != blob
