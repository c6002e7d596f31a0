"""Timing in alternation rotates the order, and the wait for a quiet CPU returns once others are idle."""

from segdino.timing import OtherLoad, time_alternating, wait_for_quiet_cpu


def test_time_alternating_interleaves_and_rotates():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_alternating(fns, warmup=1, repeats=4)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert calls[:3] == ["a", "b", "c"]  # warm-up round
    rounds = [calls[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert all(t >= 0 for v in times.values() for t in v)


def test_wait_for_quiet_cpu_stops_when_others_are_idle_enough():
    assert wait_for_quiet_cpu(0) < 0.05  # no waiting asked for
    # Any load is below 101%: one probing window, then it returns.
    waited = wait_for_quiet_cpu(30, busy_below=1.01, window=0.2)
    assert 0.2 <= waited < 5
    share = OtherLoad().start()
    sum(i * i for i in range(200_000))  # our own work is not counted as others'
    assert 0 <= share.stop() <= 1
