"""The optimizer: Adam with the learning-rate schedule that `config.optim` names."""

import optax


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
    lr = optim_config.learning_rate
    if optim_config.schedule == "constant":
        return optax.constant_schedule(lr)
    if optim_config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=max(total_steps, 1))
    # 'one_cycle': warm up to `learning_rate` over the first `warmup_fraction` of training,
    # then anneal (cosine) to nearly 0: lets BatchNorm networks train fast at high rates.
    return optax.cosine_onecycle_schedule(max(total_steps, 1), lr,
                                          pct_start=optim_config.warmup_fraction)


def create_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
    return optax.adam(learning_rate_schedule(optim_config, total_steps), b1=optim_config.b1,
                      b2=optim_config.b2)
