from pipeline.cli.formatting import count, distinct_digits


def test_distinct_digits_adds_digits_only_where_two_values_would_print_alike():
    # The reported summaries: e_w and e_l both printed "1.204", base and mapo both "-0.024".
    assert distinct_digits([1.20411, 1.20413, 1.0]) == ["1.20411", "1.20413", "1"]
    assert distinct_digits([-0.02412, -0.02415]) == ["-0.02412", "-0.02415"]
    assert distinct_digits([-0.024123, -0.024151], 2) == ["-0.0241", "-0.0242"]
    assert distinct_digits([0.5, 0.25, 0.5]) == ["0.5", "0.25", "0.5"]  # equal values may print alike
    assert distinct_digits([float("nan"), float("nan"), 1.0]) == ["nan", "nan", "1"]
    a = 0.1 + 0.2
    assert distinct_digits([a, 0.3]) == [repr(a), "0.3"]  # differ only in the 17th digit
    assert distinct_digits([]) == []


def test_count_is_singular_only_for_one():
    assert [count(n, "shard") for n in (0, 1, 2)] == ["0 shards", "1 shard", "2 shards"]
    assert count(1, "pair") == "1 pair" and count(3, "entry", "entries") == "3 entries"
