import torch

from analysis.profiling import count_gflops, count_parameters, time_call


def test_flops_of_a_linear_layer():
    layer = torch.nn.Linear(100, 50, bias=False)
    x = torch.randn(4, 100)
    assert count_gflops(lambda: layer(x)) * 1e9 == 2 * 4 * 100 * 50
    assert count_parameters(layer) == 5000


def test_time_call_returns_the_result_and_a_positive_latency():
    calls = []
    result, timing = time_call(lambda: calls.append(1) or len(calls), repeats=3, warmup=1)
    assert len(calls) == 4 and result == 4 and timing.runs == 3
    assert timing.median_ms > 0 and timing.iqr_ms >= 0


def test_time_call_stops_at_its_budget_but_times_at_least_once():
    import time

    _, timing = time_call(lambda: time.sleep(0.03), repeats=50, warmup=0, budget_s=0.05)
    assert 1 <= timing.runs <= 3 and timing.median_ms >= 25


def test_time_call_repeats_within_its_budget_and_stops_beyond_it():
    import time as clock

    from analysis.profiling import time_call

    _, quick = time_call(lambda: clock.sleep(0.002), repeats=5, budget_s=1.0)
    assert quick.runs == 5 and 1.5 < quick.median_ms < 50
    _, slow = time_call(lambda: clock.sleep(0.06), repeats=5, budget_s=0.1)
    assert slow.runs == 2  # 60 ms, then 120 ms spent: over the 100 ms budget
