"""The text demo's letter-code task: answers, levels, splits and the student's practice prompts."""
import random

from hypothesis import given, settings, strategies as st

from zppo_jax.data import letter_code
from zppo_jax.rewards import extract_answer


@given(st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_code_common_letters_are_a_permutation_and_every_digit_is_1_to_9(seed):
  code = letter_code.make_code(seed)
  assert sorted(code[c] for c in letter_code.COMMON) == list(range(1, 10))
  assert set(code) == set(letter_code.COMMON + letter_code.RARE)
  assert all(1 <= d <= 9 for d in code.values())
  assert code == letter_code.make_code(seed)


@given(st.integers(0, 10_000), st.sampled_from(sorted(letter_code.WORD_LENGTH)))
@settings(max_examples=60, deadline=None)
def test_solution_spells_the_word_and_a_perturbed_code_does_not(seed, level):
  rng = random.Random(seed)
  code = letter_code.make_code(seed)
  word = rng.choice(letter_code.words(level))
  assert len(word) == letter_code.WORD_LENGTH[level]
  assert set(word) <= set(letter_code.alphabet(level))
  text = letter_code.solution(word, code)
  assert extract_answer(text) == letter_code.spell(word, code)
  assert text.count("\n") == len(word) + 3   # <think>, the letters, </think>, a line per letter
  assert "".join(text.split("</think>")[0].split()[1:]) == word
  assert letter_code.word_of(letter_code.question(word)) == word
  wrong = letter_code.perturbed(word, code, rng)
  assert letter_code.spell(word, wrong) != letter_code.spell(word, code)
  assert sum(wrong[c] != code[c] for c in code) == 1


def test_split_is_disjoint_and_covers_every_word():
  split = letter_code.split_words(3, held_out=32)
  for level, (train, held_out) in split.items():
    assert not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(letter_code.words(level))
    assert len(held_out) == min(32, len(letter_code.words(level)) // 2)
  assert split == letter_code.split_words(3, held_out=32)


def test_records_are_levelled_seeded_and_name_their_subset():
  code = letter_code.make_code(0)
  pools = {level: letter_code.words(level) for level in letter_code.WORD_LENGTH}
  rows = letter_code.records([1, 3], 10, 5, code, pools, prefix="x")
  assert rows == letter_code.records([1, 3], 10, 5, code, pools, prefix="x")
  assert [r["level"] for r in rows] == [1, 3] * 5
  assert [r["subset"] for r in rows] == ["level1", "level3"] * 5
  for r in rows:
    word = letter_code.word_of(r["question"])
    assert r["answer"] == letter_code.spell(word, code)
    assert set(word) <= set(letter_code.alphabet(r["level"]))
    assert sum(c in letter_code.RARE for c in word) == (r["level"] == 3)


def test_level3_words_have_exactly_one_rare_letter_and_the_student_code_gets_each_wrong():
  level3 = letter_code.words(3)
  assert len(level3) == 3 * len(letter_code.RARE) * len(letter_code.COMMON) ** 2
  assert all(sum(c in letter_code.RARE for c in w) == 1 for w in level3)
  for seed in range(50):
    code = letter_code.make_code(seed)
    old = letter_code.outdated(code, seed)
    assert all(old[c] == code[c] for c in letter_code.COMMON)
    assert all(old[c] != code[c] and 1 <= old[c] <= 9 for c in letter_code.RARE)
    assert old == letter_code.outdated(code, seed)


@given(st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_practice_words_are_shaped_like_level3(seed):
  word = letter_code.practice_word(random.Random(seed))
  assert len(word) == 3 and sum(c in letter_code.RARE for c in word) == 1
  assert set(word) <= set(letter_code.RARE + letter_code.COMMON)
