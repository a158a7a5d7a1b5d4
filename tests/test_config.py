"""Config groups: one definition of every shared setting, flattened into flags; old spellings rejected."""

import argparse
import dataclasses

import pytest

from mathrl.algorithms import expert_iteration, grpo, orm, ppo, rcrl, sft
from mathrl.cli import COMMANDS, load
from mathrl.config import add_arguments, build, from_args, given, leaves, to_dict
from mathrl.errors import UsageError


def test_a_shared_setting_has_one_name_and_one_help_text_in_every_command():
    helps: dict[str, set[str]] = {}
    for spec in COMMANDS.values():
        for group, f, _, _ in leaves(load(spec.config)):
            if group is not None:
                helps.setdefault(f.name, set()).add(f.metadata["help"])
    assert {"lr", "micro_batch_size", "eval_k", "seed", "token_budget"} <= set(helps)
    assert all(len(texts) == 1 for texts in helps.values()), {k: v for k, v in helps.items() if len(v) > 1}


def test_commands_set_their_own_defaults_where_they_compose_a_group():
    assert build(ppo.Config, {"model": "m"}).optim.lr == 1e-4
    assert build(sft.Config, {}).optim.lr == 3e-3 and build(sft.Config, {}).eval.eval_split == "dev"
    assert build(grpo.Config, {"model": "m"}).advantage == "grpo" and build(grpo.Config, {"model": "m"}).kl_coef == 0
    assert build(expert_iteration.Config, {"model": "m", "lr": 0.01}).optim.lr == 0.01


def test_flat_and_nested_mappings_and_the_saved_config_round_trip():
    cfg = build(rcrl.Config, {"model": "m", "micro_batch_size": 8, "eval": {"eval_k": 4}, "seed": 3})
    assert (cfg.optim.micro_batch_size, cfg.optim.micro, cfg.eval.eval_k, cfg.run.seed) == (8, 8, 4, 3)
    flat = to_dict(cfg)
    assert flat["micro_batch_size"] == 8 and "optim" not in flat  # config.yaml: the flag names
    assert build(rcrl.Config, flat) == cfg


@pytest.mark.parametrize("cls,key,new", [(ppo.Config, "microbatch_size", "micro_batch_size"),
                                         (ppo.Config, "minibatch_size", "batch_size"),
                                         (orm.Config, "policy", "model"), (sft.Config, "dev_size", "eval_size")])
def test_old_spellings_name_the_new_one(cls, key, new):
    with pytest.raises(UsageError, match=f"renamed: did you mean '{new}'"):
        build(cls, {"model": "m", key: 1} if key != "policy" else {key: "m"})


def test_config_files_of_the_single_ppo_grpo_loop_still_load():
    # config.yaml of a PPO run of earlier versions: the critic-free settings at the values of a PPO run
    old_ppo = {"model": "m", "advantage": "gae", "clip_high": 0.0, "policy_loss": "ppo", "loss_aggregation": "token",
               "advantage_scale": "group", "overlong_buffer": 0, "mask_truncated": False, "zero_signal": "keep",
               "refill_rounds": 4, "max_rollouts": 0, "reward": "sparse", "kl_coef": 0.05, "lam": 1.0}
    assert build(ppo.Config, old_ppo).lam == 1.0
    # ... and of a GRPO run: the critic's settings at their defaults
    old_grpo = {"model": "m", "advantage": "rloo", "value_clip": 0.2, "vf_coef": 0.5, "value_trunk_grad": False,
                "gamma": 1.0, "lam": 0.95, "whiten_advantages": True, "kl_target": 0.0, "kl_coef": 0.1}
    assert build(grpo.Config, old_grpo).advantage == "rloo"
    # a critic-free run of `mathrl ppo --advantage rloo` is `mathrl grpo --advantage rloo` now; a setting of the
    # other loop at any other value is refused, naming that loop
    with pytest.raises(UsageError, match="mathrl grpo --advantage"):
        build(ppo.Config, {**old_ppo, "advantage": "rloo"})
    with pytest.raises(UsageError, match="mathrl ppo"):
        build(grpo.Config, {**old_grpo, "gamma": 0.9})
    for cls in (ppo.Config, grpo.Config):
        assert not set(cls.RETIRED) & {f.name for _, f, _, _ in leaves(cls)}


def test_groups_validate_their_fields():
    with pytest.raises(UsageError, match="micro_batch_size must be >= 0"):
        build(ppo.Config, {"model": "m", "micro_batch_size": -1})
    with pytest.raises(UsageError, match="lr must be > 0"):
        build(rcrl.Config, {"model": "m", "lr": 0})
    assert all(dataclasses.is_dataclass(f.metadata["group"]) for f in dataclasses.fields(ppo.Config)
               if "group" in f.metadata)


def test_given_flags_come_from_the_parser_not_from_comparing_with_the_default():
    # on the command line a flag set to its default value was still given; one left out was not
    parser = argparse.ArgumentParser()
    add_arguments(parser, sft.Config)
    args = parser.parse_args(["--model", "m", "--lr", str(sft.Config().optim.lr), "--lora-rank", "0"])
    cfg = from_args(sft.Config, args)
    assert given(cfg) == {"model", "lr", "lora_rank"}
    assert given(cfg.optim) == {"lr"} and given(cfg.lora) == {"lora_rank"} and given(cfg.run) == set()
    # a mapping (a config file) that restates defaults is a record: only its other values count as given
    assert given(build(sft.Config, {**to_dict(cfg), "seed": 3})) == {"model", "seed"}
    # made in Python (no parser): the fields that differ from the class's declared defaults
    assert given(sft.Config(model="m")) == {"model"}
    # a LoRA-only flag given at its default value is still refused without LoRA
    with pytest.raises(UsageError, match="--lora-alpha has no effect without LoRA"):
        from_args(sft.Config, parser.parse_args(["--model", "m", "--lora-alpha", "0"]))


def test_choice_values_in_settings_are_those_the_code_acts_on():
    # settings.py names the choices without importing the modules that act on them (it must not import torch)
    from mathrl import models, settings

    assert tuple(models.SIZES) == settings.MODEL_SIZES
    # grpo's config names the policy losses and aggregations without importing losses.py (torch) either
    from mathrl import losses
    from mathrl.algorithms import grpo_config

    assert grpo_config.POLICY_LOSSES == losses.POLICY_LOSSES and grpo_config.AGGREGATIONS == losses.AGGREGATIONS
    assert models.PRECISIONS is settings.PRECISIONS
