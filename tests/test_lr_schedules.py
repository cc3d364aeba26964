"""Learning-rate schedules of the training loop against the anchors' own schedule code.

The reference values were computed by running the official functions (outside the project) with the anchors'
settings and are hard-coded here with their source:

- OCLF (amazon-science/object-centric-learning-framework @ 0a97292): ``ocl/scheduling.py:13-35``
  (``_warmup_fn``, ``_exp_decay_after_warmup_fn``) as configured by ``exponential_decay_after_optional_warmup``
  (``:289``) in ``configs/experiment/projects/bridging/dinosaur/_base_feature_recon.yaml:91-97`` (lr 4e-4,
  decay_rate 0.5, decay_steps 100000, warmup_steps 10000; 500k steps: ``coco_feat_rec_dino_small16_auto.yaml:13``).
- videosaur (martius-lab/videosaur @ 5d09311): ``videosaur/schedulers.py:56-83`` (``linear_warmup``,
  ``exp_decay_with_warmup``); ``configs/dinosaur/coco_base14_dinov2.yml:26-29`` (warm-up 10000, decay_steps
  100000, so the lr halves 90000 steps after the warm-up).
- VVO (Genera1Z/VQ-VFM-OCL @ d21cab5): ``object_centric_bench/learn/callback_sched.py:132-139``
  (``CbLinearCosine``) with ``config-vqdino/vqdino_tfd_r-coco.py:182-191`` (nlin = total // 20, vstart 0,
  vfinal = lr / 1e3); ``train.py:22-45`` indexes the schedule with the 0-based step count before each step.
  All three anchors' schedulers give optimiser step ``s`` (0-based) the value at ``s``, as featcache does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from featcache.config import load_config
from featcache.errors import ConfigError
from featcache.training.config import OCLTrainConfig, TrainSettings, VQTrainConfig
from featcache.training.loader import Batch
from featcache.training.loop import train_loop
from featcache.training.metrics_log import MetricsLog
from featcache.training.schedule import scheduled_lr, vvo_linear_cosine_lr, warmup_constant_lr, warmup_cosine_lr, warmup_exponential_lr

#: OCLF DINOSAUR, lr 4e-4: step -> lr.
OCLF_DINOSAUR_EXPONENTIAL = {0: 0.0, 1: 4e-08, 5000: 0.0002, 9999: 0.00039996000000000004, 10000: 0.0004, 10001: 0.00039999722742088684, 60000: 0.000282842712474619, 110000: 0.0002, 210000: 0.0001, 499999: 1.3397261144119721e-05}
#: videosaur linear_warmup(step, 2500) x 1e-4.
VIDEOSAUR_CONSTANT = {0: 0.0, 1: 4e-08, 1250: 5e-05, 2499: 9.996000000000001e-05, 2500: 0.0001, 2501: 0.0001, 99999: 0.0001}
#: videosaur exp_decay_with_warmup(step, 10000, 100000, 0.5) x 4e-4.
VIDEOSAUR_DINOSAUR_EXPONENTIAL = {0: 0.0, 5000: 0.0002, 10000: 0.0004, 55000: 0.000282842712474619, 100000: 0.0002, 190000: 0.0001, 499999: 9.185911322989333e-06}
#: VVO CbLinearCosine(nlin=2500, ntotal=50000, vstart=0, vbase=2e-4, vfinal=2e-7): VVO-Tfd/Mlp/Dfz and DINOSAUR on COCO.
VVO_OCL_50000 = {0: 0.0, 1: 8e-08, 1250: 0.0001, 2499: 0.00019992, 2500: 0.0002, 2501: 0.00019999999978150172, 26250: 0.00010010000000000001, 49998: 2.000008739931101e-07, 49999: 2.0000021849828308e-07}
#: VVO CbLinearCosine(nlin=5, ntotal=100, vstart=0, vbase=2e-3, vfinal=2e-6), every step.
VVO_100 = [
    0.0, 0.0004, 0.0008, 0.0012000000000000001,
    0.0016, 0.002, 0.0019994538040835853, 0.0019978158135915557,
    0.0019950878196424663, 0.0019912728052576484, 0.0019863749420993195, 0.0019803995859089345,
    0.001973353270650758, 0.0019652437013670714, 0.0019560797457528235, 0.0019458714244589342,
    0.0019346299001348616, 0.0019223674652224076, 0.0019090975285141136, 0.001894834600490943,
    0.0018795942774552828, 0.0018633932244766164, 0.0018462491571685146, 0.0018281808223168724,
    0.0018092079773805727, 0.0017893513688869976, 0.0017686327097460024, 0.00174707465550717,
    0.0017247007795862983, 0.0017015355474882161, 0.0016776042900541158, 0.0016529331757626445,
    0.0016275491821150638, 0.0016014800661357422, 0.001574754334020261, 0.001547401209964305,
    0.0015194506042074342, 0.0014909330803266777, 0.0014618798218157094, 0.0014323225979861545,
    0.0014022937292283168, 0.0013718260516693028, 0.0013409528812672014, 0.0013097079773805728,
    0.0012781255058530831, 0.0012462400016536586, 0.0012140863311130036, 0.0011816996537977779,
    0.0011491153840641304, 0.0011163691523326169, 0.0010834967661268603, 0.0010505341709185494,
    0.0010175174108215921, 0.000984482589178408, 0.0009514658290814511, 0.0009185032338731402,
    0.0008856308476673839, 0.00085288461593587, 0.0008203003462022224, 0.0007879136688869972,
    0.0007557599983463418, 0.0007238744941469176, 0.000692292022619428, 0.0006610471187327987,
    0.0006301739483306976, 0.0005997062707716838, 0.0005696774020138458, 0.0005401201781842912,
    0.0005110669196733224, 0.000482549395792566, 0.0004545987900356958, 0.0004272456659797394,
    0.00040051993386425796, 0.00037445081788493656, 0.0003490668242373555, 0.0003243957099458849,
    0.0003004644525117839, 0.00027729922041370216, 0.0002549253444928306, 0.00023336729025399773,
    0.00021264863111300294, 0.00019279202261942763, 0.000173819177683128, 0.00015575084283148564,
    0.00013860677552338368, 0.00012240572254471754, 0.0001071653995090573, 9.290247148588687e-05,
    7.963253477759264e-05, 6.73700998651385e-05, 5.612857554106601e-05, 4.592025424717672e-05,
    3.675629863292879e-05, 2.8646729349242266e-05, 2.1600414091065456e-05, 1.5625057900680402e-05,
    1.072719474235178e-05, 6.912180357533596e-06, 4.18418640844424e-06, 2.546195916414877e-06,
]


def test_exponential_equals_oclf_dinosaur() -> None:
    for step, expected in OCLF_DINOSAUR_EXPONENTIAL.items():
        assert warmup_exponential_lr(step, 4e-4, 10000, 100000) == pytest.approx(expected, rel=1e-12, abs=1e-18), step


def test_constant_and_exponential_equal_videosaur() -> None:
    for step, expected in VIDEOSAUR_CONSTANT.items():
        assert warmup_constant_lr(step, 1e-4, 2500) == pytest.approx(expected, rel=1e-12, abs=1e-18), step
    # videosaur counts decay_steps from step 0: its half-life is decay_steps - warmup_steps.
    for step, expected in VIDEOSAUR_DINOSAUR_EXPONENTIAL.items():
        assert warmup_exponential_lr(step, 4e-4, 10000, 90000) == pytest.approx(expected, rel=1e-12, abs=1e-18), step


def test_vvo_cosine_equals_vvo_linear_cosine_step_by_step() -> None:
    for step, expected in VVO_OCL_50000.items():
        assert vvo_linear_cosine_lr(step, 50000, 2e-4, 50000 // 20, 1e-3) == pytest.approx(expected, rel=1e-12, abs=1e-18), step
    ours = np.array([vvo_linear_cosine_lr(step, 100, 2e-3, 5, 1e-3) for step in range(100)])
    np.testing.assert_allclose(ours, VVO_100, rtol=1e-12, atol=1e-18)


def test_featcache_cosine_departs_from_vvo_by_one_step() -> None:
    """featcache's ``cosine`` warms up from lr/warmup at step 0 (VVO: 0) and reaches the final lr at the last step
    (VVO: one step later); at VVO's 50k steps the largest difference is lr / 2500 (0.04% of the lr)."""
    ours = np.array([warmup_cosine_lr(step, 100, 2e-3) for step in range(100)])
    difference = np.abs(ours - np.array(VVO_100))
    assert difference[0] == pytest.approx(2e-3 / 5) and difference.max() == pytest.approx(2e-3 / 5)
    assert ours[99] == pytest.approx(2e-6) and VVO_100[99] > 2.5e-6
    assert ours[5] == VVO_100[5] == pytest.approx(2e-3)  # both at the peak at step nlin
    at_50k = np.array([warmup_cosine_lr(step, 50000, 2e-4) - VVO_OCL_50000[step] for step in VVO_OCL_50000])
    assert np.abs(at_50k).max() == pytest.approx(2e-4 / 2500)


