"""Settings: defaults < config file < flags; unknown keys and wrong types are errors naming the key."""
import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from grpo.config import ConfigError, field_docs, load_config_file, parse_settings, settings_from_dict


@dataclass
class Demo:
    learning_rate: float = 1e-5
    """the step size"""
    num_generations: int = 4
    """completions per prompt (G)"""
    loss_type: Literal["grpo", "dapo"] = "grpo"
    """aggregation"""
    use_lora: bool = True
    """train an adapter"""
    targets: list[str] = field(default_factory=lambda: ["q_proj"])
    """modules"""
    delta: Optional[float] = None
    """two-sided clip"""


def test_field_docs_come_from_the_string_under_each_field():
    assert field_docs(Demo)["num_generations"] == "completions per prompt (G)"


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"learning_rate": 3e-4, "num_generations": 8}))
    s = parse_settings(Demo, ["--config", str(cfg), "--num-generations", "2"], print_config=False)
    assert (s.learning_rate, s.num_generations, s.loss_type) == (3e-4, 2, "grpo")


def test_both_flag_spellings_are_accepted():
    a = parse_settings(Demo, ["--learning-rate", "0.5"], print_config=False)
    b = parse_settings(Demo, ["--learning_rate", "0.5"], print_config=False)
    assert a == b and a.learning_rate == 0.5


def test_yaml_config_lists_bools_and_none(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets: [q_proj, v_proj]\nuse_lora: false\ndelta: null\nloss_type: dapo\n")
    s = parse_settings(Demo, ["--config", str(cfg), "--delta", "1.5"], print_config=False)
    assert s.targets == ["q_proj", "v_proj"] and s.use_lora is False and s.delta == 1.5
    assert s.loss_type == "dapo"


def test_comma_separated_list_and_bare_bool_flag():
    s = parse_settings(Demo, ["--targets", "a,b", "--use-lora"], print_config=False)
    assert s.targets == ["a", "b"] and s.use_lora is True


def test_unknown_key_in_file_names_key_file_and_valid_keys(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"learning_rat": 1.0}))
    with pytest.raises(ConfigError) as e:
        parse_settings(Demo, ["--config", str(cfg)], print_config=False)
    msg = str(e.value)
    assert "learning_rat" in msg and str(cfg) in msg and "did you mean `learning_rate`" in msg
    assert "num_generations" in msg  # the valid keys are listed


def test_unknown_flag_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown key `num_gen`"):
        parse_settings(Demo, ["--num-gen", "3"], print_config=False)


@pytest.mark.parametrize("data, key", [({"num_generations": 2.5}, "num_generations"),
                                       ({"use_lora": "yes"}, "use_lora"),
                                       ({"loss_type": "ppo"}, "loss_type"),
                                       ({"targets": "q_proj"}, "targets"),
                                       ({"learning_rate": True}, "learning_rate")])
def test_wrong_types_are_errors_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=f"`{key}`"):
        settings_from_dict(Demo, data, where="x.json")


def test_ints_are_accepted_for_floats():
    assert settings_from_dict(Demo, {"learning_rate": 1}).learning_rate == 1.0


def test_bad_flag_value_is_a_config_error():
    with pytest.raises(ConfigError, match="--num_generations"):
        parse_settings(Demo, ["--num_generations", "many"], print_config=False)


def test_unreadable_and_invalid_config_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ConfigError, match=r"bad.json:2:\d+: invalid JSON"):
        load_config_file(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config_file(lst)
