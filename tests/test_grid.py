"""ctxprobe.grid: length and depth specs."""

import pytest

from ctxprobe.errors import UserError
from ctxprobe.grid import parse_depths, parse_lengths


@pytest.mark.parametrize("spec, expected", [
    ("1k,2k,4k", [1024, 2048, 4096]),
    ("1000,3000", [1000, 3000]),
    ("4096", [4096]),
    ("1M", [1 << 20]),
    ("1.5k", [1536]),
    ("1k..8k:x2", [1024, 2048, 4096, 8192]),
    ("1k..1M:x2", [1024 << i for i in range(11)]),
    ("1k..10k:x2", [1024, 2048, 4096, 8192]),
    ("1000..2000:x1.5", [1000, 1500]),
    (" 2k , 2k ,1k", [2048, 1024]),
])
def test_lengths(spec, expected):
    assert parse_lengths(spec) == expected


@pytest.mark.parametrize("spec, expected", [
    ("0,50,100", [0, 50, 100]),
    ("0..100:11", list(range(0, 101, 10))),
    ("0..100:5", [0, 25, 50, 75, 100]),
    ("12.5..87.5:3", [12.5, 50, 87.5]),
    ("30..30:1", [30]),
    ("33.3", [33.3]),
])
def test_depths(spec, expected):
    assert parse_depths(spec) == expected


@pytest.mark.parametrize("spec", ["", "1q", "k", "0", "-1k", "1k..", "1k..8k", "1k..8k:x1",
                                  "8k..1k:x2", "1k..8k:2", "1.0001k", "1,,2"])
def test_bad_lengths(spec):
    with pytest.raises(UserError, match="1k..1M:x2|whole number|start <= end"):
        parse_lengths(spec)


@pytest.mark.parametrize("spec", ["", "101", "-5", "a", "0..100", "0..100:0", "100..0:3",
                                  "0..101:3", "50,x"])
def test_bad_depths(spec):
    with pytest.raises(UserError, match="0..100:11"):
        parse_depths(spec)


def test_size_suffixes_count_like_ruler():
    from ctxprobe.units import parse_tokens

    assert parse_tokens("1k") == 1024 and parse_tokens("2m") == 2 * 1048576 and parse_tokens("7") == 7
    assert parse_lengths("1.5k,2M") == [1536, 2 << 20]
