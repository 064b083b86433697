"""BCQ/NCQ reformulation (spec §2 steps 3-6) and the Hint/Prefix baselines' builders."""
import random

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from zppo_jax.train import config as config_lib
from zppo_jax.zppo import templates as T
from zppo_jax.zppo.reformulate import (QuestionGroup, ReformulationConfig, Rollout,
                                       build_prefixes, build_reformulations, plan_hints,
                                       plan_reformulations, prefix_length, prefix_loss_mask,
                                       select_hard)


def S(answer, reward, extra=""):
  """A student/teacher rollout whose final answer is `answer`."""
  return Rollout.of(f"<think>work {extra}</think>so \\boxed{{{answer}}}", reward)


def group(qid, acc, *, wrong=("1",), right_students=0, teacher=(), replayed=False, question=None):
  students = [S(a, 0.0, f"{qid}{i}") for i, a in enumerate(wrong)]
  students += [S("42", 1.0, f"{qid}r{i}") for i in range(right_students)]
  return QuestionGroup(qid=qid, question=question or f"Question {qid}?", gold="42",
                       plain_accuracy=acc, student_rollouts=tuple(students),
                       teacher_rollouts=tuple(teacher), replayed=replayed, images=(f"img{qid}",))


GOOD_T = (S("42", 1.0, "teacher-good"), S("7", 0.0, "teacher-bad"))
BAD_T = (S("7", 0.0, "t1"), S("8", 0.0, "t2"))


def fake_compress(prompts):
  """The teacher: summarise a response as its boxed answer, tagged."""
  out = []
  for p in prompts:
    response = p.split("<response>\n", 2)[-1]
    out.append(f"<think>hmm</think><summary>S[{response[-20:]}]</summary>")
  return out


def build(groups, num_new, rng_seed=0, **cfg):
  return build_reformulations(groups, num_new, ReformulationConfig(**cfg), random.Random(rng_seed),
                              compress=fake_compress)


def test_config_defaults_are_the_papers():
  c = ReformulationConfig()
  assert (c.tau, c.aug_ratio, c.bcq, c.ncq, c.compress) == (0.5, 0.25, True, True, True)
  assert (c.raw_candidate_max_tokens, c.compress_max_tokens, c.hint_max_tokens) == (512, 512, 512)
  assert c.cache_teacher_rollouts is False and c.prefix_fraction == 0.4
  assert c.cap(384) == 96 and c.cap(10) == 2 and c.cap(3) == 0


def test_from_config_reads_the_rl_group_by_name():
  rl = config_lib.base_config().rl
  assert ReformulationConfig.from_config(rl, bcq=True, ncq=True) == ReformulationConfig()
  rl.tau, rl.raw_candidate_max_tokens, rl.hint_max_tokens = 0.25, 7, 9
  c = ReformulationConfig.from_config(rl, bcq=False, ncq=True)
  assert (c.tau, c.bcq, c.raw_candidate_max_tokens, c.compress_max_tokens, c.hint_max_tokens) == (
      0.25, False, 7, 512, 9)


def test_hard_set_is_strictly_below_threshold():
  groups = [group("a", 0.5, teacher=GOOD_T), group("b", 0.375, teacher=GOOD_T)]
  assert [g.qid for g in select_hard(groups, 100, ReformulationConfig())] == ["b"]


def test_precap_hardest_first_new_and_replayed_together_stable():
  groups = [group("n1", 0.25), group("r1", 0.0, replayed=True), group("n2", 0.0),
            group("r2", 0.125, replayed=True), group("n3", 0.75)]
  kept = select_hard(groups, 12, ReformulationConfig())  # cap = 3
  assert [g.qid for g in kept] == ["r1", "n2", "r2"]


def test_bcq_then_ncq_per_question_hardest_first():
  groups = [group("a", 0.25, teacher=GOOD_T), group("b", 0.0, teacher=GOOD_T)]
  refs = build(groups, 400)
  assert [(r.qid, r.kind) for r in refs] == [("b", "bcq"), ("b", "ncq"), ("a", "bcq"),
                                            ("a", "ncq")]
  for r in refs:
    assert r.gold == "42" and r.images == (f"img{r.qid}",)
    assert r.prompt_text.endswith(T.RL_CLOSER)


def test_teacher_all_wrong_gives_ncq_only():
  refs = build([group("a", 0.0, teacher=BAD_T)], 400)
  assert [r.kind for r in refs] == ["ncq"]
  refs = build([group("a", 0.0, teacher=())], 400)
  assert [r.kind for r in refs] == ["ncq"]