def test_scheduled_lr_dispatches_and_rejects_unknown_names() -> None:
    assert scheduled_lr("cosine", 7, 100, 1e-3, 5) == warmup_cosine_lr(7, 100, 1e-3, 0.05)
    assert scheduled_lr("vvo-cosine", 7, 100, 1e-3, 5) == vvo_linear_cosine_lr(7, 100, 1e-3, 5)
    assert scheduled_lr("constant", 99, 100, 1e-3, 5) == 1e-3
    assert scheduled_lr("exponential", 25, 100, 1e-3, 5, half_life=10) == pytest.approx(1e-3 / 4)
    assert scheduled_lr("constant", 0, 100, 1e-3, 0) == 1e-3  # no warm-up: full lr from the first step
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        scheduled_lr("linear", 0, 100, 1e-3, 5)


@pytest.mark.parametrize("config_class", [OCLTrainConfig, VQTrainConfig])
def test_config_defaults_keep_the_previous_schedule(config_class: type) -> None:
    settings = replace(config_class().train, steps=200)
    assert settings.lr_schedule == "cosine" and settings.warmup_steps is None and settings.resolved_warmup_steps == 10
    for step in range(200):
        assert settings.learning_rate_at(step) == warmup_cosine_lr(step, 200, settings.learning_rate, 0.05, 1e-3)


