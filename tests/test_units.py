"""ctxprobe.units: the one place sizes are read from the user and bytes and counts are printed."""

import pytest

from ctxprobe.errors import UserError
from ctxprobe.units import fmt_bytes, human_count, parse_bytes, parse_tokens


def test_parse_sizes():
    assert parse_bytes("80GiB") == parse_bytes("80G") == 80 << 30
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("512MiB") == 512 << 20 and parse_bytes(1234) == 1234
    assert parse_tokens("128k") == 131072 and parse_tokens("1M") == 1 << 20 and parse_tokens(77) == 77
    with pytest.raises(UserError, match="--host-memory"):
        parse_bytes("lots", "--host-memory")
    with pytest.raises(UserError, match="--chunk"):
        parse_tokens("many", "--chunk")
    with pytest.raises(UserError, match="at least one token"):
        parse_tokens(0)


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                    ((1 << 20) - 1, "1024.0 KiB"), (5 << 30, "5.0 GiB"),
                                    (3 << 40, "3.0 TiB"), (5000 << 40, "5000.0 TiB")])
def test_bytes_print_in_binary_units_with_one_decimal(n, text):
    assert fmt_bytes(n) == text


def test_counts_print_with_two_decimals():
    assert [human_count(n) for n in (999, 17_000, 8_030_261_248, 2_500_000)] == ["999", "17.00K", "8.03B", "2.50M"]


def test_one_reader_of_token_counts_for_flags_and_grid_lengths():
    from ctxprobe.grid import parse_lengths

    assert parse_tokens("1.5k") == 1536 and parse_tokens(" 4K ") == 4096 and parse_tokens("2m") == 2 << 20
    with pytest.raises(UserError, match=r"^--chunk: bad length '1kk': expected a number of tokens like 4096"):
        parse_tokens("1kk", "--chunk")
    with pytest.raises(UserError, match=r"^bad length '0.3k': must be a whole number of tokens >= 1"):
        parse_tokens("0.3k", None)
    with pytest.raises(UserError, match=r"^bad length '1kk': expected a list like"):  # --lengths alike
        parse_lengths("1k,1kk")
    assert parse_lengths("1.5k..3k:x2") == [parse_tokens("1.5k"), parse_tokens("3k")]