def test_postcap_one_slot_left_keeps_bcq_drops_ncq():
  groups = [group("a", 0.0, teacher=GOOD_T), group("b", 0.125, teacher=GOOD_T)]
  plan = plan_reformulations(groups, 12, ReformulationConfig(), random.Random(0))  # pool = 3
  refs = plan.finalize(fake_compress(plan.compression_prompts))
  assert [(r.qid, r.kind) for r in refs] == [("a", "bcq"), ("a", "ncq"), ("b", "bcq")]
  assert plan.num_dropped == 1 and plan.num_kept == 2 and plan.num_hard == 2


def test_postcap_stops_at_first_overflow():
  # pool = 2: question a takes both slots; b (NCQ only, 1 slot) must not sneak in after.
  groups = [group("a", 0.0, teacher=GOOD_T), group("b", 0.125, teacher=BAD_T)]
  refs = build(groups, 8)
  assert [(r.qid, r.kind) for r in refs] == [("a", "bcq"), ("a", "ncq")]


def test_hard_question_without_wrong_rollouts_is_skipped_and_counted():
  g = group("a", 0.0, wrong=(), right_students=2, teacher=GOOD_T)  # Inconsistent accuracy.
  plan = plan_reformulations([g], 400, ReformulationConfig(), random.Random(0))
  assert plan.pending == [] and plan.num_skipped == 1


def test_cap_zero_builds_nothing():
  assert build([group("a", 0.0, teacher=GOOD_T)], 3) == []


def test_bcq_content():
  g = group("a", 0.0, wrong=("5",), teacher=GOOD_T)
  plan = plan_reformulations([g], 400, ReformulationConfig(), random.Random(1))
  bcq = plan.finalize(fake_compress(plan.compression_prompts))[0]
  assert bcq.kind == "bcq"
  assert bcq.meta["correct_answer"] == "42" and bcq.meta["wrong_answer"] == "5"
  summaries = [T.extract_summary(o) for o in fake_compress(plan.compression_prompts)]
  good = T.extract_summary(fake_compress([T.compression_prompt(GOOD_T[0].text)])[0])
  bad = T.extract_summary(fake_compress([T.compression_prompt(g.student_rollouts[0].text)])[0])
  pair = (good, bad) if bcq.meta["correct_first"] else (bad, good)
  assert bcq.prompt_text == T.rl_prompt(T.bcq_prompt("Question a?", pair))
  assert set(summaries) >= {good, bad}


def test_bcq_shuffles_and_picks_uniformly():
  g = group("a", 0.0, wrong=("1", "2", "3"),
            teacher=(Rollout.of("good-x \\boxed{42}", 1.0), Rollout.of("good-y \\boxed{42}", 1.0),
                     Rollout.of("bad-z \\boxed{9}", 0.0)))
  firsts, wrongs, goods = set(), set(), set()
  for seed in range(40):
    plan = plan_reformulations([g], 400, ReformulationConfig(compress=False), random.Random(seed))
    bcq = plan.finalize()[0]
    firsts.add(bcq.meta["correct_first"])
    wrongs.add(bcq.meta["wrong_answer"])
    goods.add(bcq.prompt_text.split("<candidate>\n")[1 if bcq.meta["correct_first"] else 2][:6])
  assert firsts == {True, False}
  assert wrongs == {"1", "2", "3"}  # Every wrong student rollout can be picked...
  assert goods == {"good-x", "good-y"}  # ...and both correct teacher rollouts; the wrong teacher one never.


def test_same_seed_same_output():
  groups = [group(q, 0.0, wrong=("1", "2"), teacher=GOOD_T + GOOD_T) for q in "abcd"]
  assert build(groups, 400, 7) == build(groups, 400, 7)


def test_ncq_uses_all_wrong_rollouts_and_lists_their_answers():
  g = group("a", 0.25, wrong=("3", "4", "3"), right_students=2, teacher=BAD_T)
  g = QuestionGroup(**{**g.__dict__, "student_rollouts": g.student_rollouts
                       + (Rollout("no box at all", 0.0),)})
  refs = build_reformulations([g], 400, ReformulationConfig(compress=False), random.Random(0))
  (ncq,) = refs
  assert ncq.meta["wrong_answers"] == ["3", "4"]
  assert "The following answers are all WRONG: \\boxed{3}, \\boxed{4}. Below" in ncq.prompt_text
  assert ncq.prompt_text.count("<candidate>\n") == 4  # 3 boxed + 1 unparseable; no right ones.
  assert "work a0" not in ncq.prompt_text  # Compression off: the <think> part is removed.
  assert "no box at all" in ncq.prompt_text


