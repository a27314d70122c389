"""clvr.methods.small_images: the per-method settings reach ``clvr train``'s config, and only the
keys a method has."""

import pytest

from clvr.methods import train_config
from clvr.methods.small_images import COMMON, METHODS, train_settings


@pytest.mark.parametrize("method", ["simclr", "moco_v2", "byol", "instdisc", "pirl", "cpc_v2"])
def test_every_seed_method_builds_a_config_from_its_small_image_settings(method):
    settings = train_settings(method)
    config = train_config.build(method, overrides=settings)
    model = config.model
    assert (model["backbone"], model["stem"], model["width"]) == ("resnet18", "cifar", 16)
    assert config.data.batch_size == COMMON["data"]["batch_size"]
    own = METHODS[method]
    assert config.epochs == own.get("epochs", COMMON["epochs"])
    assert config.optim.lr == own.get("optim", {}).get("lr", COMMON["optim"]["lr"])
    for key, value in own.get("model", {}).items():
        assert model[key] == value, key


def test_keys_a_method_does_not_have_are_left_out():
    # BYOL has no temperature and SimCLR no queue: the common backbone keys stay, theirs do not leak
    assert "temperature" not in train_settings("byol")["model"]
    assert "queue" not in train_settings("simclr")["model"]
    assert train_settings("moco_v2")["model"]["symmetric"] is True


def test_the_settings_are_copies():
    first = train_settings("simclr")
    first["optim"]["lr"] = 99.0
    first["model"]["width"] = 1
    again = train_settings("simclr")
    assert again["optim"]["lr"] == COMMON["optim"]["lr"] and again["model"]["width"] == 16
