"""Per-seed endpoints and their paired tests: what the report's significance marks rest on.

An endpoint is one number per seed:

- ``mean`` (the default, always reported): the area under the accuracy-vs-iteration curve,
  i.e. the seed's mean test accuracy over iterations 1..N, where N is the last iteration every
  paired seed of the report completed;
- ``iteration:K``: the test accuracy after iteration K;
- ``remaining:F``: the test accuracy after the first iteration that left at most a fraction F
  of the pruned layers' neurons (the iterations used are named).

Accuracy is after retraining where the run retrains, else after pruning. For each pair of runs
and each endpoint, the paired t-test of reference - other over the seeds that pruned the same
trained model; the p-values of one endpoint over all pairs of the report are one family,
Holm-corrected. One endpoint is the study's own, fixed before its run (``mean`` unless the study
declared another): a difference is called significant only on it, where its Holm-adjusted
p < 0.05. The other endpoints' tests are descriptive: a reader who picks among several endpoints
after seeing them has made more comparisons than any family corrects for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from src.errors import UserError
from src.report.aggregate import fraction_remaining
from src.report.records import Pairing
from src.report.stats import ALPHA, POWER, PairedT, holm, paired_t
from src.results import SeedResult

REMAINING_TOLERANCE = 1e-9  # fractions are ratios of integers; 0.3 may come out as 0.30000000000000004


@dataclass(frozen=True)
class Endpoint:
    """``kind``: ``mean``, ``iteration`` or ``remaining``; ``value``: K or F (unused for ``mean``)."""

    kind: str
    value: float = 0.0

    @property
    def key(self) -> str:
        return "mean" if self.kind == "mean" else f"{self.kind}:{self.value:g}"


MEAN = Endpoint("mean")


def parse_endpoint(text: str, option: str = "--endpoint") -> Endpoint:
    """``iteration:K`` (K >= 1) or ``remaining:F`` (0 < F <= 1); UserError naming ``option`` otherwise."""
    kind, _, value = text.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if kind == "iteration" and number >= 1 and number == int(number):  # NaN fails the comparison first
        return Endpoint("iteration", int(number))
    if kind == "remaining" and 0 < number <= 1:
        return Endpoint("remaining", number)
    raise UserError(f"{option} {text}: give iteration:K (K >= 1, the accuracy after iteration K) or "
                    "remaining:F (0 < F <= 1, the accuracy at the first iteration leaving at most F of the neurons)")


def parse_fixed_endpoint(text: str, option: str = "--fixed-endpoint") -> Endpoint:
    """``mean`` or what :func:`parse_endpoint` accepts: the endpoint a study fixed before its run."""
    return MEAN if text == "mean" else parse_endpoint(text, option)


def accuracy(seed: SeedResult, number: int) -> float | None:
    """Test accuracy after iteration ``number``: after retraining where it retrained, else after pruning."""
    retrained = seed.test_acc(number, retrained=True)
    return retrained if retrained is not None else seed.test_acc(number, retrained=False)


def common_iterations(pairings: Sequence[Pairing]) -> int:
    """N of the ``mean`` endpoint: the last iteration every paired seed (with any iteration done) completed."""
    done = [len(s.iterations) for p in pairings for pair in p.pairs for s in pair if s.iterations]
    return min(done, default=0)


def seed_value(seed: SeedResult, endpoint: Endpoint, n: int) -> tuple[float, int] | None:
    """The seed's endpoint value and the iteration it was read at (for ``mean``: N), or None if it has none."""
    if endpoint.kind == "mean":
        values = [accuracy(seed, i) for i in range(1, n + 1)]
        if n == 0 or any(v is None for v in values):
            return None
        return math.fsum(values) / n, n
    if endpoint.kind == "iteration":
        number = int(endpoint.value)
    else:
        number = next((it.iteration for it in seed.iterations
                       if fraction_remaining(seed, it.iteration) <= endpoint.value + REMAINING_TOLERANCE), 0)
    value = accuracy(seed, number) if number else None
    return None if value is None else (value, number)