def test_compression_requests_are_deduplicated_and_mapped_back():
  g = group("a", 0.0, wrong=("1", "2"), teacher=GOOD_T)
  plan = plan_reformulations([g], 400, ReformulationConfig(), random.Random(0))
  # BCQ's wrong rollout is also one of NCQ's: 1 teacher + 2 student texts.
  assert len(plan.compression_prompts) == 3
  assert plan.compression_prompts[0].startswith("Compress the response below")
  teacher = plan.compression_prompts.index(T.compression_prompt(GOOD_T[0].text))
  outputs = [f"<summary>SUM{i}</summary>" for i in range(3)]
  refs = plan.finalize(outputs)
  ncq = refs[1]
  assert ncq.prompt_text.count("SUM") == 2 and f"SUM{teacher}" not in ncq.prompt_text
  assert f"SUM{teacher}" in refs[0].prompt_text
  with pytest.raises(ValueError, match="expected 3 compression outputs"):
    plan.finalize(outputs[:2])


def test_compress_callable_required_when_compressing():
  with pytest.raises(ValueError, match="compress"):
    build_reformulations([group("a", 0.0)], 400, ReformulationConfig(), random.Random(0))


def test_compression_off_truncates_raw_candidates():
  long = Rollout.of("<think>secret</think>" + " ".join(f"w{i}" for i in range(600))
                    + " \\boxed{1}", 0.0)
  g = QuestionGroup("a", "Q?", "42", 0.0, (long,))
  cfg = ReformulationConfig(compress=False, raw_candidate_max_tokens=5)
  (ncq,) = build_reformulations([g], 400, cfg, random.Random(0))
  assert "<candidate>\nw0 w1 w2 w3 w4\n</candidate>" in ncq.prompt_text
  assert "secret" not in ncq.prompt_text
  tok = lambda text, n: text[:n]  # noqa: E731 - a tokenizer-based truncation plugs in here.
  plan = plan_reformulations([g], 400, cfg, random.Random(0), truncate=tok)
  assert "<candidate>\nw0 w1\n</candidate>" in plan.finalize()[0].prompt_text


def test_switches_and_format_instruction_stripping():
  g = group("a", 0.0, teacher=GOOD_T, question="What? Let's think step by step.")
  assert [r.kind for r in build([g], 400, bcq=False)] == ["ncq"]
  assert [r.kind for r in build([g], 400, ncq=False)] == ["bcq"]
  (bcq, _) = build([g], 400)
  assert bcq.prompt_text.startswith("What?\n\nHere are two candidate")
  (bcq, _) = build([g], 400, strip_format_instructions=False)
  assert bcq.prompt_text.startswith("What? Let's think step by step.\n\nHere")


def test_replayed_flag_and_accuracy_pass_through():
  (ncq,) = build([group("a", 0.125, teacher=BAD_T, replayed=True)], 400)
  assert ncq.replayed and ncq.plain_accuracy == 0.125


_accs = st.sampled_from([i / 8 for i in range(9)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_accs, st.booleans(), st.booleans()), max_size=30),
       st.integers(0, 60), st.integers(0, 2**16))
def test_cap_and_order_properties(specs, num_new, seed):
  groups = [group(f"q{i}", acc, teacher=GOOD_T if t_ok else BAD_T, replayed=rep)
            for i, (acc, t_ok, rep) in enumerate(specs)]
  cfg = ReformulationConfig()
  refs = build(groups, num_new, seed)
  accs = {g.qid: g.plain_accuracy for g in groups}
  assert len(refs) <= cfg.cap(num_new)
  assert all(accs[r.qid] < 0.5 for r in refs)
  order = [accs[r.qid] for r in refs]
  assert order == sorted(order)
  seen = {}
  for r in refs:
    seen.setdefault(r.qid, []).append(r.kind)
  for qid, kinds in seen.items():
    assert kinds in (["bcq", "ncq"], ["ncq"], ["bcq"])  # ["bcq"] only at the cap's edge.
  # Exactly the expected number when instances are plentiful: the pool is filled.
  hard = select_hard(groups, num_new, cfg)
  possible = sum(2 if any(r.correct for r in g.teacher_rollouts) else 1 for g in hard)
  assert len(refs) == min(possible, cfg.cap(num_new))


