"""Job identity: stored results keep their ids when the code grows (LEGACY_DEFAULTS, added_later, labels)."""

import pytest

from kdbench.config import LEGACY_METHOD_DEFAULTS, make_config
from kdbench.methods import HParam, Method, register_method
from kdbench.methods.registry import _REGISTRY, resolved_params

# Ids of quick-preset jobs as v0.2 computed them (kdbench 217757e). Users' runs folders and stores are
# keyed by these: a change that moves them retrains every stored job and must be a deliberate one.
V02_IDS = [
    (dict(scene="SynthRoom", arch="resnet34", role="teacher", seed=0), "cfda3c6c0747"),
    (dict(scene="SynthRoom", arch="resnet18", role="student", seed=1, method="sckd", teacher_hash="abc",
          teacher_arch="resnet34", data="fp1"), "40e0154324bd"),
]


@pytest.mark.parametrize("fields, expected", V02_IDS)
def test_quick_preset_job_ids_are_those_v02_stored(fields, expected):
    method = fields.get("method", "baseline")
    cfg = make_config(preset="quick", method_params=resolved_params(method), **fields)
    assert cfg.hash() == expected


def test_preset_name_is_a_label_not_identity():
    a = make_config("SynthRoom", "resnet18", "quick")
    assert a.replace(preset="custom").hash() == a.hash()
    assert a.replace(epochs=a.epochs + 1).hash() != a.hash()


def test_a_hyperparameter_added_later_is_identity_only_away_from_its_default():
    @register_method("identity_probe")
    class Probe(Method):
        needs_teacher = False
        hparams = {"w": HParam(1.0, "float", "old weight"),
                   "extra": HParam(0.0, "float", "added later; 0 is the old behaviour", added_later=True)}

        def loss(self, student, teacher, gt, ctx):
            return {"gt": ctx.pose_loss(student, gt)}

    try:
        assert LEGACY_METHOD_DEFAULTS["identity_probe"] == {"extra": 0.0}
        old = make_config("SynthRoom", "resnet18", method="identity_probe", method_params={"w": 1.0})
        new = old.replace(method_params={"w": 1.0, "extra": 0.0})
        assert new.hash() == old.hash()
        assert new.replace(method_params={"w": 1.0, "extra": 0.5}).hash() != old.hash()
    finally:
        _REGISTRY.pop("identity_probe", None)
        LEGACY_METHOD_DEFAULTS.pop("identity_probe", None)


def test_fields_added_after_v02_are_identity_only_away_from_their_legacy_value():
    base = make_config("SynthRoom", "resnet18", "quick", seed=3)
    assert base.replace(eval_split="test", teacher_seed=None).hash() == base.hash()
    assert base.replace(eval_split="val").hash() != base.hash()
    assert base.replace(teacher_seed=0).hash() != base.hash()
    # labels are recorded, never hashed
    assert base.replace(method_label="baseline:x=1", threads=7).hash() == base.hash()
