"""Tests for cka_prune/cka.py: CKA properties, a hand-computed example, and independent packages.

Independent implementations installed in the venv (used only here):
- ckatorch.cka_base(x, y, kernel, unbiased, threshold) computes the same estimators as ours in
  float64: biased CKA, debiased CKA (unbiased centering of the Grams, whose Frobenius inner
  product is N(N-3) times the unbiased HSIC of Song et al. 2012), and RBF with the same
  median-of-squared-distances bandwidth (for an odd N^2 count, see test_matches_ckatorch).
  ckatorch.hsic0 is the biased HSIC tr(KHLH)/(N-1)^2 and
  ckatorch.hsic1 the unbiased HSIC, both matching our `hsic`. We compare exactly (1e-12).
- torch_cka.CKA compares two models through forward hooks. Per minibatch it accumulates the
  unbiased HSIC (Song et al. formula on Grams with zeroed diagonals) in float32 and averages over
  batches (Nguyen et al. 2021). With a single batch that is our debiased linear CKA, to float32
  precision; it has no biased or RBF variant. We compare with 1e-4 tolerance.
"""

from __future__ import annotations

import ckatorch  # pinned in requirements-test.txt: a broken install fails these tests
import numpy as np
import pytest
import torch
import torch_cka

from cka_prune.cka import (center_gram, cka, feature_space_linear_cka, gram_linear, gram_rbf, hsic,
                     to_float64)


def _features(n: int = 30, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)) @ rng.standard_normal((3, d)) + 0.3 * rng.standard_normal((n, d)) + 1.5


def _linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    return cka(gram_linear(x), gram_linear(y), debiased=debiased)


