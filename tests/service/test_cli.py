"""The command line of `python -m service`: its options are the `Settings` fields."""

from __future__ import annotations

import pytest

from service.__main__ import build_parser
from service.__main__ import main as serve_main
from service.settings import Settings


def test_every_setting_is_an_option_with_its_description_as_help():
    options = {a.dest: a for a in build_parser()._actions if a.option_strings}
    assert set(Settings.model_fields) <= set(options)
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} needs a description: it is the option's help"
        assert options[name].help.startswith(field.description.replace("%", "%%"))
        assert f"--{name.replace('_', '-')}" in options[name].option_strings
    args = build_parser().parse_args(["--no-warmup", "--overload-status", "429", "--device", "cpu"])
    assert (args.warmup, args.overload_status, args.device, args.port) == (False, 429, "cpu", None)


def test_invalid_settings_exit_with_status_2(capsys):
    assert serve_main(["--max-batch-images", "64", "--max-queue-images", "8"]) == 2
    assert "max_queue_images must be at least max_batch_images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--device", "tpu"])
