"""DCSD: each constraint switchable, zero when the student equals the projected teacher."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from vsdmot.models.dcsd import DcsdConfig, TeacherProjection, alignment_loss, dcsd_loss, relational_loss  # noqa: E402


@pytest.fixture()
def feats():
    torch.manual_seed(0)
    t = torch.randn(64, 40)  # (N, Dt) teacher features
    return t, TeacherProjection(40, 8).fit(t)


@pytest.mark.parametrize("cfg, parts", [
    (DcsdConfig(), {"align", "rel"}), (DcsdConfig(relational=False), {"align"}), (DcsdConfig(alignment=False), {"rel"}),
])
def test_constraints_switch_and_vanish_when_student_equals_teacher(feats, cfg, parts):
    t, proj = feats
    tp = proj(t[:16])
    loss, got = dcsd_loss(tp.clone(), tp, cfg)
    assert set(got) == parts and float(loss) == pytest.approx(0.0, abs=1e-6)
    s = F.normalize(torch.randn(16, 8), dim=-1)
    loss2, got2 = dcsd_loss(s, tp, cfg)
    assert float(loss2) > 0.01 and set(got2) == parts


def test_relational_is_invariant_to_rotation_alignment_is_not(feats):
    t, proj = feats
    tp = proj(t[:16])
    rot = torch.linalg.qr(torch.randn(8, 8))[0]  # an orthogonal map keeps every cosine
    assert float(relational_loss(tp @ rot, tp)) == pytest.approx(0.0, abs=1e-5)
    assert float(alignment_loss(tp @ rot, tp)) > 0.1


def test_projection_is_centred_principal_subspace(feats):
    t, proj = feats
    assert torch.allclose(proj.basis.T @ proj.basis, torch.eye(8), atol=1e-4)
    assert torch.allclose(proj.mean, t.mean(0))


@pytest.mark.parametrize("s, tp, cfg, match", [
    ((4, 8), (4, 6), DcsdConfig(), "differ"),
    ((4, 8), (4, 8), DcsdConfig(alignment=False, relational=False), "at least one"),
])
def test_bad_input_raises(s, tp, cfg, match):
    with pytest.raises(ValueError, match=match):
        dcsd_loss(torch.randn(*s), torch.randn(*tp), cfg)


def test_projection_fit_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected"):
        TeacherProjection(10, 4).fit(torch.randn(5, 9))
