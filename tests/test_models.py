"""UIF and the backbones: shapes, masking, the broadcast of one user over N candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.ctr.dcnv2 import DCNv2
from encoders.ctr.din import DIN
from encoders.ctr.uif import UIF

M, D, L, V = 3, 6, 5, 12


def inputs(u: int, n: int, count: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, V, (u, L), generator=g)
    hist[0, :2] = 0  # padding
    return (torch.randint(0, 4, (u,), generator=g), torch.randn(u, M, D, generator=g),
            torch.randn(u, M, D, generator=g), torch.tensor(count), hist,
            torch.randint(1, V, (n,), generator=g))


def make(cls, liber):
    torch.manual_seed(0)
    return cls(n_users=4, item_text=torch.randn(V, 7), vector_dim=D, dim=8, liber=liber).eval()


def test_uif_masks_empty_slots_and_gives_zero_without_partitions():
    torch.manual_seed(0)
    uif = UIF(D, 8).eval()
    summary, shift = torch.randn(2, M, D), torch.randn(2, M, D)
    q = torch.randn(2, 8)
    keys, values, mask = uif.memory(summary, shift, torch.tensor([0, 1]))
    assert mask.tolist() == [[0, 0, 0], [1, 0, 0]]
    out = uif(q, keys, values, mask)
    assert torch.equal(out[0], torch.zeros(8))  # no partitions: exactly zero, not NaN
    assert torch.allclose(out[1], values[1, 0], atol=1e-6)  # one slot: all the weight on it
    # Changing what sits in masked slots changes nothing.
    summary2 = summary.clone()
    summary2[1, 1:] = 99.0
    k2, v2, m2 = uif.memory(summary2, shift, torch.tensor([0, 1]))
    assert torch.equal(uif(q, k2, v2, m2), out)


@pytest.mark.parametrize("cls", [DIN, DCNv2])
@pytest.mark.parametrize("liber", ["none", "both", "summary"])
def test_one_user_broadcast_equals_repeated_rows(cls, liber):
    model = make(cls, liber)
    user, summ, shift, count, hist, items = inputs(1, 6, [2])
    with torch.no_grad():
        once = model(user, summ, shift, count, hist, items)  # U = 1, N = 6
        rep = model(user.repeat(6), summ.repeat(6, 1, 1), shift.repeat(6, 1, 1), count.repeat(6),
                    hist.repeat(6, 1), items)  # U = N = 6
    assert once.shape == (6,)
    assert torch.allclose(once, rep, atol=1e-6)
    assert torch.isfinite(once).all()


@pytest.mark.parametrize("cls", [DIN, DCNv2])
def test_liber_inputs_matter_only_when_liber_is_on(cls):
    user, summ, shift, count, hist, items = inputs(1, 4, [3])
    for liber, should_change in (("none", False), ("summary", True), ("both", True)):
        model = make(cls, liber)
        with torch.no_grad():
            a = model(user, summ, shift, count, hist, items)
            b = model(user, summ * 0 + 1, shift, count, hist, items)
            c = model(user, summ, shift, torch.tensor([0]), hist, items)
        assert (not torch.allclose(a, b)) == should_change
        assert (not torch.allclose(a, c)) == should_change
    # The shift vectors are read by 'both' only.
    for liber, should_change in (("summary", False), ("both", True)):
        model = make(cls, liber)
        with torch.no_grad():
            a = model(user, summ, shift, count, hist, items)
            b = model(user, summ, shift + 1, count, hist, items)
        assert (not torch.allclose(a, b)) == should_change


def test_gauc_skips_one_class_users_and_weights_by_samples():
    from encoders.ctr.metrics import metrics

    y = np.array([1, 0, 1, 0, 1, 1, 0, 1], np.float32)
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.6, 0.3, 0.7])
    users = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    m = metrics(y, p, users)
    # a: AUC 1 (2 samples), b: AUC 0 (2), c: one class (skipped), d: AUC 1 (2) → (2 + 0 + 2) / 6
    assert m["gauc"] == pytest.approx(4 / 6)
    assert m["gauc_users_skipped"] == 1 and m["samples"] == 8
