"""Unit tests for strata.synthetic: determinism, shape, balance and learnability of the generated set."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from strata.data import Example
from strata.synthetic import LABELS, corpus, generate, generate_splits


def test_labels() -> None:
    assert LABELS == ["sports", "technology", "cooking", "travel"]


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_generate_is_deterministic_per_seed(seed: int) -> None:
    assert generate(200, seed) == generate(200, seed)
    assert generate(200, seed) != generate(200, seed + 1)


@pytest.mark.parametrize("n", [0, 1, 3, 17])
def test_generate_sizes(n: int) -> None:
    examples = generate(n, 0)
    assert len(examples) == n
    assert all(isinstance(e, Example) for e in examples)


def test_generate_rejects_negative() -> None:
    with pytest.raises(ValueError, match="num_examples"):
        generate(-1, 0)


def test_shape_of_examples() -> None:
    examples = generate(2000, 3)
    for ex in examples:
        words = ex.text.split()
        assert 8 <= len(words) <= 20, ex.text
        assert ex.text == ex.text.strip()
        assert ex.text.isascii() and ex.text.islower()
        assert 0 <= ex.label < len(LABELS)
    assert len({ex.text for ex in examples}) > 0.98 * len(examples)  # mostly distinct sentences


def test_labels_roughly_balanced() -> None:
    counts = Counter(ex.label for ex in generate(4000, 11))
    assert set(counts) == set(range(len(LABELS)))
    for label in range(len(LABELS)):
        assert 0.22 < counts[label] / 4000 < 0.28


def test_generate_splits_disjoint_seeds() -> None:
    train, test = generate_splits(300, 100, 5)
    assert len(train) == 300 and len(test) == 100
    assert (train, test) == generate_splits(300, 100, 5)
    assert train[:100] != test
    assert train == generate(300, 10)  # documented derivation: 2*seed and 2*seed+1
    assert test == generate(100, 11)
    assert len({ex.text for ex in train} & {ex.text for ex in test}) <= 2


def test_corpus_yields_texts() -> None:
    examples = generate(10, 0)
    it = corpus(examples)
    assert iter(it) is it
    assert list(it) == [ex.text for ex in examples]


def _naive_bayes_accuracy(train: list[Example], test: list[Example]) -> float:
    """Multinomial naive Bayes on bag-of-words with add-one smoothing."""
    vocab: dict[str, int] = {}
    for ex in train:
        for word in ex.text.split():
            vocab.setdefault(word, len(vocab))
    k = len(LABELS)
    counts = np.ones((k, len(vocab)))
    prior = np.zeros(k)
    for ex in train:
        prior[ex.label] += 1
        for word in ex.text.split():
            counts[ex.label, vocab[word]] += 1
    log_lik = np.log(counts / counts.sum(axis=1, keepdims=True))
    log_prior = np.log(prior / prior.sum())
    correct = 0
    for ex in test:
        ids = [vocab[w] for w in ex.text.split() if w in vocab]
        scores = log_prior + log_lik[:, ids].sum(axis=1)
        correct += int(np.argmax(scores)) == ex.label
    return correct / len(test)


@pytest.mark.parametrize("seed", [0, 1])
def test_learnable_but_not_trivial(seed: int) -> None:
    train, test = generate_splits(2000, 600, seed)
    accuracy = _naive_bayes_accuracy(train, test)
    assert 0.8 <= accuracy <= 0.995, accuracy


def test_label_noise_present() -> None:
    # Some examples must disagree with a near-perfect classifier trained on lots of data.
    train, test = generate_splits(4000, 1000, 2)
    assert _naive_bayes_accuracy(train, test) < 0.99