def _orthogonal(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


@pytest.mark.parametrize("debiased", [False, True])
def test_self_similarity_is_one(debiased: bool) -> None:
    x = _features()
    assert _linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    assert feature_space_linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    assert cka(gram_rbf(x), gram_rbf(x), debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(debiased: bool) -> None:
    x, y = _features(seed=0), _features(d=9, seed=1)
    base = _linear_cka(x, y, debiased)
    transformed = 3.7 * (x @ _orthogonal(x.shape[1], seed=2))
    assert _linear_cka(transformed, y, debiased) == pytest.approx(base, rel=1e-10)
    rotated_y = 0.01 * y @ _orthogonal(y.shape[1], seed=3)
    assert feature_space_linear_cka(x, rotated_y, debiased) == pytest.approx(base, rel=1e-10)
    # The median-distance bandwidth makes RBF CKA invariant too.
    rbf_base = cka(gram_rbf(x), gram_rbf(y), debiased)
    assert cka(gram_rbf(transformed), gram_rbf(y), debiased) == pytest.approx(rbf_base, rel=1e-10)


def test_not_invariant_to_arbitrary_invertible_linear_maps() -> None:
    x = _features(d=6)
    a = np.diag([10.0, 1.0, 1.0, 0.1, 0.1, 0.01]) @ _orthogonal(6, seed=5)
    assert abs(np.linalg.det(a)) > 1e-8  # invertible
    assert _linear_cka(x, x @ a) < 0.99
    assert feature_space_linear_cka(x, x @ a, debiased=True) < 0.99


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(25, 8, 5), (10, 40, 60)])
def test_gram_form_equals_feature_form(debiased: bool, shape: tuple[int, int, int]) -> None:
    n, d1, d2 = shape
    x, y = _features(n, d1, seed=1), _features(n, d2, seed=2) ** 2
    assert feature_space_linear_cka(x, y, debiased) == pytest.approx(_linear_cka(x, y, debiased), rel=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_symmetric(debiased: bool) -> None:
    x, y = _features(seed=3), np.tanh(_features(d=7, seed=4))
    assert _linear_cka(x, y, debiased) == pytest.approx(_linear_cka(y, x, debiased), rel=1e-12)
    forward = cka(gram_rbf(x), gram_rbf(y, 0.5), debiased)
    assert forward == pytest.approx(cka(gram_rbf(y, 0.5), gram_rbf(x), debiased), rel=1e-12)


def test_hand_computed_example() -> None:
    # x = [0, 1, 2, 3], y = [0, 0, 1, 1]; centered: x = [-1.5, -0.5, 0.5, 1.5], y = [-.5, -.5, .5, .5].
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([[0.0], [0.0], [1.0], [1.0]])
    # Biased, one feature each: CKA = (x.y)^2 / (|x|^2 |y|^2) = 2^2 / (5 * 1) = 0.8
    # (x.y = .75 + .25 + .25 + .75 = 2, |x|^2 = 2.25 + .25 + .25 + 2.25 = 5, |y|^2 = 4 * .25 = 1).
    assert _linear_cka(x, y) == pytest.approx(0.8, abs=1e-12)
    # Debiased, N = 4: N(N-3) HSIC_u(a, b) = (a.b)^2 - N/(N-2) sum_i a_i^2 b_i^2
    #                                        + |a|^2 |b|^2 / ((N-1)(N-2))   (centered a, b)
    # (x, y): 4 - 2 * 1.25 + 5 * 1 / 6    = 7/3     (sum x_i^2 y_i^2 = .25 * 5 = 1.25)
    # (x, x): 25 - 2 * 10.25 + 25 / 6     = 26/3    (sum x_i^4 = 2 * 5.0625 + 2 * .0625 = 10.25)
    # (y, y): 1 - 2 * .25 + 1 / 6         = 2/3     (sum y_i^4 = 4 * .0625 = .25)
    # CKA = (7/3) / sqrt(26/3 * 2/3) = 7 / sqrt(52)
    assert _linear_cka(x, y, debiased=True) == pytest.approx(7 / np.sqrt(52), abs=1e-12)
    assert feature_space_linear_cka(x, y, debiased=True) == pytest.approx(7 / np.sqrt(52), abs=1e-12)


def _song_unbiased_hsic(k: np.ndarray, g: np.ndarray) -> float:
    """Song et al. 2012, eq. (5), written directly from the paper (K, L = k, g)."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), g - np.diag(np.diag(g))
    one = np.ones(n)
    return float(np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def test_hsic_matches_definitions() -> None:
    x, y = _features(12, 5, seed=6), _features(12, 4, seed=7)
    k, g = gram_linear(x), gram_rbf(y)
    h = np.eye(12) - np.ones((12, 12)) / 12
    assert hsic(k, g) == pytest.approx(np.trace(k @ h @ g @ h) / 11**2, rel=1e-12)
    assert hsic(k, g, unbiased=True) == pytest.approx(_song_unbiased_hsic(k, g), rel=1e-10)
    centered = center_gram(k)
    assert np.allclose(centered, h @ k @ h, atol=1e-10)
    assert np.allclose(centered.sum(axis=0), 0.0, atol=1e-10)


def test_unbiased_hsic_ignores_constant_columns_and_centering() -> None:
    x, y = _features(15, 6, seed=8), _features(15, 3, seed=9)
    shifted = np.hstack([x - 4.0, np.full((15, 1), 2.5)])
    for unbiased in (False, True):
        assert hsic(gram_linear(shifted), gram_linear(y), unbiased) == pytest.approx(
            hsic(gram_linear(x), gram_linear(y), unbiased), rel=1e-10)


def test_accepts_torch_tensors() -> None:
    x, y = _features(seed=10), _features(d=5, seed=11)
    tx, ty = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    assert to_float64(tx).dtype == np.float64
    assert cka(gram_linear(tx), gram_linear(ty)) == pytest.approx(_linear_cka(x, y), rel=1e-5)
    assert feature_space_linear_cka(tx, ty, debiased=True) == pytest.approx(
        feature_space_linear_cka(x, y, debiased=True), rel=1e-5)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same number of examples"):
        feature_space_linear_cka(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="Gram shapes differ"):
        cka(np.eye(4), np.eye(5))
    with pytest.raises(ValueError, match="square"):
        cka(np.ones((4, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="N >= 4"):
        center_gram(np.eye(3), unbiased=True)
    with pytest.raises(ValueError, match="every row is identical"):
        gram_rbf(np.ones((6, 2)))


def test_rbf_bandwidth_over_the_nonzero_distances_when_most_rows_are_identical() -> None:
    # 7 identical rows of 10: 49 + 3 of the 100 pairs at distance 0, so the median over all pairs is 0.
    x = np.vstack([np.zeros((7, 2)), [[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]])
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
    assert np.median(sq) == 0.0
    sigma2 = np.median(sq[sq > 0]) * 0.5**2
    np.testing.assert_allclose(gram_rbf(x, 0.5), np.exp(-sq / (2 * sigma2)), rtol=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_matches_ckatorch(kernel: str, debiased: bool) -> None:
    # N odd so that N^2 is odd: torch.median returns the lower middle value of an even count
    # where np.median (ours, as Kornblith et al.) averages the two, which changes the RBF bandwidth.
    x, y = _features(21, 7, seed=12), np.maximum(_features(21, 11, seed=13) - 1.5, 0.0)
    gram = gram_linear if kernel == "linear" else gram_rbf
    ours = cka(gram(x), gram(y), debiased=debiased)
    theirs = ckatorch.cka_base(torch.from_numpy(x), torch.from_numpy(y), kernel=kernel, unbiased=debiased)
    assert ours == pytest.approx(float(theirs), rel=1e-12)
    if kernel == "linear":
        assert feature_space_linear_cka(x, y, debiased) == pytest.approx(float(theirs), rel=1e-10)


def test_hsic_matches_ckatorch() -> None:
    k, g = gram_linear(_features(16, 5, seed=14)), gram_rbf(_features(16, 3, seed=15))
    tk, tg = torch.from_numpy(k), torch.from_numpy(g)
    assert hsic(k, g) == pytest.approx(float(ckatorch.hsic0(tk, tg)), rel=1e-12)
    assert hsic(k, g, unbiased=True) == pytest.approx(float(ckatorch.hsic1(tk[None], tg[None])[0]), rel=1e-10)


class _Columns(torch.nn.Module):
    """Returns a slice of the input's columns, so a hooked layer outputs given features."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop
        self.out = torch.nn.Identity()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(inputs[:, self.start:self.stop])


def test_debiased_matches_torch_cka_single_batch() -> None:
    x, y = _features(24, 6, seed=16), _features(24, 4, seed=17) ** 2
    data = torch.utils.data.TensorDataset(torch.from_numpy(np.hstack([x, y])).float())
    loader = torch.utils.data.DataLoader(data, batch_size=len(data))
    with pytest.warns(UserWarning):  # torch_cka warns that both loaders are the same
        comparer = torch_cka.CKA(_Columns(0, 6), _Columns(6, 10), model1_name="x", model2_name="y",
                                 model1_layers=["out"], model2_layers=["out"])
        comparer.compare(loader)
    theirs = float(comparer.export()["CKA"][0, 0])
    assert _linear_cka(x, y, debiased=True) == pytest.approx(theirs, rel=1e-4)
    assert abs(_linear_cka(x, y, debiased=False) - theirs) > 1e-3  # the biased estimator differs
