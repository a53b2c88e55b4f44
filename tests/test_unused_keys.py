"""A key set where it does nothing is refused at load with one line naming it and what makes it act."""

from __future__ import annotations

import pytest

from epo.config import UNUSED_UNLESS, ConfigError, load_config

# (override that does nothing alone, the setting under which the same override acts)
CASES = {
    "algo.gamma=0.9": ["algo.name=ppo"],
    "algo.lam=0.95": ["algo.name=ppo"],
    "algo.gae_level=turn": ["algo.name=ppo"],
    "algo.whiten_advantages=false": ["algo.name=ppo"],
    "algo.value_clip=0.2": ["algo.name=ppo"],
    "optim.value_lr=3e-4": ["algo.name=ppo"],
    "model.value_model=shared": ["algo.name=ppo"],
    "algo.grpo_stats=trajectory": [],  # acts under the default grpo; refused under ppo below
    "algo.value_coef=1.0": ["algo.name=ppo", "model.value_model=shared"],
    "rollout.is_cap=3": ["rollout.is_correction=tis", "rollout.backend=auto"],
    "model.lora.r=8": ["model.lora.enabled=true"],
    "model.lora.alpha=8": ["model.lora.enabled=true"],
    "model.lora.dropout=0.1": ["model.lora.enabled=true"],
    "model.lora.target_modules=[q_proj]": ["model.lora.enabled=true"],
    "algo.grpo_norm_std=false": [],
    "rollout.vllm_block_size=16": ["rollout.backend=auto"],
    "rollout.vllm_kv_cache_gb=2": ["rollout.backend=auto"],
    "rollout.vllm_gpu_memory_utilization=0.5": ["rollout.backend=auto"],
    "rollout.filter_max_rounds=3": ["rollout.filter_groups=true"],
    "epo.history_window=5": ["epo.history=window"],
    "epo.history_ema=0.5": ["epo.history=ema"],
    "algo.kl_type=k1": ["algo.kl_coef=0.1"],
    "env.ray_address=auto": ["env.executor=ray"],
    "env.ray_num_cpus=2": ["env.executor=ray"],
    "env.ray_memory_mb=512": ["env.executor=ray"],
    "diag.action_entropy_max_actions=8": ["diag.action_entropy_turns=4"],
    "diag.monitor_on=[early_collapse]": ["diag.monitor_action=checkpoint"],
    "diag.monitor_entropy_factor=3": ["diag.monitor_action=raise_entropy", "epo.mode=on"],
    "epo.beta_gamma=2": [],  # acts under the default paper schedule; refused under constant below
    "epo.reference_total_steps=100": ["epo.beta_schedule=reference"],
    "env.step_timeout_s=5": [],  # acts under the default worker processes; refused inline below
}
ALONE = {  # where the default setting already makes the key act, the refusing setting is named here
    "algo.grpo_stats=trajectory": ["algo.name=ppo", "rollout.group_size=1"],
    "algo.grpo_norm_std=false": ["algo.name=ppo", "rollout.group_size=1"],
    "epo.beta_gamma=2": ["epo.beta_schedule=constant"],
    "env.step_timeout_s=5": ["env.pool_mode=inline"],
}


@pytest.mark.parametrize("override", sorted(CASES))
def test_a_key_that_would_do_nothing_is_refused_and_loads_where_it_acts(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: .*; set that, or drop it$"):
        load_config(None, ["rollout.backend=hf", *ALONE.get(override, []), override])
    load_config(None, [*CASES[override], override])


def test_every_guarded_key_has_a_case():
    guarded = {key for keys, _, _ in UNUSED_UNLESS for key in keys}
    covered = {override.split("=")[0] for override in CASES}
    assert guarded == covered


def test_a_key_left_at_its_default_passes_whatever_the_setting():
    load_config(None, ["rollout.backend=hf", "algo.gamma=1.0", "model.lora.r=16", "rollout.is_cap=2.0"])


def test_a_derived_config_drops_what_it_turned_off():
    """`epo ablate`'s variants switch the KL term and the monitor off: the user's kl_type and monitor_on go back to
    their defaults instead of being refused."""
    from epo.config import Config, reset_unused, validate

    cfg = load_config(None, ["algo.kl_coef=0.1", "algo.kl_type=k1", "diag.monitor_action=checkpoint",
                             "diag.monitor_on=[early_collapse]"])  # fmt: skip
    cfg.algo.kl_coef, cfg.diag.monitor_action = 0.0, "none"
    with pytest.raises(ConfigError, match="algo.kl_type"):
        validate(cfg)
    validate(reset_unused(cfg))
    assert cfg.algo.kl_type == Config().algo.kl_type and cfg.diag.monitor_on == Config().diag.monitor_on


def test_ablate_variants_of_a_run_with_a_kl_term_and_a_monitor_load():
    from epo.diagnostics.ablate import REGULARISERS, variant_config

    base = load_config(None, ["algo.kl_coef=0.1", "algo.kl_type=k1", "diag.monitor_action=checkpoint",
                              "diag.monitor_on=[early_collapse]", "diag.action_entropy_turns=4",
                              "diag.action_entropy_max_actions=8"])  # fmt: skip
    variants = {name: variant_config(base, name, 0.01, 0.1) for name in REGULARISERS}
    assert variants["kl"].algo.kl_type == "k1" and variants["none"].algo.kl_coef == 0
    assert base.algo.kl_type == "k1" and base.diag.monitor_on == ["early_collapse"]  # the run's own config untouched
