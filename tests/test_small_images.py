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


def test_the_moco_queue_is_sized_to_the_data_in_whole_steps(tmp_path):
    """Issue 22: a queue of 1,024 keys on 1,438 images held most of the data set; the small-image
    queue is 18% of the training images, a whole number of steps of keys, at least one."""
    from clvr.methods import train_config as tcfg
    from clvr.methods.small_images import QUEUE_SHARE, queue_for
    from conftest import make_demo
    assert QUEUE_SHARE == 0.18
    assert queue_for(1438, 128) == 256 and queue_for(1438, 64) == 256 and queue_for(50000, 512) == 9216
    assert queue_for(40, 128) == 128                                     # never less than one step
    with pytest.raises(ValueError):
        queue_for(0, 128)
    data = make_demo(tmp_path / "d", limit=400) / "train"                  # 320 training images
    config, _ = tcfg.build_for_data("moco_v2", None, ["data.batch_size=8"], data)
    assert config.model["queue"] == round(0.18 * 320 / 16) * 16 == 64    # symmetric: 16 keys a step
    config, _ = tcfg.build_for_data("moco_v1", None, ["data.batch_size=8"], data)
    assert config.model["queue"] == 56                                    # 8 keys a step: 7 steps
    config, _ = tcfg.build_for_data("moco_v2", None, ["data.batch_size=8", "model.queue=96"], data)
    assert config.model["queue"] == 96                                    # the user's choice stays
