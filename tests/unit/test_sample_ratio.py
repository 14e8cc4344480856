from coalmine.analyzers.sample_ratio import sample_ratio_check


def test_a_split_as_announced_is_no_mismatch():
    check = sample_ratio_check(5_020, 4_980, 0.5, 0.001)
    assert check["mismatch"] is False
    assert abs(check["observed_share"] - 0.502) < 1e-9


def test_a_canary_starved_of_traffic_is_a_mismatch():
    check = sample_ratio_check(4_000, 6_000, 0.5, 0.001)
    assert check["mismatch"] is True
    assert check["p_value"] < 1e-10


def test_no_events_or_no_expected_share_checks_nothing():
    assert sample_ratio_check(0, 0, 0.5, 0.001)["mismatch"] is False
    assert sample_ratio_check(10, 10, 1.0, 0.001)["mismatch"] is False
