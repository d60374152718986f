"""riprap_position shows a bounded number of partitions: those that moved last."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from riprap.observability._exposition import render
from riprap.observability._metrics import create_registry
from riprap.observability._partitions import MAX_POSITION_SERIES
from tests.engine.test_statistics import hand_built

if TYPE_CHECKING:
    import riprap


def scraped(stats: list[riprap.RunStatistics]) -> list[tuple[dict[str, float], float]]:
    """Scrape one registry once per snapshot: the shown positions and the partition count."""
    served: list[riprap.RunStatistics] = []
    registry = create_registry("objects", lambda: served[-1])
    out = []
    for snapshot in stats:
        served.append(snapshot)
        families = {f.name: f for f in text_string_to_metric_families(render(registry).decode())}
        shown = {s.labels["partition"]: s.value for s in families["riprap_position"].samples}
        (count,) = [s.value for s in families["riprap_partitions"].samples]
        out.append((shown, count))
    return out


def objects(count: int, moved: dict[int, int] | None = None) -> dict[str, int]:
    """Positions of ``count`` S3 objects, read whole but for those in ``moved``."""
    positions = {f"s3://landing/{i:06d}.jsonl": 1 << 62 for i in range(count)}
    positions.update({f"s3://landing/{i:06d}.jsonl": at for i, at in (moved or {}).items()})
    return positions


def test_a_scrape_of_thousands_of_objects_shows_the_ones_that_moved_last() -> None:
    """5,000 partitions: 1,000 series; the three that move next are shown at the next scrape."""
    first, second, third = scraped(
        [
            hand_built(positions=objects(5_000)),
            hand_built(positions=objects(5_000, {7: 40, 8: 40, 9: 40})),
            hand_built(positions=objects(5_000, {7: 41, 8: 40, 9: 40})),
        ]
    )
    assert (MAX_POSITION_SERIES, 5_000.0) == (len(first[0]), first[1])
    assert (MAX_POSITION_SERIES, 5_000.0) == (len(second[0]), second[1])
    moved = {f"s3://landing/{i:06d}.jsonl" for i in (7, 8, 9)}
    assert (set(), moved) == (moved & set(first[0]), moved & set(second[0]))
    assert 41.0 == third[0]["s3://landing/000007.jsonl"]
    assert moved <= set(third[0])


def test_a_topics_few_partitions_are_all_shown_and_a_given_up_one_goes() -> None:
    """Under the bound every partition is a series; a partition given up leaves the scrape."""
    topic = {f"orders-{p}": 100 * p for p in range(12)}
    whole, after = scraped(
        [hand_built(positions=topic), hand_built(positions=dict(list(topic.items())[1:]))]
    )
    assert ({p: float(v) for p, v in topic.items()}, 12.0) == whole
    assert ("orders-0" in after[0], len(after[0]), after[1]) == (False, 11, 11.0)
