"""The classifier-free guidance helpers shared by DDPM, EDM and VDPM."""

from __future__ import annotations

import torch

from genbench.generators.guidance import drop_labels, guide, net_labels


def test_guide_is_ho_salimans_and_edm_scale_is_w_plus_one():
    cond, uncond = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(guide(cond, uncond, 0.0), cond)
    torch.testing.assert_close(guide(cond, uncond, -1.0), uncond)
    s = 2.5  # EDM: D_null + s (D_cond - D_null)
    torch.testing.assert_close(guide(cond, uncond, s - 1.0), uncond + s * (cond - uncond))


def test_drop_labels_rate_and_no_draw_at_zero():
    torch.manual_seed(0)
    dropped = drop_labels(torch.zeros(100_000, dtype=torch.long), 0.1, 10)
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs((dropped == 10).float().mean().item() - 0.1) < 0.005
    state = torch.get_rng_state()
    labels = torch.arange(5)
    assert drop_labels(labels, 0.0, 10) is labels
    assert torch.equal(torch.get_rng_state(), state)  # the training RNG stream is untouched


def test_net_labels_null_class_without_labels():
    cpu = torch.device("cpu")
    assert net_labels(None, 3, 10, cpu).tolist() == [10, 10, 10]
    out = net_labels(torch.tensor([1, 2], dtype=torch.int32), 2, 10, cpu)
    assert out.dtype == torch.long and out.tolist() == [1, 2]
