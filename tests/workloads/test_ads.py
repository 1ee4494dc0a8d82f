"""The stream workload: YSB-style ad events and the views-per-campaign-per-window query."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from tidal.workloads.ads import AdSpec, campaign_table, count_views, generate_events

SPEC = AdSpec(campaigns=7, ads_per_campaign=3, events_per_s=1000, window_ms=250, seed=5)


def test_events_are_evenly_spaced_in_their_interval_and_drawn_from_the_seed():
    events = generate_events(SPEC, 100, 350)
    assert [e[2] for e in events] == list(range(100, 350))  # 1000/s: one per millisecond
    assert generate_events(SPEC, 100, 350) == events
    assert generate_events(SPEC, 350, 600) != generate_events(SPEC, 100, 350)
    assert {e[1] for e in events} <= {"view", "click", "purchase"}
    assert all(0 <= e[0] < SPEC.ads for e in events)
    # Cutting at other points gives the same event times, none twice, none missed.
    pieces = [generate_events(SPEC, a, b) for a, b in ((0, 33), (33, 34), (34, 500))]
    assert [e[2] for piece in pieces for e in piece] == list(range(500))


def test_the_campaign_table_gives_each_campaign_its_ads():
    table = campaign_table(SPEC.campaigns, SPEC.ads_per_campaign, SPEC.seed)
    assert len(table) == SPEC.ads
    assert Counter(table) == {c: SPEC.ads_per_campaign for c in range(SPEC.campaigns)}


def direct_counts(events, spec):
    """The query written out by hand: views per (campaign, window start)."""
    table = campaign_table(spec.campaigns, spec.ads_per_campaign, spec.seed)
    counts = {}
    for ad_id, kind, time_ms, _page in events:
        if kind != "view":
            continue
        key = (table[ad_id], (time_ms // spec.window_ms) * spec.window_ms)
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_count_views_equals_a_direct_computation_over_micro_batches():
    batches = [generate_events(SPEC, start, start + 100) for start in range(0, 1000, 100)]
    total = Counter()
    for events in batches:
        total.update(count_views(events, asdict(SPEC)))
    assert total == direct_counts([e for events in batches for e in events], SPEC)
    assert {window for _campaign, window in total} == {0, 250, 500, 750}
