"""Conversion plans: the held-out split, acceptance on held-out inputs, the Plan record, progress, errors."""

import pytest
import torch

import glocal
from glocal.convert import (
    Hybrid,
    Local,
    Plan,
    held_out_split,
    mean_pooled,
    plan_from_report,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert():
    from glocal.analysis import capture

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64,
                                     initializer_range=0.5)  # weights large enough that attention matters
    model = transformers.BertModel(config).eval()
    gen = torch.Generator().manual_seed(3)
    inputs = {"input_ids": torch.randint(0, 50, (8, 40), generator=gen),
              "attention_mask": torch.ones(8, 40, dtype=torch.long)}
    inputs["attention_mask"][5, 30:] = 0
    with capture(model) as rec, torch.no_grad():
        model(**inputs)
    return model, inputs, rec.report(window=9)


def cosine_on(model, plan, inputs):
    ref = mean_pooled(model, inputs)
    glocal.convert(model, plan)
    try:
        cos = torch.nn.functional.cosine_similarity(mean_pooled(model, inputs).double(), ref.double(), dim=-1)
    finally:
        glocal.convert.restore(model)
    return float(cos.mean()), float(cos.min())


def test_held_out_split_rows():
    ids = torch.arange(10)[:, None]
    fit, held = held_out_split({"input_ids": ids, "token_type_ids": ids * 0, "flag": True})
    assert fit["input_ids"].flatten().tolist() == [0, 1, 2, 4, 5, 6, 8, 9]
    assert held["input_ids"].flatten().tolist() == [3, 7]
    assert fit["flag"] is True and held["token_type_ids"].shape == (2, 1)
    fit, held = held_out_split({"input_ids": torch.arange(3)[:, None]})
    assert fit["input_ids"].flatten().tolist() == [0, 1] and held["input_ids"].flatten().tolist() == [2]


def test_model_free_plan_is_a_report_plan(bert):
    _, _, report = bert
    plan = plan_from_report(report, min_locality=0.0, max_heads=3)
    assert isinstance(plan, Plan) and plan.method == "report" and len(plan) == 3
    assert plan.validation_cosine is None and all(r == Local(9, (0, -1)) for r in plan.values())
    assert plan.summary().startswith("3 heads converted (report): 3 x Local(9)")


def test_default_validation_is_reported_and_met(bert):
    model, inputs, report = bert
    plan = plan_from_report(report, model, inputs, windows=(5, 9), min_cosine=0.97, margin=0.01, progress=False)
    assert plan.method == "measured" and plan.trials > 0 and plan.seconds > 0
    fit, held = held_out_split(inputs)
    mean, low = cosine_on(model, plan, held)
    assert plan.validation_cosine == pytest.approx(mean, abs=1e-9)
    assert plan.validation_min == pytest.approx(low, abs=1e-9)
    assert plan.fit_cosine == pytest.approx(cosine_on(model, plan, fit)[0], abs=1e-9)
    assert plan.validation_cosine >= 0.98 - 1e-12
    assert all(isinstance(r, (Local, Hybrid)) for r in plan.values())
    assert "held out" in plan.summary()


def test_explicit_validation_decides_acceptance(bert):
    """A plan is accepted on the held-out inputs, not on the fitted ones: held-out text the plan
    cannot keep (random tokens at other lengths) shrinks the plan until that figure holds."""
    model, inputs, report = bert
    gen = torch.Generator().manual_seed(11)
    other = {"input_ids": torch.randint(0, 50, (3, 56), generator=gen),
             "attention_mask": torch.ones(3, 56, dtype=torch.long)}
    fitted_only = plan_from_report(report, model, inputs, validation=inputs, windows=(5,), hybrid=None,
                                   min_cosine=0.955, margin=0.0, progress=False)
    plan = plan_from_report(report, model, inputs, validation=other, windows=(5,), hybrid=None,
                            min_cosine=0.955, margin=0.0, progress=False)
    mean, _ = cosine_on(model, plan, other)
    assert plan.validation_cosine == pytest.approx(mean, abs=1e-9)
    assert mean >= 0.955 - 1e-12
    # Both fit the same greedy plan on `inputs`; only the held-out figure differs, so the accepted plan is a
    # part of the other, and strictly smaller where the other fails the held-out floor.
    assert set(plan) <= set(fitted_only)
    assert cosine_on(model, fitted_only, other)[0] < 0.955
    assert len(plan) < len(fitted_only)


def test_progress_callable_sees_every_trial(bert):
    model, inputs, report = bert
    seen = []
    plan = plan_from_report(report, model, inputs, windows=(5, 9), min_cosine=0.97, margin=0.01,
                            progress=lambda done, total: seen.append((done, total)))
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and dones[-1] == plan.trials
    assert all(d <= t for d, t in seen)


def test_error_one_calibration_row(bert):
    model, inputs, report = bert
    one = {k: v[:1] for k, v in inputs.items()}
    with pytest.raises(ValueError, match=r"needs at least 2 sequences to split .* got 1\. Pass more calibration"):
        plan_from_report(report, model, one, progress=False)


def test_error_cosine_floor_out_of_range(bert):
    model, inputs, report = bert
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\) with margin >= 0; got min_cosine=0.999, margin=0.005"):
        plan_from_report(report, model, inputs, min_cosine=0.999, progress=False)
