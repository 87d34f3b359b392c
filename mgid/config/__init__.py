"""Configuration of training, in one typed place.

`mgid.config.train_config` holds `TrainConfig`, its parts, the named recipes (``mgid/config/recipes/*.yaml``:
``paper``, ``cpu``, ``long``, ``quick``, ``finetune``) and `resolve_config`; `mgid.config.fields` the generic
dataclass <-> dict <-> ``argparse`` layer and `ConfigError`; `mgid.config.literals` the checks of
``Literal``-typed fields.
"""
