"""The family registry: the architecture table, aliases, default rules and tiny settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


def _table_rows() -> list[str]:
    from gemma_cli.engine import families

    return [name for f in families.all_families() for name in f.presets]


KNOWN = _table_rows()


@pytest.mark.parametrize("name", KNOWN)
def test_architecture_rebuilds_with_published_param_count(name: str) -> None:
    from gemma_cli.engine import families
    from gemma_cli.engine.model import load as model

    bb = families.get_preset(name)
    variables = model.abstract_variables(bb, "bfloat16")
    assert sum(math.prod(s) for _, s, _ in variables) == families.published_params(name)


def test_architecture_names_and_config_shape(tiny_presets: dict[str, Path]) -> None:
    from gemma_cli.engine import families

    assert families.published_params("gemma_7b_en") == 8_537_680_896
    assert families.get_preset("kaggle://keras/gemma/keras/gemma_7b_en") == families.get_preset(
        "gemma_7b_en"
    )
    assert families.get_preset(
        "kaggle://keras/gemma3/keras/gemma3_instruct_1b/3"
    ) == families.get_preset("gemma3_1b")
    vision, text = families.get_preset("gemma3_instruct_27b"), families.get_preset("gemma3_27b_text")
    assert vision["config"]["vision_encoder"]["config"]["output_dim"] == 5376  # the tower, into the text width
    assert {**vision["config"], "vision_encoder": None} == text["config"]
    assert families.get_preset("gemma_instruct_7b_en") == families.get_preset("gemma_7b_en")
    assert families.get_preset("no_such_model") is None
    # the same dict shape (and keys) as the config.json keras-hub writes
    for fam, name in (
        ("gemma", "gemma_7b_en"),
        ("gemma2", "gemma2_9b_en"),
        ("gemma3", "gemma3_1b"),
    ):
        real = json.loads((tiny_presets[fam] / "config.json").read_text())
        ours = families.get_preset(name)
        assert set(ours) == set(real)
        assert (ours["module"], ours["class_name"], ours["registered_name"]) == (
            real["module"], real["class_name"], real["registered_name"],
        )  # fmt: skip
        assert set(ours["config"]) == set(real["config"])




def test_every_backbone_class_has_one_family_and_rules() -> None:
    from gemma_cli.engine import families

    seen: set[str] = set()
    for f in families.all_families():
        assert not seen & set(f.backbone_classes), f.name
        seen |= set(f.backbone_classes)
        assert families.for_backbone(f.backbone_class) is f
        rules = f.layout_rules("m", "b")
        assert rules, f.name
        assert all(ax in (None, "m", "b") for _, axes in rules for ax in axes), f.name
        for alias, row in f.aliases.items():
            assert row in f.presets, (f.name, alias)
    assert families.for_backbone("NoSuchBackbone") is None


def test_vision_presets_are_flagged() -> None:
    from gemma_cli.engine import families

    assert families.is_vision("gemma3_instruct_4b")
    assert not families.is_vision("gemma3_4b_text")
    assert not families.is_vision("gemma_7b_en")
