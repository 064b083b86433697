"""The SFT loop's example order: fixed-shape steps that read every example once per epoch."""
from hypothesis import given, settings, strategies as st

from zppo_jax.train import sft


@given(st.integers(1, 60), st.integers(1, 7), st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_takes_read_each_example_once_per_epoch_and_respect_the_predicate(n, cap, seed):
  order = sft._ExampleOrder(n, seed)
  seen = []
  while len(seen) < n:
    picked = order.take(lambda p: len(p) <= cap)
    assert 1 <= len(picked) <= cap
    seen += picked
  # The epoch's order is a permutation; a take that crosses into the next epoch may add more.
  assert sorted(seen[:n]) == list(range(n))
  a, b = sft._ExampleOrder(n, seed), sft._ExampleOrder(n, seed)
  assert ([a.take(lambda p: len(p) <= cap) for _ in range(3)]
          == [b.take(lambda p: len(p) <= cap) for _ in range(3)])
