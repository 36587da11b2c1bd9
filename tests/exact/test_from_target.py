"""``exact_posterior(target, prompt)`` (exact/from_target.py): its import paths and its refusals."""

import pytest

import bayes_rlhf as br
import bayes_rlhf.exact
import bayes_rlhf.exact.from_target


def test_one_function_on_every_public_path():
    assert br.exact_posterior is bayes_rlhf.exact.exact_posterior is bayes_rlhf.exact.from_target.exact_posterior


def test_a_list_of_prompts_is_refused_before_any_work(gpt2_target):
    with pytest.raises(br.PromptError, match="once per prompt"):
        br.exact_posterior(gpt2_target, ["w1", "w2"])


def test_table_matches_the_target(gpt2_post, gpt2_target):
    assert gpt2_post.prompt == "w1 w2" and gpt2_post.beta == gpt2_target.beta
    assert gpt2_post.completion_ids.shape[1] == gpt2_target.max_new_tokens
