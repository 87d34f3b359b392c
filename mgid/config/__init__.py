"""Configuration of training, in one typed place.

* `mgid.config.train_config` -- `TrainConfig` and its parts (the fields, their defaults and help), the named
  recipes and YAML files (`resolve_config`), printing and diffing configs;
* `mgid.config.fields` -- the generic layer: dataclass <-> nested dict, overrides, ``--section.field``
  command-line options built from the dataclasses' fields and docstrings, `ConfigError`;
* `mgid.config.literals` -- checks of ``Literal``-typed fields;
* ``mgid/config/recipes/*.yaml`` -- the named recipes (``paper``, ``cpu``, ``long``, ``quick``, ``finetune``).
  The shipped weights were trained with ``cpu`` and then ``long``; ``train.py --config long --print-config``
  prints the resolved recipe.
"""