def test_absolute_warmup_overrides_the_fraction(tmp_path: Path) -> None:
    path = tmp_path / "oclf.yaml"
    path.write_text("train:\n  steps: 500000\n  learning_rate: 0.0004\n  lr_schedule: exponential\n  warmup_steps: 10000\n  lr_half_life: 100000\n")
    settings = load_config(OCLTrainConfig, path).train
    assert settings.resolved_warmup_steps == 10000
    for step, expected in OCLF_DINOSAUR_EXPONENTIAL.items():
        assert settings.learning_rate_at(step) == pytest.approx(expected, rel=1e-12, abs=1e-18)
    vvo = replace(OCLTrainConfig().train, lr_schedule="vvo-cosine")  # 50k steps, 5%: VVO's nlin
    for step, expected in VVO_OCL_50000.items():
        assert vvo.learning_rate_at(step) == pytest.approx(expected, rel=1e-12, abs=1e-18)
    cosine = replace(OCLTrainConfig().train, steps=100, warmup_steps=20)
    assert cosine.learning_rate_at(19) == pytest.approx(2e-4) and cosine.learning_rate_at(0) == pytest.approx(2e-4 / 20)


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr_schedule", "linear"), ("warmup_steps", -1), ("lr_half_life", 0), ("warmup_fraction", 1.5)],
)
def test_bad_schedule_settings_fail_naming_the_key(key: str, value: object) -> None:
    message = f"config key 'train.{key}'"
    with pytest.raises(ConfigError, match=message):
        load_config(OCLTrainConfig, None, [f"train.{key}={value}"])
    with pytest.raises(ConfigError, match=message):  # a section built by hand checks itself too
        TrainSettings(steps=10, batch_size=2, learning_rate=1e-3, **{key: value})  # type: ignore[arg-type]


class _Batches:
    """The loop's view of a batch stream: one constant batch, forever."""

    wait_seconds = 0.0

    def next(self) -> Batch:
        return Batch(features=torch.ones(2, 1, 1, 1), images=None, tokens=None, sample_indices=np.zeros(2, np.int64), view_indices=np.zeros(2, np.int64))

    def state_dict(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize("schedule", ["constant", "exponential", "vvo-cosine"])
def test_the_loop_applies_and_logs_the_schedule(schedule: str, tmp_path: Path) -> None:
    settings = TrainSettings(steps=12, batch_size=2, learning_rate=0.1, lr_schedule=schedule, warmup_steps=4, lr_half_life=3,  # type: ignore[arg-type]
                             log_every=1, checkpoint_every=100, amp=False)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    seen: list[float] = []

    def step_loss(batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seen.append(optimizer.param_groups[0]["lr"])
        loss = model(batch.features.reshape(-1, 1)).pow(2).mean()
        return loss, {"total": loss.detach()}

    train_loop(model=model, optimizer=optimizer, batches=_Batches(), settings=settings, device=torch.device("cpu"),  # type: ignore[arg-type]
               run_dir=tmp_path, config={}, run_info={}, step_loss=step_loss, start_step=0, end_step=12,
               description="schedule", show_progress=False)
    expected = [scheduled_lr(schedule, step, 12, 0.1, 4, 1e-3, 3) for step in range(12)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)
    assert seen[0] == 0.0  # the anchors' warm-up starts at lr 0
    logged = [row["learning_rate"] for row in MetricsLog.read(tmp_path / "metrics.jsonl")]
    assert logged == pytest.approx(expected, rel=1e-12, abs=0)
