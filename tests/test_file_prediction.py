"""segdino.file_prediction: output names of the inputs found."""

from segdino.file_prediction import ImageInput, output_names


def test_output_names_never_collide(tmp_path):
    a, b = tmp_path / "one" / "x.png", tmp_path / "two" / "x.png"
    c, d = tmp_path / "one" / "y.png", tmp_path / "one" / "y.jpg"
    assert output_names([ImageInput(a, None), ImageInput(c, None)]) == ["x", "y"]
    assert output_names([ImageInput(a, None), ImageInput(b, None)]) == ["one/x", "two/x"]
    assert output_names([ImageInput(c, None), ImageInput(d, None)]) == ["y_png", "y_jpg"]
    assert output_names([ImageInput(a, tmp_path), ImageInput(b, tmp_path)]) == ["one/x", "two/x"]
    up, low = tmp_path / "A.png", tmp_path / "a.png"
    names = output_names([ImageInput(up, None), ImageInput(low, None)])
    assert len({n.lower() for n in names}) == 2
