"""The algorithms, one module each (``pretrain``, ``sft``, ``expert_iteration``, ``orm``, ``ppo``, ``grpo``,
``rcrl``, ``backtranslate``): a typed state dataclass and ``train(cfg)`` reading collect -> score -> learn ->
evaluate -> checkpoint.

Each one's ``Config`` lives beside it in ``NAME_config.py`` (``ppo_config.py`` for ``ppo.py``; what PPO and GRPO
share in ``policy_gradient_config.py``), which the algorithm module imports, so that reading ``ppo.py`` shows
where its flags are. Why apart: the loops import torch, and the CLI builds ``mathrl CMD --help`` from the Config
alone, which should take a moment, not the seconds torch's import costs. A ``*_config.py`` module imports only the
settings layer (``config.py``, ``settings.py``, ``errors.py``) and other torch-free modules (``record.py``,
``rewards.py``, ``tasks``); tests/test_imports.py checks that no Config module imports torch.
"""