@dataclass(frozen=True)
class EndpointTest:
    """The paired t-test of one endpoint for one pair of runs (``test`` None below two paired seeds).

    ``iterations``: where the values were read (``mean``: [N]); ``p_holm``: Holm-adjusted over
    all pairs of the report for this endpoint; ``fixed``: the endpoint is the one fixed before the
    run, the only one whose tests can be significant.
    """

    reference: str
    other: str
    endpoint: Endpoint
    seeds: tuple[int, ...]  # the reference's seeds that entered
    iterations: tuple[int, ...]
    test: PairedT | None
    p_holm: float | None = None
    fixed: bool = True

    @property
    def significant(self) -> bool:
        return self.fixed and self.p_holm is not None and self.p_holm < ALPHA

    @property
    def name(self) -> str:
        """The endpoint in words, with the iterations it was read at."""
        its = self.iterations
        if self.endpoint.kind == "mean":
            return ("mean accuracy over iterations" if not its else
                    "mean accuracy over iteration 1" if its[0] == 1 else f"mean accuracy over iterations 1-{its[0]}")
        where = (f"iteration {its[0]}" if len(its) == 1 else
                 f"iterations {', '.join(map(str, its))} (per seed)" if its else "no iteration")
        if self.endpoint.kind == "iteration":
            return f"accuracy at {where}"
        return f"accuracy at <= {self.endpoint.value:.1%} remaining ({where})"


def endpoint_test(pairing: Pairing, endpoint: Endpoint, n: int) -> EndpointTest:
    """Reference minus other for every pair of seeds where both have the endpoint."""
    values = [(a.seed, va, vb) for a, b in pairing.pairs
              if (va := seed_value(a, endpoint, n)) is not None and (vb := seed_value(b, endpoint, n)) is not None]
    return EndpointTest(pairing.first.label, pairing.second.label, endpoint,
                        tuple(seed for seed, _, _ in values),
                        tuple(sorted({it for _, va, vb in values for it in (va[1], vb[1])})),
                        paired_t([va[0] - vb[0] for _, va, vb in values]))


def endpoint_tests(pairings: Sequence[Pairing], fixed: Endpoint,
                   descriptive: Sequence[Endpoint] = ()) -> list[EndpointTest]:
    """Every pair on the fixed endpoint, then on each descriptive one, Holm-corrected per endpoint over the pairs."""
    n = common_iterations(pairings)
    out = []
    for endpoint in dict.fromkeys((fixed, *descriptive)):
        family = [endpoint_test(p, endpoint, n) for p in pairings]
        adjusted = holm([None if t.test is None else t.test.p for t in family])
        out += [replace(t, p_holm=p, fixed=endpoint == fixed) for t, p in zip(family, adjusted)]
    return out


def _pp(value: float) -> str:
    return f"{100 * value:+.2f} pp"


def endpoint_sentence(t: EndpointTest, family_size: int) -> str:
    """What one test says, in words, with n; significance only from the Holm-adjusted p."""
    head = f"{t.reference} - {t.other}, {t.name}"
    if t.test is None:
        why = "too few for a test" if len(t.seeds) < 2 else "an accuracy is NaN: no test"
        return f"{head}: {len(t.seeds)} paired seed(s), {why}."
    s = t.test
    found = f"mean difference {_pp(s.mean)} (95% CI {_pp(s.low)} to {_pp(s.high)}) over n = {s.n} paired seeds"
    if s.p is None:
        return f"{head}: {found}, every seed's difference equal: no t-test."
    family = f"Holm-adjusted over the {family_size} pair(s) tested on this endpoint,"
    if not t.fixed:
        return (f"{head}: {found}; descriptive (not the endpoint fixed before the run): paired t p = {s.p:.3g}, "
                f"{family} p = {t.p_holm:.3g}.")
    if t.significant:
        leader = t.reference if s.mean > 0 else t.other
        return f"{head}: {found}; {leader} is better: paired t p = {s.p:.3g}, {family} p = {t.p_holm:.3g} < {ALPHA}."
    needed = ("" if s.seeds_needed is None else
              f"; about {s.seeds_needed} seeds would detect a difference this large with {POWER:.0%} power")
    return (f"{head}: {found}; no significant difference: paired t p = {s.p:.3g}, {family} p = {t.p_holm:.3g}"
            f"{needed}.")
