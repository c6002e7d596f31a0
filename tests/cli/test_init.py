"""The command parser: help texts are plain and name what each option takes."""

from segdino.cli import build_parser


def test_help_texts_are_plain_and_name_what_they_take():
    def sub(name):
        action = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
        return action.choices[name]

    assert "``" not in sub("demo").format_help()
    export = sub("export").format_help()
    assert "RUN_DIR" in export
