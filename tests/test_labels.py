"""The shipped class-name lists."""

from perceiver import labels


def test_imagenet_labels():
    names = labels.imagenet_labels()
    assert len(names) == 1000
    assert names[0] == "tench, Tinca tinca"
    assert names[207] == "golden retriever"


def test_kinetics700_labels():
    names = labels.kinetics700_labels()
    assert len(names) == 700 == len(set(names))
    assert names[0] == "abseiling"
    assert list(names) == sorted(names)