def test_hint_builder():
  groups = [group("a", 0.0, teacher=GOOD_T), group("b", 0.125, teacher=BAD_T),
            group("c", 0.75, teacher=GOOD_T)]
  plan = plan_hints(groups, 400, ReformulationConfig(), random.Random(0))
  assert plan.hint_prompts == [T.hint_prompt(GOOD_T[0].text)]  # The correct teacher rollout.
  (hint,) = plan.finalize(["<think>x</think> Use the symmetry. "])
  assert hint.kind == "hint"
  assert hint.prompt_text == T.rl_prompt("Question a?\n<hint> Use the symmetry. </hint>")
  with pytest.raises(ValueError, match="expected 1 hint outputs"):
    plan.finalize([])


def test_prefix_builder_and_mask():
  teacher = (Rollout("t", 1.0, "42", tuple(range(10))), Rollout("u", 0.0, "7", (1, 2)))
  groups = [group("a", 0.0, teacher=teacher), group("b", 0.0, teacher=BAD_T)]
  (pre,) = build_prefixes(groups, 400, ReformulationConfig(), random.Random(0))
  assert pre.kind == "prefix" and pre.meta["prefix_token_ids"] == (0, 1, 2, 3)  # ⌊0.4·10⌋
  assert pre.prompt_text == T.rl_prompt("Question a?")
  assert prefix_length(7, 0.4) == 2 and prefix_length(5, 0.4) == 2
  assert prefix_loss_mask(4, 6) == [0, 0, 0, 0, 1, 1]
  with pytest.raises(ValueError):
    prefix_loss_mask(7, 6)
  no_ids = (Rollout("t", 1.0, "42"),)
  with pytest.raises(ValueError, match="'a'"):
    build_prefixes([group("a", 0.0, teacher=no_ids)], 400, ReformulationConfig(),
                   random.Random(0))


def test_teacher_cache_off_by_default_and_merging_when_on():
  from zppo_jax.zppo.teacher_cache import TeacherRolloutCache
  good, bad = Rollout("g", 1.0, "42"), Rollout("b", 0.0, "7")
  off = TeacherRolloutCache()
  assert off.merge("q", [good]) == (good,) and off.merge("q", [bad]) == (bad,) and len(off) == 0
  on = TeacherRolloutCache(enabled=True, per_question=2, max_questions=1)
  assert on.merge("q", [good, bad]) == (good, bad)
  assert on.merge("q", [bad]) == (bad, good)  # A later all-wrong visit still has `good`.
  assert on.merge("q", [good]) == (good,)  # No duplicate of a cached rollout.
  on.merge("r", [good])
  assert on.merge("q", [bad]) == (bad,)  # `q` was dropped for `r` (max_questions=1).


def test_teacher_cache_state_round_trip_keeps_order_and_rollouts():
  from zppo_jax.zppo.teacher_cache import TeacherRolloutCache
  on = TeacherRolloutCache(enabled=True, per_question=2, max_questions=2)
  on.merge("q", [Rollout("g", 1.0, "42", (1, 2)), Rollout("b", 0.0, "7", (3,))])
  on.merge("r", [Rollout("h", 1.0, "5", (4,))])
  back = TeacherRolloutCache(enabled=True, per_question=2, max_questions=2)
  back.load_state_dict(on.state_dict())
  assert back.state_dict() == on.state_dict() and len(back) == 2
  back.merge("s", [Rollout("i", 1.0, "1", (5,))])   # `q`, the oldest, goes first.
  assert back.merge("q", [Rollout("b", 0.0, "7", (3,))]) == (Rollout("b", 0.0, "7", (3,)),)


def test_precap_counts_only_questions_that_admit_the_methods_reformulation():
  # The two hardest questions have no correct teacher rollout; with one pre-cap slot (cap(4) = 1)
  # BCQ-only, Hint and Prefix give it to the easier question that has one; NCQ (ZPPO) does not
  # look at the teacher: every hard question admits NCQ.
  teacher = (Rollout("t", 1.0, "42", tuple(range(10))),)
  groups = [group("a", 0.0, teacher=BAD_T), group("b", 0.0, teacher=BAD_T),
            group("c", 0.25, teacher=teacher)]
  cfg = ReformulationConfig()
  assert [(r.qid, r.kind) for r in build(groups, 4, ncq=False)] == [("c", "bcq")]
  assert [(r.qid, r.kind) for r in build(groups, 4)] == [("a", "ncq")]
  assert plan_hints(groups, 4, cfg, random.Random(0)).groups[0].qid == "c"
  assert [r.qid for r in build_prefixes(groups, 4, cfg, random.Random(0))] == ["c"]
  # Without the feasibility rule the slot would go to "a" and nothing would be built.
  assert [g.qid for g in select_hard(groups, 4, cfg)] == ["a"]
