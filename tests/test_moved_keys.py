"""Keys that moved still load: a command line's old overrides, an earlier run's config, the
hyper-parameters of its checkpoints."""

from __future__ import annotations

from omegaconf import OmegaConf

from memlab.utils.moved_keys import renamed_overrides, upgraded_hparams, upgraded_run_config

OLD_MODULE = {
    "_target_": "memlab.lit.CausalLMModule",
    "lr": 0.003,
    "weight_decay": 0.1,
    "betas": [0.9, 0.95],
    "warmup_steps": 50,
    "min_lr_ratio": 0.1,
}


def test_old_overrides_are_renamed_with_a_warning() -> None:
    args = ["module.lr=1e-4,1e-3", "~module.min_lr_ratio", "model.d_model=64", "-m", "x.module.lr=1"]
    renamed, warnings = renamed_overrides(args)
    assert renamed == [
        "optimizer.lr=1e-4,1e-3",
        "~scheduler.min_lr_ratio",
        "model.d_model=64",
        "-m",
        "x.module.lr=1",
    ]
    assert warnings == [
        "module.lr is now optimizer.lr: read as optimizer.lr=1e-4,1e-3",
        "module.min_lr_ratio is now scheduler.min_lr_ratio: read as ~scheduler.min_lr_ratio",
    ]


def test_an_old_run_config_gets_the_optimizer_and_schedule_it_trained_with() -> None:
    old = OmegaConf.create({"model": {"d_model": 8}, "module": OLD_MODULE})
    new = upgraded_run_config(old)
    assert OmegaConf.to_container(new.module) == {"_target_": "memlab.lit.CausalLMModule"}
    assert OmegaConf.to_container(new.optimizer) == {
        "_target_": "torch.optim.AdamW",
        "_partial_": True,
        "lr": 0.003,
        "weight_decay": 0.1,
        "betas": [0.9, 0.95],
    }
    assert new.scheduler.warmup_steps == 50 and new.scheduler._target_.endswith("warmup_cosine_schedule")
    assert old.module.lr == 0.003, "the run's own config is left as it is"
    assert upgraded_run_config(new) is new


def test_old_flat_hparams_are_nested_as_now() -> None:
    old = {k: v for k, v in OLD_MODULE.items() if k != "_target_"}
    nested = {
        "optimizer": {"lr": 0.003, "weight_decay": 0.1, "betas": [0.9, 0.95]},
        "scheduler": {"warmup_steps": 50, "min_lr_ratio": 0.1},
    }
    assert upgraded_hparams(old) == nested
    assert upgraded_hparams(nested) == nested
