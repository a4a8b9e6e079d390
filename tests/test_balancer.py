"""Tests for edgenode.routes.Balancer: priority groups with smooth weighted round robin."""

from __future__ import annotations

import collections

from edgenode.routes import Balancer, OriginRoute


def route(address: str) -> OriginRoute:
    return OriginRoute(
        address=address,
        port=443,
        tls=True,
        sni="origin.example",
        verify_name="origin.example",
        verify=True,
        trust_id="system",
        min_tls="1.2",
    )


A, B, C, D = (route(f"192.0.2.{i}") for i in range(1, 5))


def firsts(balancer: Balancer, n: int) -> list[OriginRoute]:
    return [balancer.plan()[0] for _ in range(n)]


def test_plan_lists_every_origin_once() -> None:
    """Each plan names every origin exactly once."""
    balancer = Balancer([(1, 5, A), (1, 1, B), (2, 1, C), (2, 3, D)])
    for _ in range(10):
        plan = balancer.plan()
        assert sorted(r.address for r in plan) == sorted(r.address for r in (A, B, C, D))


def test_lower_priority_number_is_tried_first() -> None:
    """Every origin of priority 1 comes before any backup of priority 2."""
    balancer = Balancer([(2, 100, C), (1, 1, A), (2, 1, D), (1, 1, B)])
    for _ in range(10):
        plan = balancer.plan()
        assert set(plan[:2]) == {A, B}
        assert set(plan[2:]) == {C, D}


def test_weights_share_first_choices_smoothly() -> None:
    """Weights 5:1:1 give nginx's smooth sequence a a b a c a a, and exact shares per cycle."""
    balancer = Balancer([(1, 5, A), (1, 1, B), (1, 1, C)])
    assert firsts(balancer, 7) == [A, A, B, A, C, A, A]
    counts = collections.Counter(firsts(balancer, 700))
    assert counts == {A: 500, B: 100, C: 100}


def test_equal_weights_alternate() -> None:
    """Equal weights take turns as first choice, the other one next."""
    balancer = Balancer([(1, 1, A), (1, 1, B)])
    plans = [balancer.plan() for _ in range(4)]
    assert [p[0] for p in plans] == [A, B, A, B]
    assert all(p[1] != p[0] for p in plans)


def test_single_origin_is_always_the_plan() -> None:
    """One origin: the plan is that origin."""
    balancer = Balancer([(1, 3, A)])
    assert [balancer.plan() for _ in range(3)] == [[A]] * 3


def test_backup_group_is_balanced_too() -> None:
    """Within the backup priority, weights also decide who comes first among the backups."""
    balancer = Balancer([(1, 1, A), (2, 3, C), (2, 1, D)])
    thirds = [balancer.plan()[1] for _ in range(8)]
    assert collections.Counter(thirds) == {C: 6, D: 2}
