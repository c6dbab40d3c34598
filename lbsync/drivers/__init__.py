"""Data-plane drivers: how a plan reaches nginx. `base.choose(settings)` picks one."""
