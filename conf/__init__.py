# Makes the config folder importable as `binexp.conf` (see setup.py), so Hydra finds it as pkg://binexp.conf.
