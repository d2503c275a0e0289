import pytest

from sparsecc.core.ir import MaskSpec, SparsityPattern


@pytest.mark.parametrize(
    "text,kind,fixed",
    [("unstructured", "unstructured", None), ("2:4", "nm", 0.5), ("1:8", "nm", 0.875),
     ("8x8", "block", None), ("block 4x16", "block", None), ("channel", "channel", None)],
)
def test_parse_and_roundtrip(text, kind, fixed):
    p = SparsityPattern.parse(text)
    assert p.kind == kind and p.fixed_sparsity == fixed
    assert SparsityPattern.parse(str(p)) == p


@pytest.mark.parametrize("text,msg", [("4:4", "0 < N < M"), ("5:4", "0 < N < M"), ("0:4", "0 < N < M"),
                                      ("0x4", "positive"), ("diagonal", "unknown pattern")])
def test_bad_patterns(text, msg):
    with pytest.raises(ValueError, match=msg):
        SparsityPattern.parse(text)


def test_pattern_fields_are_checked():
    with pytest.raises(ValueError):
        SparsityPattern("unstructured", n=2, m=4)
    with pytest.raises(ValueError):
        SparsityPattern("nm", n=2)


def test_maskspec_dict_roundtrip():
    s = MaskSpec("a.weight", SparsityPattern.blocks(4, 4), 0.75, achieved=0.75, layer="a")
    assert MaskSpec.from_dict(s.to_dict()) == s
